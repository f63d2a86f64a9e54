"""What one running app shares: built in the lifespan, reached as ``request.state.petstore``.

The parts it holds are given only what they use: the real-time layer gets its parts through
:class:`petstore.realtime.layer.Parts`, plugins through :class:`petstore.plugin.App`, both
protocols this class satisfies. Nothing below it imports this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis, RedisCluster
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from petstore.access import Principal
from petstore.config import Settings
from petstore.db.reader import Reader
from petstore.plugin import Plugins
from petstore.realtime import Realtime


@dataclass(eq=False)  # one per app, compared by identity (and usable as a key)
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    plugins: Plugins
    #: The app's Redis client for request-time work (petstore.redis_client): one bounded pool for
    #: every plugin, None without ``PETSTORE_REDIS_URL``. Use it, never close it.
    redis: Redis | RedisCluster | None = None
    #: Set after every commit that wrote outbox rows, so the relay publishes without polling delay.
    outbox_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: The real-time layer (broker, hub, relay) while the app runs: set by the lifespan once the
    #: plugins have started, None before and after.
    realtime: Realtime | None = None
    #: Shutdown has begun (SIGTERM under uvicorn, see petstore.server.shutdown): ``/readyz`` answers 503.
    draining: bool = False
    #: The loop time by which shutdown must be over (``PETSTORE_SHUTDOWN_TIMEOUT`` after it began).
    shutdown_deadline: float | None = None
    #: The hot reads' queries (petstore.db.reader): on a SQLite file, without the engine's pool.
    reader: Reader = field(init=False)

    def __post_init__(self) -> None:
        self.reader = Reader(self.engine)

    @classmethod
    def open(cls, settings: Settings, engine: AsyncEngine, plugins: Plugins) -> AppState:
        """The state of an app (or a command) on ``engine``: its sessions, and the process's
        Redis client when ``PETSTORE_REDIS_URL`` is set (the caller closes it)."""
        from petstore.db import create_sessionmaker
        from petstore.redis_client import request_client

        return cls(settings, engine, create_sessionmaker(engine), plugins, redis=request_client(settings))

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

    def end_sessions(self, match: Callable[[Principal], bool]) -> int:
        """End this instance's live sessions whose principal ``match`` picks (none before the
        real-time layer started); how many. See :meth:`Realtime.end_sessions`."""
        return 0 if self.realtime is None else self.realtime.end_sessions(match)


def app_state(conn: HTTPConnection) -> AppState:
    state = conn.state.petstore
    assert isinstance(state, AppState)
    return state
