"""Keeps each instance's copy of the revocations fresh: Redis pub/sub when it is there, the database always.

- The instance that revokes updates its own copy at once (:class:`~plugins.auth.store.TokenStore`)
  and publishes the keys on :data:`CHANNEL`; every other instance's subscriber adds them as they
  arrive, so in the normal case a token logged out on one instance is refused by all within
  milliseconds.
- Every instance also polls the database every ``poll_seconds`` for revocations newer than the
  last it saw. During a Redis outage (or without Redis at all) that poll is the bound: a token
  revoked elsewhere is refused here at most ``poll_seconds`` later.
- After the subscriber (re)connects it polls at once, since whatever was published while it was
  away is lost. It recovers from any fault by itself (reconnect with backoff and jitter), and a
  connection that goes silent is noticed by its own pings.

Publishing is best-effort: the revocation is committed in the database before, and the poll
carries it when Redis cannot. Its failure is logged once, not once per logout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import RedisError

from petstore.errors import PetstoreError
from petstore.redis_client import node_pool
from plugins.auth.store import Entry, TokenStore

logger = logging.getLogger("plugins.auth")

CHANNEL = "petstore:auth:revoked"
#: Expired rows are deleted about this often by each instance.
PRUNE_SECONDS = 600.0
#: A publish waits at most this long: a logout never hangs on an unreachable Redis.
PUBLISH_TIMEOUT_SECONDS = 1.0
#: The subscriber pings this often, and reconnects when it has heard nothing for SILENT_SECONDS.
PING_SECONDS = 5.0
SILENT_SECONDS = 15.0
BACKOFF_SECONDS = (0.2, 10.0)  # first and longest wait between two reconnection attempts
MAX_MESSAGE_BYTES = 64 * 1024
KEY_PREFIXES = ("jti:", "family:", "user:")


class SubscriberSilent(PetstoreError):
    """Nothing, not even a pong, came over the subscription for too long: the connection is dead."""


def encode(entries: Sequence[Entry]) -> str:
    return json.dumps([[key, expires_at] for key, expires_at in entries])


def decode(data: Any) -> list[Entry]:
    """The entries of one message; ValueError for anything else (it is then ignored)."""
    if not isinstance(data, bytes | str) or len(data) > MAX_MESSAGE_BYTES:
        raise ValueError("not a revocation message")
    items = json.loads(data)
    if not isinstance(items, list):
        raise ValueError("not a list of revocations")
    entries = []
    for item in items:
        match item:
            case [str() as key, int() | float() as expires_at] if key.startswith(KEY_PREFIXES) and len(key) <= 64:
                entries.append((key, float(expires_at)))
            case _:
                raise ValueError("not a revocation")
    return entries


class _Subscription(PubSub):
    """redis-py's pub/sub, counting the connections it subscribed on: more than one means it
    reconnected by itself, and whatever was published in between is lost to this instance."""

    connects = 0

    async def on_connect(self, connection: Connection) -> None:
        self.connects += 1
        await super().on_connect(connection)


class RevocationFeed:
    """The background work that keeps ``store.revoked`` up to date; :meth:`publish` is the store's ``announce``."""

    def __init__(self, store: TokenStore, redis: Redis | RedisCluster | None, poll_seconds: float) -> None:
        self.store = store
        self.redis = redis
        self.poll_seconds = poll_seconds
        #: True while the subscriber is subscribed (pub/sub carries revocations at once).
        self.subscribed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._poll_failing = False
        self._publish_failing = False
        self._last_prune = time.monotonic()

    async def start(self) -> None:
        """Load the revocations, then keep them fresh in the background."""
        try:
            await self.store.poll()
        except Exception as exc:  # the database may be down, or not migrated yet: the poll retries
            self._poll_failing = True
            logger.warning(
                "auth: cannot load revocations (%s): each token is checked in the database until they are",
                type(exc).__name__,
            )
        self.store.announce = self.publish
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="auth-revocation-poll"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="auth-revocation-subscriber"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        # The client is the app's (App.redis): the app closes it.

    # ------------------------------------------------------------------ the database poll

    async def poll(self) -> None:
        """One poll (and now and then a prune); a failure is logged when it starts and when it ends."""
        try:
            await self.store.poll()
            if time.monotonic() - self._last_prune >= PRUNE_SECONDS:
                self._last_prune = time.monotonic()
                await self.store.prune()
        except Exception as exc:
            if not self._poll_failing:
                logger.warning(
                    "auth: cannot read revocations from the database (%s): retrying every %g s",
                    type(exc).__name__,
                    self.poll_seconds,
                )
            self._poll_failing = True
            return
        if self._poll_failing:
            logger.info("auth: revocations read from the database again")
        self._poll_failing = False

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self.poll()

    # ------------------------------------------------------------------ Redis pub/sub

    async def publish(self, entries: Sequence[Entry]) -> None:
        """Tell the other instances now; if Redis cannot hear it, their poll will (logged once)."""
        if self.redis is None:
            return
        try:
            await asyncio.wait_for(self.redis.publish(CHANNEL, encode(entries)), PUBLISH_TIMEOUT_SECONDS)
        except (RedisError, OSError) as exc:
            if not self._publish_failing:
                logger.warning(
                    "auth: cannot publish revocations (%s): other instances refuse them after their next "
                    "database poll, within %g s (logged once until publishing works again)",
                    type(exc).__name__,
                    self.poll_seconds,
                )
            self._publish_failing = True
            return
        if self._publish_failing:
            logger.info("auth: publishing revocations again")
        self._publish_failing = False

    def _apply(self, data: Any) -> None:
        try:
            entries = decode(data)
        except ValueError:
            logger.warning("auth: ignored a malformed message on %s", CHANNEL)
            return
        self.store.learn(entries)

    async def _listen_loop(self) -> None:
        delay = BACKOFF_SECONDS[0]
        lost_logged = False
        while True:
            try:
                await self._listen()
            except Exception as exc:  # any fault at all: reconnect (CancelledError is not an Exception)
                if self.subscribed or not lost_logged:
                    logger.warning(
                        "auth: revocation pub/sub unavailable (%s): reconnecting; meanwhile revocations made on "
                        "other instances are refused here after the next database poll, within %g s",
                        type(exc).__name__,
                        self.poll_seconds,
                    )
                    lost_logged = True
                if self.subscribed:
                    delay = BACKOFF_SECONDS[0]
                self.subscribed = False
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 (jitter, not secrecy)
            delay = min(delay * 2, BACKOFF_SECONDS[1])

    async def _listen(self) -> None:
        """Subscribe and apply messages until something fails; returns only by raising."""
        assert self.redis is not None
        # On a cluster, a plain PUBLISH reaches the subscribers of every node: any one will do.
        pool = await node_pool(self.redis)
        pubsub = _Subscription(pool)
        try:
            await pubsub.subscribe(CHANNEL)
            # Whatever was published while nobody here listened is gone: read it from the database.
            await self.poll()
            if not self.subscribed:
                logger.info("auth: revocation pub/sub subscribed")
            self.subscribed = True
            heard = pinged = time.monotonic()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                now = time.monotonic()
                if pubsub.connects > 1:
                    # redis-py reconnected and subscribed again by itself (its one retry of a
                    # connection the server closed): what was published meanwhile is lost.
                    raise SubscriberSilent("the subscription was made again on a new connection")
                if message is not None:
                    heard = now
                    if message.get("type") == "message":
                        self._apply(message.get("data"))
                if now - heard > SILENT_SECONDS:
                    raise SubscriberSilent(f"nothing heard for {SILENT_SECONDS:g} s")
                if now - pinged >= PING_SECONDS:
                    pinged = now
                    await pubsub.ping()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            if pool is not getattr(self.redis, "connection_pool", None):
                with contextlib.suppress(Exception):
                    await pool.disconnect()
