"""What one running app shares: built in the lifespan, reached as ``request.state.petstore``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from petstore.config import Settings
from petstore.plugin import Plugins


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    plugins: Plugins
    #: The app's Redis client for request-time work (petstore.redis_client): one bounded pool for
    #: every plugin, None without ``PETSTORE_REDIS_URL``. Use it, never close it.
    redis: Redis | None = None
    #: Set after every commit that wrote outbox rows, so the relay publishes without polling delay.
    outbox_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: Components the real-time layer and plugins attach (broker, hub, relay, ...), by name.
    extras: dict[str, Any] = field(default_factory=dict)
    #: Shutdown has begun (SIGTERM under uvicorn, see petstore.server.shutdown): ``/readyz`` answers 503.
    draining: bool = False
    #: The loop time by which shutdown must be over (``PETSTORE_SHUTDOWN_TIMEOUT`` after it began).
    shutdown_deadline: float | None = None

    def begin_shutdown(self) -> float:
        """Mark this instance as stopping (once) and return the loop time by which it must be done."""
        self.draining = True
        if self.shutdown_deadline is None:
            self.shutdown_deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout
        return self.shutdown_deadline

    def shutdown_seconds_left(self) -> float:
        """What is left of the shutdown bound (the whole bound if shutdown has not begun)."""
        if self.shutdown_deadline is None:
            return self.settings.shutdown_timeout
        return max(0.0, self.shutdown_deadline - asyncio.get_running_loop().time())


def app_state(conn: HTTPConnection) -> AppState:
    state = conn.state.petstore
    assert isinstance(state, AppState)
    return state
