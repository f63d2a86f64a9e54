"""The process's one Redis client, offered to plugins as ``AppState.redis``.

Rate limits and revocation announcements are Redis round trips made while a client waits, and
the broker publishes and reads history on it too; every part of a process goes through this one
client, on one pool (the broker's pub/sub listener alone holds a connection of its own):

- bounded and blocking: a burst waits for a free connection (at most :data:`WAIT_SECONDS`)
  instead of failing, as redis-py's default pool does past 100 connections at once;
- a wait that runs out raises :class:`PoolExhausted`: the server is busy, Redis is not down. A
  caller must not take it for an outage (a rate limiter failing open on it would switch itself
  off under exactly the load it is there for);
- one immediate retry, on a new connection, of a command whose connection failed: a connection
  that idled in the pool while Redis restarted is closed, which is no outage. A timeout is not
  retried, so a Redis that stopped answering holds a request for one timeout, never several;
  refused twice, or reset twice, is an outage. A pub/sub subscriber that must know of each
  reconnection (what was published meanwhile is lost to it) counts its connections
  (``plugins.auth.feed``).

The app opens it before the plugins start and closes its pool after they stop: plugins use it and
never close it (``aclose()`` on it leaves the pool alone). The broker has a pool of its own, with
its listener and its retries.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.exceptions
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from petstore.config import Settings

#: Connections per process. A request makes one round trip of well under a millisecond, so a few
#: dozen in flight keep one event loop busy; more would only move the queue from here into Redis.
POOL_SIZE = 64
#: How long a request waits for a free connection before :class:`PoolExhausted`.
WAIT_SECONDS = 5.0
#: Connecting, and each command's answer: past it Redis counts as unreachable. Well above a round
#: trip on a loaded event loop, so a burst is not mistaken for an outage.
TIMEOUT_SECONDS = 2.0


class PoolExhausted(redis.exceptions.ConnectionError):
    """No connection came free within :data:`WAIT_SECONDS`: load, not an outage."""


class WaitingPool(BlockingConnectionPool):
    """redis-py's blocking pool, whose wait running out is told apart from Redis being unreachable."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        try:
            connection: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.exceptions.ConnectionError as exc:
            # redis-py raises the same ConnectionError for both; only the wait's comes from a timeout.
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhausted(f"no Redis connection came free within {self.timeout:g} s") from None
            raise
        return connection


def request_client(
    settings: Settings, *, pool_size: int = POOL_SIZE, wait_seconds: float = WAIT_SECONDS
) -> Redis | None:
    """The client on its own :class:`WaitingPool`, or None without ``PETSTORE_REDIS_URL``.

    Nothing connects until the first command. Close it with ``aclose(close_connection_pool=True)``.
    """
    if not settings.redis_url:
        return None
    pool = WaitingPool.from_url(
        settings.redis_url,
        max_connections=pool_size,
        timeout=wait_seconds,
        socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    )
    return Redis(connection_pool=pool)
