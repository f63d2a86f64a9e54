"""Budgets and the GCRA that spends them: in this process, or in Redis by a Lua twin of the same code.

GCRA (the generic cell rate algorithm) is a token bucket kept as one timestamp per key, its
theoretical arrival time (TAT): up to ``q`` requests at once, then one every ``w/q`` seconds.
A request is checked against several keys at once (each rate of each policy that applies) and
passes only if every one has room; then every key moves on, else none does.

:func:`evaluate` is the algorithm; :class:`MemoryLimiter` keeps the TATs in a dict, and
:class:`RedisLimiter` runs :data:`_GCRA`, which does what :func:`evaluate` does in one atomic
round trip on Redis's clock, so that every instance shares one budget. Keep the two in step: the
Redis limiter checks the script's verdict against :func:`evaluate` on every call.

A client's keys share a hash slot (``petstore:rl:{<client>}:…``), so one client's check is one
script in one slot, on a Redis Cluster too. A check over two clients (a login, by user and by
address) cannot be one script there: the cluster form spends each client's budgets in turn and,
when a later one refuses, gives back what the earlier ones took (:data:`_REFUND`). It never lets
more through than the single-server form; while a refund is on its way, a concurrent request of
the same client may be refused that the single-server form would have let through.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis, RedisCluster

from petstore.rates import Rate

PREFIX = "petstore:rl:"
MICRO = 1_000_000


@dataclass(frozen=True)
class Policy:
    """A named set of rates, as the IETF ``RateLimit-Policy`` header lists them."""

    name: str
    rates: tuple[Rate, ...]

    def header_items(self) -> list[str]:
        return [f'"{self._item(i)}";q={rate.limit};w={rate.window}' for i, rate in enumerate(self.rates)]

    def _item(self, index: int) -> str:
        return self.name if index == 0 else f"{self.name}-{index}"


@dataclass(frozen=True)
class Budget:
    """One key of a check: which policy, which of its rates, for which client."""

    policy: Policy
    index: int
    client: str

    @property
    def rate(self) -> Rate:
        return self.policy.rates[self.index]

    @property
    def key(self) -> str:
        return f"{PREFIX}{{{self.client}}}:{self.policy.name}:{self.index}"

    @property
    def interval(self) -> int:
        """Microseconds one request moves the TAT on (the script's ``interval``)."""
        return -(-(self.rate.window * MICRO) // self.rate.limit)


def budgets(policy: Policy, client: str) -> list[Budget]:
    return [Budget(policy, index, client) for index in range(len(policy.rates))]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    budget: Budget  # the one that decided: the refusing one, or the one with the least left
    remaining: int
    reset: int  # seconds until the whole quota is back
    retry_after: int  # seconds until one more request would pass (0 when allowed)

    def headers(self, policies: Sequence[Policy]) -> dict[str, str]:
        policy_items = [item for policy in policies for item in policy.header_items()]
        name = self.budget.policy._item(self.budget.index)
        headers = {
            "RateLimit-Policy": ", ".join(policy_items),
            "RateLimit": f'"{name}";r={self.remaining};t={self.reset}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def evaluate(now: int, stored: Sequence[int | None], checks: Sequence[Budget]) -> tuple[Decision, list[int]]:
    """GCRA over several keys at once (times in microseconds): the decision and the new TATs.

    The Lua script below does exactly this in Redis; keep the two in step.
    """
    worst: Decision | None = None
    new_tats = []
    for budget, tat in zip(checks, stored, strict=True):
        period = budget.rate.window * MICRO
        interval = math.ceil(period / budget.rate.limit)
        tat = max(tat or now, now)
        new_tat = tat + interval
        excess = new_tat - now - period
        new_tats.append(new_tat)
        if excess > 0:
            decision = Decision(False, budget, 0, _seconds(tat - now), max(1, _seconds(excess)))
        else:
            remaining = (period - (new_tat - now)) // interval
            decision = Decision(True, budget, remaining, _seconds(new_tat - now), 0)
        if worst is None or _worse(decision, worst):
            worst = decision
    assert worst is not None, "a check needs at least one budget"
    return worst, new_tats


def _seconds(micros: int) -> int:
    return max(0, math.ceil(micros / MICRO))


def _worse(a: Decision, b: Decision) -> bool:
    if a.allowed != b.allowed:
        return not a.allowed
    if not a.allowed:
        return a.retry_after > b.retry_after
    return a.remaining < b.remaining


# KEYS: one per budget. ARGV: limit and window (seconds) of each. Returns {now, tat or -1 per key, allowed}.
# Mirrors evaluate(): refuse if any key is over; otherwise move every key's TAT forward.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local reply = {now}
local news = {}
local allowed = 1
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i]) * 1000000
  local interval = math.ceil(period / limit)
  local stored = redis.call('GET', KEYS[i])
  reply[#reply + 1] = stored and tonumber(stored) or -1
  local tat = stored and tonumber(stored) or now
  if tat < now then tat = now end
  news[i] = tat + interval
  if news[i] - now - period > 0 then allowed = 0 end
end
if allowed == 1 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%d', news[i]), 'PX', math.ceil((news[i] - now) / 1000) + 1)
  end
end
reply[#reply + 1] = allowed
return reply
"""


# KEYS: the budgets a check took. ARGV: the interval each took (microseconds). Moves each TAT back.
_REFUND = """
for i = 1, #KEYS do
  local stored = redis.call('GET', KEYS[i])
  if stored then
    redis.call('SET', KEYS[i], string.format('%d', tonumber(stored) - tonumber(ARGV[i])), 'KEEPTTL')
  end
end
return 1
"""


class Limiter(Protocol):
    async def check(self, checks: Sequence[Budget]) -> Decision: ...

    async def close(self) -> None: ...


class MemoryLimiter:
    """In this process only; memory follows the clients seen within their windows."""

    PURGE_AT = 10_000

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._tats: dict[str, int] = {}
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock() * MICRO)

    async def check(self, checks: Sequence[Budget]) -> Decision:
        return self.check_now(checks)

    def check_now(self, checks: Sequence[Budget]) -> Decision:
        now = self._now()
        decision, new_tats = evaluate(now, [self._tats.get(b.key) for b in checks], checks)
        if decision.allowed:
            if len(self._tats) >= self.PURGE_AT:
                # A TAT in the past means a full bucket, the same as no entry: drop those.
                self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
            for budget, tat in zip(checks, new_tats, strict=True):
                self._tats[budget.key] = tat
        return decision

    async def close(self) -> None:
        return None


class RedisLimiter:
    """Shared by every instance: one budget per client however many servers answer.

    On the app's Redis client (``App.redis``), which the app closes: :meth:`close` leaves it.
    """

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.redis = redis
        self._script = redis.register_script(_GCRA)
        self._refund = redis.register_script(_REFUND)
        #: On a cluster, a check over several clients' keys is split per client (per hash slot).
        self._per_slot = isinstance(redis, RedisCluster)

    async def check(self, checks: Sequence[Budget]) -> Decision:
        clients: dict[str, list[Budget]] = {}
        for budget in checks:
            clients.setdefault(budget.client, []).append(budget)
        if not self._per_slot or len(clients) == 1:
            return await self._check(checks)
        taken: list[list[Budget]] = []
        worst: Decision | None = None
        for group in clients.values():
            decision = await self._check(group)
            if worst is None or _worse(decision, worst):
                worst = decision
            if not decision.allowed:
                await asyncio.gather(*(self._give_back(done) for done in taken))
                break
            taken.append(group)
        assert worst is not None
        return worst

    async def _give_back(self, group: Sequence[Budget]) -> None:
        await self._refund(keys=[b.key for b in group], args=[b.interval for b in group])

    async def _check(self, checks: Sequence[Budget]) -> Decision:
        args: list[int] = []
        for budget in checks:
            args += [budget.rate.limit, budget.rate.window]
        reply = await self._script(keys=[b.key for b in checks], args=args)
        now, stored = int(reply[0]), [int(v) if int(v) >= 0 else None for v in reply[1:-1]]
        decision, _ = evaluate(now, stored, checks)
        if decision.allowed != bool(int(reply[-1])):  # the script and evaluate() disagree: a bug
            raise RuntimeError("rate limit script and evaluate() disagree")
        return decision

    async def close(self) -> None:
        return None
