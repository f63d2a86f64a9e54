"""Resume passes: a reconnect is charged to the connection it resumes, not to the address's budget.

After a restart every dashboard reconnects at once, and behind one NAT address they share its
connect budget: with 5,000 of them, 30 a minute would take hours (``bench/storm.py`` measured
it). Yet a flood from that address must still be stopped. So each accepted WebSocket is handed
a pass in its ``welcome`` (``"resume": "…"``), and a client that reconnects brings it back as
``/ws?resume=…``. A pass that holds lets that one reconnect in without spending the connect
budgets; only the ``ws_connect_per_ip``-sized resume budget (``PETSTORE_RATELIMIT_WS_RESUME_PER_IP``,
a wide one) still counts it, which bounds what the passes of many connections can do.

A pass holds when:

- its signature is this deployment's: HMAC-SHA256 under a key kept in Redis (made once, shared
  by every instance, so a pass from an instance that died holds on the others and after a
  restart) or, without Redis, this process's own (a restart then starts the budgets afresh
  anyway, in memory);
- it is for the address it comes from (a pass copied elsewhere is worth nothing);
- it is at least :data:`RESUME_AFTER` seconds old: a connection earns its pass by staying, so
  connect, drop, reconnect with the fresh pass, repeat, gains a flooder one connection per
  :data:`RESUME_AFTER` per connection it already has, no more;
- it is at most :data:`RESUME_WITHIN` seconds old (a restart, a network change, a laptop lid);
- it has not been spent: each pass lets one reconnect in (``SET NX`` of its nonce in Redis, with
  the pass's remaining life as TTL; a bounded set in this process without Redis).

It is not a credential: it says nothing of who the client is (the ``auth`` message does), and it
is kept out of logs like the other secrets of a URL (:class:`RedactResume`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

#: A pass is good from this many seconds after it was issued...
RESUME_AFTER = 5
#: ...to this many.
RESUME_WITHIN = 15 * 60
KEY_NAME = "petstore:rl:resume-key"
SPENT_PREFIX = "petstore:rl:resume-spent:"
#: Spent passes remembered by one process without Redis; past it the oldest is forgotten (and
#: so spendable again, once: the connect budgets of a flood that large are long gone anyway).
MAX_SPENT = 100_000
_PASS = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{12})\.([A-Za-z0-9_-]{22})")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class ResumePasses:
    """Issue passes, and spend one a reconnect brings."""

    def __init__(self, redis: Redis | RedisCluster | None = None, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._spent: OrderedDict[str, float] = OrderedDict()

    async def start(self) -> None:
        """Take the deployment's key from Redis, making it if no instance has yet."""
        if self.redis is None:
            return
        await self.redis.set(KEY_NAME, _b64(self._key), nx=True)
        shared = await self.redis.get(KEY_NAME)
        if shared is not None:
            text = shared.decode() if isinstance(shared, bytes) else str(shared)
            self._key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    def _signature(self, issued: str, nonce: str, address: str) -> str:
        message = f"{issued}.{nonce}.{address}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest()[:16])

    def issue(self, address: str) -> str:
        issued, nonce = str(int(self._clock())), _b64(secrets.token_bytes(9))
        return f"{issued}.{nonce}.{self._signature(issued, nonce, address)}"

    async def spend(self, text: str, address: str) -> bool:
        """Whether ``text`` is a pass that holds for ``address`` now; it is spent if so.

        Raises what Redis raises when it cannot be asked (the caller then counts the connection
        as any other)."""
        match = _PASS.fullmatch(text)
        if match is None:
            return False
        issued, nonce, signature = match.groups()
        if not hmac.compare_digest(signature, self._signature(issued, nonce, address)):
            return False
        age = self._clock() - int(issued)
        if not RESUME_AFTER <= age <= RESUME_WITHIN:
            return False
        if self.redis is not None:
            ttl = max(1, int(RESUME_WITHIN - age) + 1)
            return bool(await self.redis.set(SPENT_PREFIX + nonce, "1", nx=True, ex=ttl))
        return self._spend_here(nonce)

    def _spend_here(self, nonce: str) -> bool:
        now = self._clock()
        while self._spent and next(iter(self._spent.values())) < now:
            self._spent.popitem(last=False)  # expired: its pass could not hold any more anyway
        if nonce in self._spent:
            return False
        self._spent[nonce] = now + RESUME_WITHIN
        if len(self._spent) > MAX_SPENT:
            self._spent.popitem(last=False)
        return True


_RESUME_QUERY = re.compile(r"((?:^|[?&])resume=)[^&\s\"]*")


class RedactResume(logging.Filter):
    """Keeps ``/ws?resume=…`` out of uvicorn's logs (and any log it is added to)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_RESUME_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _RESUME_QUERY.sub(r"\1***", record.msg)
        return True
