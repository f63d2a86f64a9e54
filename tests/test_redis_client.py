"""petstore.redis_client: one bounded pool whose exhaustion is told apart from Redis being down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.exceptions
from starlette.testclient import TestClient

from petstore.app import create_app
from petstore.config import Settings
from petstore.realtime.broker.redis import RedisBroker
from petstore.redis_client import PoolExhausted, request_client
from petstore.state import AppState
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


def test_the_broker_auth_and_rate_limits_share_the_one_client(redis_url: str, tmp_path: Path) -> None:
    """One pool per process: the broker publishes and reads history on the app's client, and
    closing the app closes it once (the broker does not close what it does not own)."""
    settings = Settings(
        redis_url=redis_url,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db",
        media_dir=tmp_path / "media",
        plugins=("plugins.auth", "plugins.ratelimit"),
    )
    with TestClient(create_app(settings)) as client:
        state = client.app_state["petstore"]
        assert isinstance(state, AppState) and state.redis is not None and state.realtime is not None
        broker = state.realtime.broker
        assert isinstance(broker, RedisBroker)
        assert broker._client is state.redis
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["checks"]["broker"] != "ok":  # its listener is connecting
            assert time.monotonic() < deadline, "the broker never became ready on the shared client"
