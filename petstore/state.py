"""What one running app shares: built in the lifespan, reached as ``request.state.petstore``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from petstore.config import Settings
from petstore.plugin import Plugins

if TYPE_CHECKING:
    pass


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    plugins: Plugins
    #: Set after every commit that wrote outbox rows, so the relay publishes without polling delay.
    outbox_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: Components the real-time layer and plugins attach (broker, hub, relay, ...), by name.
    extras: dict[str, Any] = field(default_factory=dict)


def app_state(conn: HTTPConnection) -> AppState:
    state = conn.state.petstore
    assert isinstance(state, AppState)
    return state
