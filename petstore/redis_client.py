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

The app opens it before the plugins start and closes its pool after they stop (:func:`close`):
plugins use it and never close it.

Whatever ``PETSTORE_REDIS_URL`` names (:mod:`petstore.redis_url`), the client behaves so:

- one server: redis-py's ``Redis`` on :class:`WaitingPool`;
- Sentinel: ``Redis`` on :class:`WaitingSentinelPool`, the same pool whose every new connection
  asks the sentinels for the primary first, so the retry of a command that lost its connection
  in a failover goes to the promoted replica;
- Cluster: redis-py's ``RedisCluster``, which routes each command to its slot's primary and
  follows ``MOVED``/``ASK`` and failovers by itself. It bounds connections per node and fails
  at once past them (:data:`BUSY` tells that apart from an outage, like :class:`PoolExhausted`).
  Every multi-key operation of petstore keeps its keys in one slot (a ``{…}`` hash tag), or
  splits itself per slot where it cannot (the rate limiter's user + address login check).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.exceptions
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from petstore import redis_url
from petstore.config import Settings

#: The process's client, whichever deployment it speaks to.
Client = Redis | RedisCluster

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


class WaitingSentinelPool(SentinelConnectionPool, WaitingPool):
    """The Sentinel pool (a new connection goes to the primary the sentinels name now), bounded
    and blocking like :class:`WaitingPool`."""


#: A cluster client that found every connection to a node taken: load, not an outage.
BUSY: tuple[type[Exception], ...] = (PoolExhausted,) + (
    (redis.exceptions.MaxConnectionsError,) if hasattr(redis.exceptions, "MaxConnectionsError") else ()
)


def request_client(
    settings: Settings, *, pool_size: int = POOL_SIZE, wait_seconds: float = WAIT_SECONDS
) -> Client | None:
    """The client for ``PETSTORE_REDIS_URL`` (None without it), bounded to ``pool_size`` connections
    (per node, on a cluster).

    Nothing connects until the first command. Close it with :func:`close`.
    """
    if not settings.redis_url:
        return None
    target = redis_url.parse(settings.redis_url)
    common: dict[str, Any] = {
        "socket_timeout": TIMEOUT_SECONDS,
        "socket_connect_timeout": TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    }
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            username=target.username,
            password=target.password,
            ssl=target.tls,
            max_connections=pool_size,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
        )
    if target.kind == "sentinel":
        tls: dict[str, Any] = {"ssl": True} if target.tls else {}
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            list(target.hosts),
            sentinel_kwargs={
                "password": target.sentinel_password,
                "socket_timeout": TIMEOUT_SECONDS,
                "socket_connect_timeout": TIMEOUT_SECONDS,
                **tls,
            },
        )
        client: Redis = sentinel.master_for(
            target.service,
            connection_pool_class=WaitingSentinelPool,
            username=target.username,
            password=target.password,
            db=target.db,
            max_connections=pool_size,
            timeout=wait_seconds,
            **tls,
            **common,
        )
        return client
    pool = WaitingPool.from_url(settings.redis_url, max_connections=pool_size, timeout=wait_seconds, **common)
    return Redis(connection_pool=pool)


async def close(client: Client) -> None:
    """Close the client and every connection of its pools."""
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


async def node_pool(client: Client) -> ConnectionPool:
    """A pool of connections to one server, for a plain pub/sub subscription: the client's own pool,
    or on a cluster one to a primary picked at random (classic pub/sub reaches every node of a
    cluster); close it with ``disconnect()`` when it is one of the cluster's."""
    if not isinstance(client, RedisCluster):
        return client.connection_pool
    await client.initialize()
    node = client.get_random_node()
    return ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)


def new_connection(pool: ConnectionPool) -> AbstractConnection:
    """A connection of ``pool``'s kind outside the pool, held as long as it works (a listener's)."""
    connection: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
    return connection
