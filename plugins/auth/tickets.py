"""Stream tickets: how a browser's ``EventSource`` follows a room that needs a signed-in user.

``EventSource`` cannot send an ``Authorization`` header, and tokens are never taken from a URL
(they would land in access logs, proxies and the browser's history). So a page spends its bearer
token on ``POST /api/v3/events/ticket`` and gets a ticket: random, good for
:data:`TICKET_SECONDS`, for one stream only, and worth nothing once spent
(``GET /api/v3/events?room=orders&ticket=…``). It is not a token: it stands for the access token
it was issued for, whose claims it holds, and when it is spent those claims are checked again
exactly as the token would be (revoked, expired, user deleted or changed; the role read from the
database). The stream it opens then ends when that token expires, as any stream does.

Tickets live in Redis when ``PETSTORE_REDIS_URL`` is set (on the app's client, whose pool the
rest of the plugin and the rate limiter share), so any instance can accept one that another
issued; ``GETDEL`` spends it atomically, so two instances cannot both accept it. Without Redis
they live in this process, bounded. Either way only a SHA-256 of the ticket is a key, and the
ticket itself is kept out of logs (:func:`plugins.auth.backend.redact`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from petstore.redis_client import PoolExhausted

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

#: How long a ticket may wait to be spent: enough for a page to open its stream, little to steal.
TICKET_SECONDS = 30
#: Tickets waiting to be spent in one process without Redis; past it the oldest is dropped.
MAX_PENDING = 10_000
KEY_PREFIX = "petstore:auth:ticket:"


class TicketsUnavailable(Exception):
    """The shared store cannot be reached: a ticket can be neither issued nor spent right now."""


def _key(ticket: str) -> str:
    return KEY_PREFIX + hashlib.sha256(ticket.encode()).hexdigest()


class StreamTickets:
    """Issue and spend single-use tickets, in Redis when given one, else in this process."""

    def __init__(
        self, redis: Redis | RedisCluster | None, ttl: int = TICKET_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.redis = redis
        self.ttl = ttl
        self._clock = clock
        #: key -> (deadline on ``clock``, payload), oldest first.
        self._pending: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def issue(self, claims: dict[str, Any], role: str) -> str:
        """A new ticket for the access token of these (verified) claims, by a user of this role."""
        ticket = secrets.token_urlsafe(32)
        payload = json.dumps({"claims": claims, "role": role})
        if self.redis is not None:
            try:
                await self.redis.set(_key(ticket), payload, ex=self.ttl, nx=True)
            except (RedisError, OSError, PoolExhausted) as exc:
                raise TicketsUnavailable(type(exc).__name__) from None
            return ticket
        self._forget_expired()
        while len(self._pending) >= MAX_PENDING:
            self._pending.popitem(last=False)
        self._pending[_key(ticket)] = (self._clock() + self.ttl, payload)
        return ticket

    async def spend(self, ticket: str) -> dict[str, Any] | None:
        """What the ticket was issued for (``claims``, ``role``), once; None if unknown, spent or expired."""
        key = _key(ticket)
        if self.redis is not None:
            try:
                raw = await self.redis.getdel(key)
            except (RedisError, OSError, PoolExhausted) as exc:
                raise TicketsUnavailable(type(exc).__name__) from None
            payload = raw.decode() if isinstance(raw, bytes) else raw
        else:
            found = self._pending.pop(key, None)
            payload = found[1] if found is not None and found[0] > self._clock() else None
        if not isinstance(payload, str):
            return None
        data: dict[str, Any] = json.loads(payload)
        return data

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._pending:
            key, (deadline, _) = next(iter(self._pending.items()))
            if deadline > now:
                return
            del self._pending[key]
