"""Revoked tokens and refresh-token families: in Redis when configured, else in this process.

A *family* starts at a login and follows one chain of refresh tokens. Only its newest refresh
token may be used; presenting an older one means it was stolen or replayed, so the whole family
(every access and refresh token it produced) is revoked. Entries live as long as the tokens
they describe could (Redis TTL = what is left of the token's life), so nothing piles up.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis

PREFIX = "petstore:auth:"

# KEYS: family, family-revoked. ARGV: presented jti, new jti, new family TTL, revoked-marker TTL.
_ROTATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'revoked' end
local current = redis.call('GET', KEYS[1])
if not current then return 'unknown' end
if current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 'ok'
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])
return 'reused'
"""


class Rotation(enum.StrEnum):
    ok = "ok"
    reused = "reused"  # a spent refresh token came back: the family is now revoked
    revoked = "revoked"  # the family was revoked earlier (logout, reuse)
    unknown = "unknown"  # no such family (expired, or never issued here)


class TokenStore(Protocol):
    async def is_revoked(self, jti: str, family: str | None) -> bool: ...

    async def revoke(self, jti: str, ttl: int) -> None: ...

    async def revoke_family(self, family: str, ttl: int) -> None: ...

    async def start_family(self, family: str, jti: str, ttl: int) -> None: ...

    async def rotate(self, family: str, presented: str, new: str, ttl: int) -> Rotation: ...

    async def close(self) -> None: ...


def _ttl(seconds: float) -> int:
    return max(1, int(seconds) + 1)


class MemoryTokenStore:
    """One process only: what a single-instance development server needs."""

    PURGE_EVERY = 1024

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._revoked: dict[str, float] = {}  # key -> expiry (monotonic)
        self._families: dict[str, tuple[str, float]] = {}  # family -> (current jti, expiry)
        self._writes = 0

    def _alive(self, key: str) -> bool:
        expiry = self._revoked.get(key)
        return expiry is not None and expiry > self._clock()

    def _purge(self) -> None:
        # Expired entries are dropped now and then, so memory follows the live tokens only.
        self._writes += 1
        if self._writes % self.PURGE_EVERY:
            return
        now = self._clock()
        self._revoked = {k: e for k, e in self._revoked.items() if e > now}
        self._families = {k: v for k, v in self._families.items() if v[1] > now}

    async def is_revoked(self, jti: str, family: str | None) -> bool:
        return self._alive(f"jti:{jti}") or (family is not None and self._alive(f"family:{family}"))

    async def revoke(self, jti: str, ttl: int) -> None:
        self._purge()
        self._revoked[f"jti:{jti}"] = self._clock() + _ttl(ttl)

    async def revoke_family(self, family: str, ttl: int) -> None:
        self._purge()
        self._families.pop(family, None)
        self._revoked[f"family:{family}"] = self._clock() + _ttl(ttl)

    async def start_family(self, family: str, jti: str, ttl: int) -> None:
        self._purge()
        self._families[family] = (jti, self._clock() + _ttl(ttl))

    async def rotate(self, family: str, presented: str, new: str, ttl: int) -> Rotation:
        if self._alive(f"family:{family}"):
            return Rotation.revoked
        entry = self._families.get(family)
        if entry is None or entry[1] <= self._clock():
            return Rotation.unknown
        if entry[0] == presented:
            self._families[family] = (new, self._clock() + _ttl(ttl))
            return Rotation.ok
        await self.revoke_family(family, ttl)
        return Rotation.reused

    async def close(self) -> None:
        return None


class RedisTokenStore:
    """Shared by every instance: a token revoked on one is refused by all."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._rotate = redis.register_script(_ROTATE)

    async def is_revoked(self, jti: str, family: str | None) -> bool:
        keys = [f"{PREFIX}revoked:{jti}"] + ([f"{PREFIX}family-revoked:{family}"] if family else [])
        return bool(await self.redis.exists(*keys))  # one round trip for both questions

    async def revoke(self, jti: str, ttl: int) -> None:
        await self.redis.set(f"{PREFIX}revoked:{jti}", b"1", ex=_ttl(ttl))

    async def revoke_family(self, family: str, ttl: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{PREFIX}family-revoked:{family}", b"1", ex=_ttl(ttl))
            pipe.delete(f"{PREFIX}family:{family}")
            await pipe.execute()

    async def start_family(self, family: str, jti: str, ttl: int) -> None:
        await self.redis.set(f"{PREFIX}family:{family}", jti.encode(), ex=_ttl(ttl))

    async def rotate(self, family: str, presented: str, new: str, ttl: int) -> Rotation:
        keys = [f"{PREFIX}family:{family}", f"{PREFIX}family-revoked:{family}"]
        answer = await self._rotate(keys=keys, args=[presented, new, _ttl(ttl), _ttl(ttl)])
        return Rotation(answer.decode() if isinstance(answer, bytes) else str(answer))

    async def close(self) -> None:
        await self.redis.aclose()
