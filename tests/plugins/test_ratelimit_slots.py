"""The rate limiter's cluster-safe form: a check over two clients' keys, split per hash slot.

On a Redis Cluster a login check (by user and by address) cannot be one script, since the two
clients' keys live in different slots. The limiter then spends each client's budgets in turn and
gives back what it took when a later client refuses. Run here on one real Redis with the split
forced on, so that the arithmetic is shown against the same script; the cluster test
(tests/faults/test_redis_cluster.py) shows it on a real cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from redis.crc import key_slot

from petstore.rates import Rate
from plugins.ratelimit.gcra import Budget, Policy, RedisLimiter, budgets

pytestmark = pytest.mark.redis

LOGIN = Policy("login", (Rate(3, 60),))


@pytest.fixture
async def limiter(redis_url: str) -> AsyncIterator[RedisLimiter]:
    client = redis.asyncio.Redis.from_url(redis_url)
    limiter = RedisLimiter(client)
    limiter._per_slot = True  # what it is on a cluster
    try:
        yield limiter
    finally:
        await client.aclose()


def login(user: str, ip: str) -> list[Budget]:
    return budgets(LOGIN, f"user:{user}") + budgets(LOGIN, f"ip:{ip}")


def test_each_clients_keys_share_one_slot_and_two_clients_do_not() -> None:
    policy = Policy("default", (Rate(10, 1), Rate(100, 60)))
    alice = [b.key.encode() for b in budgets(policy, "user:alice") + budgets(LOGIN, "user:alice")]
    assert len({key_slot(key) for key in alice}) == 1
    assert key_slot(budgets(LOGIN, "ip:10.0.0.1")[0].key.encode()) != key_slot(alice[0])


async def test_a_refusal_by_the_second_client_gives_back_what_the_first_took(limiter: RedisLimiter) -> None:
    # The address has spent its budget on other users' logins.
    for n in range(3):
        assert (await limiter.check(login(f"other{n}", "10.0.0.1"))).allowed
    for _ in range(5):
        refused = await limiter.check(login("alice", "10.0.0.1"))
        assert not refused.allowed and refused.retry_after > 0
    # alice's own budget was given back each time: from another address she still has all of it.
    allowed = [(await limiter.check(login("alice", "10.0.0.2"))).allowed for _ in range(4)]
    assert allowed == [True, True, True, False]


async def test_the_split_form_lets_through_what_the_single_script_does(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.flushall()
        single = RedisLimiter(client)
        split = RedisLimiter(client)
        split._per_slot = True
        pattern = [("a", "1.1.1.1"), ("b", "1.1.1.1"), ("a", "1.1.1.2"), ("a", "1.1.1.1"), ("c", "1.1.1.1")] * 2
        seen_single = [(await single.check(login(u, ip))).allowed for u, ip in pattern]
        await client.flushall()
        seen_split = [(await split.check(login(u, ip))).allowed for u, ip in pattern]
    finally:
        await client.aclose()
    assert seen_split == seen_single and False in seen_single
