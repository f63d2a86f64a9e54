"""petstore.redis_url: the three forms of PETSTORE_REDIS_URL (SPEC §1), and mistakes named plainly."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from petstore.config import Settings
from petstore.redis_client import request_client
from petstore.redis_url import parse, redacted


def test_a_single_server_url_is_handed_to_redis_py_as_given() -> None:
    target = parse("rediss://:pw@cache:6380/2")
    assert (target.kind, target.tls, target.url) == ("single", True, "rediss://:pw@cache:6380/2")


def test_a_sentinel_url_names_its_sentinels_service_and_options() -> None:
    target = parse("redis+sentinel://app:s%40cret@h1:26379,h2/orders?sentinel_password=sp&db=3")
    assert target.kind == "sentinel" and not target.tls
    assert target.hosts == (("h1", 26379), ("h2", 26379))
    assert (target.username, target.password, target.service) == ("app", "s@cret", "orders")
    assert (target.sentinel_password, target.db) == ("sp", 3)
    assert parse("rediss+sentinel://h1:1/s").tls


def test_a_cluster_url_lists_startup_nodes() -> None:
    target = parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert target.kind == "cluster" and target.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert target.password == "pw" and target.username is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("memcached://h:1", "must start with one of"),
        ("redis+sentinel://:pw@h1:26379", "names its service"),
        ("redis+sentinel://h1:26379/a/b", "names its service"),
        ("redis+sentinel://h1:26379/s?sentinel_pasword=x", "unknown redis+sentinel:// option(s): sentinel_pasword"),
        ("redis+sentinel://h1:26379/s?db=one", "database number"),
        ("redis+cluster://h1:7000/3", "takes no path"),
        ("redis+cluster://h1:notaport", "not a host:port"),
        ("redis+cluster://h1:70000", "not a host:port"),
    ],
)
def test_a_mistake_is_named_at_start_up_without_the_password(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("+", r"\+").replace("(", r"\(").replace(")", r"\)")):
        parse(url)
    with pytest.raises(ValidationError) as failure:
        Settings(redis_url=url.replace("h1", ":topsecret@h1", 1) if "@" not in url else url)
    assert "topsecret" not in str(failure.value.errors(include_input=False))


def test_redacted_hides_both_passwords() -> None:
    text = redacted("redis+sentinel://app:pw@h1:26379,h2:26380/s?sentinel_password=sp&db=1")
    assert "pw" not in text.replace("sentinel_password", "") and "sp&" not in text
    assert text == "redis+sentinel://app:***@h1:26379,h2:26380/s?sentinel_password=***&db=1"


def test_each_form_gets_its_client() -> None:
    from redis.asyncio import Redis, RedisCluster

    from petstore.redis_client import WaitingPool, WaitingSentinelPool

    single = request_client(Settings(redis_url="redis://127.0.0.1:1/0"))
    sentinel = request_client(Settings(redis_url="redis+sentinel://127.0.0.1:1/s?db=2"))
    cluster = request_client(Settings(redis_url="redis+cluster://127.0.0.1:1"))
    assert isinstance(single, Redis) and type(single.connection_pool) is WaitingPool
    assert isinstance(sentinel, Redis) and isinstance(sentinel.connection_pool, WaitingSentinelPool)
    assert sentinel.connection_pool.connection_kwargs["db"] == 2
    assert sentinel.connection_pool.max_connections == 64  # bounded and blocking, as the single pool
    assert isinstance(cluster, RedisCluster)
