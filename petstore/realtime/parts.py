"""What the real-time layer uses of the app it runs in, and nothing more.

A protocol, so that the layer never imports the app's state (which holds the layer): the app's
:class:`~petstore.state.AppState` is one, and a test may pass anything with these attributes.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from redis.asyncio import Redis, RedisCluster
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from petstore.config import Settings
from petstore.plugin import Plugins


class Parts(Protocol):
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    #: The loaded plugins: their ``observe`` and ``ws_*`` hooks.
    plugins: Plugins
    #: The process's one Redis client (None without Redis): the broker's, as auth's and the limits'.
    redis: Redis | RedisCluster | None
    #: Set after a commit that wrote outbox rows: the relay publishes them at once.
    outbox_wakeup: asyncio.Event
