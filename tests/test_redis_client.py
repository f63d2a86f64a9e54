"""petstore.redis_client: one bounded pool whose exhaustion is told apart from Redis being down."""

from __future__ import annotations

import pytest
import redis.exceptions

from petstore.config import Settings
from petstore.redis_client import PoolExhausted, request_client
from tests.services import HOST, free_port

pytestmark = pytest.mark.redis


def test_no_redis_url_no_client() -> None:
    assert request_client(Settings(redis_url=None)) is None


async def test_a_full_pool_makes_callers_wait_then_says_pool_exhausted(redis_url: str) -> None:
    client = request_client(Settings(redis_url=redis_url), pool_size=1, wait_seconds=0.2)
    assert client is not None
    try:
        held = await client.connection_pool.get_connection()
        with pytest.raises(PoolExhausted):
            await client.ping()
        await client.connection_pool.release(held)
        assert await client.ping() is True  # the connection came back: the next caller has it
    finally:
        await client.aclose(close_connection_pool=True)


async def test_an_unreachable_redis_is_an_outage_not_pool_exhaustion() -> None:
    client = request_client(Settings(redis_url=f"redis://{HOST}:{free_port()}/0"))
    assert client is not None
    try:
        with pytest.raises(redis.exceptions.ConnectionError) as failure:
            await client.ping()
        assert not isinstance(failure.value, PoolExhausted)
    finally:
        await client.aclose(close_connection_pool=True)
