"""plugins.auth across instances and through Redis outages: revocations and refresh families live in
the database, each instance keeps a copy in memory that Redis pub/sub and a database poll keep fresh.

Two app instances share one database (``running_app`` twice on one ``tmp_path``, or PostgreSQL),
with the real ``plugins.auth`` and ``plugins.ratelimit`` and the session's real Redis, which some
tests stop. ``PETSTORE_JWT_REVOCATION_POLL_SECONDS`` is set per test: short where the poll is what
is tested, long where only pub/sub can deliver within the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from petstore import db
from petstore.config import Settings
from petstore.models import Role
from plugins.auth import schema
from plugins.auth.feed import CHANNEL, SILENT_SECONDS
from plugins.auth.store import Rotation, TokenStore
from tests.faults.redis import fast_restart, frozen
from tests.plugins.harness import PASSWORD, App, assert_error, bearer, create_tables, running_app
from tests.services import RedisServer, wait_until

pytestmark = pytest.mark.redis

API = "/api/v3"
PLUGINS = ("plugins.auth", "plugins.ratelimit", "tests.plugins.harness:Recorder")
#: A long poll: whatever reaches the other instance within a test's deadline came by pub/sub.
NO_POLL = "300"
#: A short poll, and the deadline of a wait for it (the bound, with room for a busy machine).
POLL = 0.5
POLL_DEADLINE = 10 * POLL
PUBSUB_DEADLINE = 5.0
PET = {"name": "Rex", "photoUrls": []}


@contextlib.contextmanager
def instances(
    tmp_path: Path, redis_url: str | None, poll: str, count: int = 2, users: bool = True, env: Mapping[str, str] = {}
) -> Iterator[list[App]]:
    """``count`` started apps on one SQLite database, with users alice (customer) and stella (staff)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PETSTORE_JWT_REVOCATION_POLL_SECONDS", poll)
        # Many logins per test: only the fallback test looks at the login budget.
        patch.setenv("PETSTORE_RATELIMIT_LOGIN_PER_USER", "1000/minute")
        patch.setenv("PETSTORE_RATELIMIT_LOGIN_PER_IP", "1000/minute")
        patch.setenv("PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_USER", "1000/minute")
        patch.setenv("PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_IP", "1000/minute")
        for name, value in env.items():
            patch.setenv(name, value)
        with contextlib.ExitStack() as stack:
            settings: dict[str, Any] = {"redis_url": redis_url, "plugins": PLUGINS, "rate_limit": "10000/minute"}
            apps = [stack.enter_context(running_app(tmp_path, **settings)) for _ in range(count)]
            if users:
                apps[0].add_user("alice")
                apps[0].add_user("stella", Role.staff)
            yield apps


def accepted(app: App, token: str) -> bool:
    status: int = app.whoami(token).status_code
    assert status in (200, 401), status
    return status == 200


def refused_within(app: App, token: str, deadline: float, what: str) -> None:
    wait_until(lambda: not accepted(app, token), deadline, what)
    assert_error(app.whoami(token), 401, "unauthorized")


def subscribed(app: App) -> bool:
    return bool(app.plugin("auth").feed.subscribed)


def logout(app: App, token: str) -> None:
    response = app.client.post(f"{API}/auth/logout", headers=bearer(token))
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------------------ Redis up: pub/sub


def test_a_revocation_on_one_instance_is_refused_by_another_through_pubsub(
    tmp_path: Path, redis_server: RedisServer, redis_url: str
) -> None:
    with instances(tmp_path, redis_url, NO_POLL) as (one, two):
        wait_until(lambda: subscribed(one) and subscribed(two), PUBSUB_DEADLINE, "both subscribers")
        tokens = one.login("alice")
        assert accepted(two, tokens["access_token"])
        redis_server.command("PUBLISH", CHANNEL, "not a revocation")
        logout(one, tokens["access_token"])
        assert not accepted(one, tokens["access_token"])  # on the instance that revoked: at once
        refused_within(two, tokens["access_token"], PUBSUB_DEADLINE, "the revocation to reach the other instance")
        # The refresh family is refused by the database itself, on every instance, at once.
        assert_error(
            two.client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
            401,
            oauth="invalid_grant",
        )
        assert subscribed(two)  # the malformed message was ignored, not fatal


def test_refresh_reuse_on_another_instance_revokes_the_family_everywhere(tmp_path: Path, redis_url: str) -> None:
    with instances(tmp_path, redis_url, NO_POLL) as (one, two):
        wait_until(lambda: subscribed(one) and subscribed(two), PUBSUB_DEADLINE, "both subscribers")
        first = one.login("alice")
        rotated = one.client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert rotated.status_code == 200, rotated.text
        pair = rotated.json()
        assert accepted(one, pair["access_token"]) and accepted(two, pair["access_token"])
        # The spent refresh token comes back on the other instance: the whole login ends everywhere.
        reuse = two.client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert_error(reuse, 401, oauth="invalid_grant")
        assert two.recorder.count("auth.failure", reason="refresh_reused") == 1
        assert not accepted(two, pair["access_token"])
        refused_within(one, pair["access_token"], PUBSUB_DEADLINE, "the reuse to reach the first instance")
        assert_error(
            one.client.post(f"{API}/auth/refresh", json={"refresh_token": pair["refresh_token"]}),
            401,
            oauth="invalid_grant",
        )


def test_concurrent_refreshes_with_one_token_give_exactly_one_new_pair(tmp_path: Path, redis_url: str) -> None:
    with instances(tmp_path, redis_url, NO_POLL) as (one, two):
        tokens = one.login("alice")
        body = {"refresh_token": tokens["refresh_token"]}

        def refresh(app: App) -> int:
            return app.client.post(f"{API}/auth/refresh", json=body).status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(refresh, (one, two) * 3))
        assert sorted(statuses) == [200] + [401] * 5, statuses


# ------------------------------------------------------------------------------ Redis down: REST goes on


def test_with_redis_stopped_logins_writes_refresh_and_logout_go_on(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with instances(tmp_path, redis_url, str(POLL)) as (one, two):
        wait_until(lambda: subscribed(one) and subscribed(two), PUBSUB_DEADLINE, "both subscribers")
        before = one.login("stella")
        with caplog.at_level(logging.WARNING, logger="plugins.auth"):
            redis_server.stop()
            try:
                # Logging in, both ways.
                tokens = one.login("stella")
                user_login = two.client.get(f"{API}/user/login", params={"username": "alice", "password": PASSWORD})
                assert user_login.status_code == 200, user_login.text
                # A staff write, with a token from before and one from during the outage.
                for app, token in ((one, tokens["access_token"]), (two, before["access_token"])):
                    created = app.client.post(f"{API}/pet", json=PET, headers=bearer(token))
                    assert created.status_code == 200, created.text
                # Refresh, with reuse detection.
                rotated = two.client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
                assert rotated.status_code == 200, rotated.text
                pair = rotated.json()
                spent = {"refresh_token": tokens["refresh_token"]}
                assert_error(one.client.post(f"{API}/auth/refresh", json=spent), 401, oauth="invalid_grant")
                assert not accepted(one, pair["access_token"])  # reuse revoked the family
                # Logout on one instance: refused there at once, on the other within the poll's bound.
                logout(one, before["access_token"])
                assert not accepted(one, before["access_token"])
                refused_within(two, before["access_token"], POLL_DEADLINE, "the poll to bring the revocation")
                alice = user_login.json()
                logout(two, alice)
                refused_within(one, alice, POLL_DEADLINE, "the poll to bring the second revocation")
                publishing = [r for r in caplog.records if "cannot publish revocations" in r.getMessage()]
                assert len(publishing) == 2  # once per instance, not once per revocation
                lost = [r for r in caplog.records if "revocation pub/sub unavailable" in r.getMessage()]
                assert len(lost) == 2 and all(r.name == "plugins.auth" for r in lost)
            finally:
                redis_server.start()
        wait_until(lambda: subscribed(one) and subscribed(two), 30, "both subscribers to reconnect")


def test_a_revocation_made_while_redis_was_down_is_read_back_when_the_subscriber_reconnects(
    tmp_path: Path, redis_server: RedisServer, redis_url: str
) -> None:
    with instances(tmp_path, redis_url, NO_POLL) as (one, two):
        wait_until(lambda: subscribed(one) and subscribed(two), PUBSUB_DEADLINE, "both subscribers")
        missed, later = one.login("alice"), one.login("alice")
        redis_server.stop()
        try:
            wait_until(lambda: not subscribed(two), 30, "the subscriber to notice the outage")
            logout(one, missed["access_token"])  # published to nobody
            assert accepted(two, missed["access_token"])  # no poll for minutes: not known there yet
        finally:
            redis_server.start()
        # Reconnected by itself, the subscriber reads from the database what it may have missed...
        wait_until(lambda: subscribed(two), 30, "the subscriber to reconnect")
        refused_within(two, missed["access_token"], PUBSUB_DEADLINE, "the reload after reconnecting")
        # ...and hears new revocations again.
        wait_until(lambda: subscribed(one), 30, "the other subscriber to reconnect")
        logout(one, later["access_token"])
        refused_within(two, later["access_token"], PUBSUB_DEADLINE, "pub/sub after the restart")


def test_the_subscriber_comes_back_after_a_fast_restart_and_after_a_freeze(
    tmp_path: Path, redis_server: RedisServer, redis_url: str
) -> None:
    """Redis restarted in some 20 ms, then frozen (SIGSTOP: sockets open, nothing answers): the
    subscriber notices each by itself (the freeze by its own pings) and carries revocations again."""
    with instances(tmp_path, redis_url, NO_POLL) as (one, two):
        wait_until(lambda: subscribed(one) and subscribed(two), PUBSUB_DEADLINE, "both subscribers")
        restarted, thawed = one.login("alice"), one.login("alice")
        fast_restart(redis_server)
        wait_until(lambda: subscribed(one), 30, "the revoking instance to reconnect")
        logout(one, restarted["access_token"])
        refused_within(two, restarted["access_token"], 30, "a revocation after the fast restart")
        with frozen(redis_server):
            wait_until(lambda: not subscribed(two), SILENT_SECONDS + 10, "the subscriber to notice the freeze")
            logout(one, thawed["access_token"])  # its publish times out: nobody hears it
        refused_within(two, thawed["access_token"], 30, "the reload once Redis answers again")


def test_without_redis_instances_on_one_database_share_revocations_by_polling(tmp_path: Path) -> None:
    with instances(tmp_path, None, str(POLL)) as (one, two):
        tokens = two.login("stella")
        created = one.client.post(f"{API}/pet", json=PET, headers=bearer(tokens["access_token"]))
        assert created.status_code == 200, created.text
        logout(two, tokens["access_token"])
        assert not accepted(two, tokens["access_token"])
        refused_within(one, tokens["access_token"], POLL_DEADLINE, "the poll to bring the revocation")
        # An instance started after the revocation knows it from its first load.
        with instances(tmp_path, None, NO_POLL, count=1, users=False) as (three,):
            assert not accepted(three, tokens["access_token"])


# ------------------------------------------------------------------------------ the login budget without Redis


def test_with_redis_stopped_login_has_a_per_instance_fallback_budget(
    tmp_path: Path, redis_server: RedisServer, redis_url: str
) -> None:
    fallback = {
        "PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_USER": "2/hour",
        "PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_IP": "3/hour",
    }
    with instances(tmp_path, redis_url, NO_POLL, count=1, env=fallback) as (app,):
        redis_server.stop()
        try:
            form = {"username": "alice", "password": PASSWORD}
            for _ in range(2):
                assert app.client.post(f"{API}/auth/token", data=form).status_code == 200
            over = app.client.post(f"{API}/auth/token", data=form)
            assert_error(over, 429, "rate_limited")
            assert int(over.headers["retry-after"]) > 0
            assert '"login-user-fallback";q=2;w=3600' in over.headers["ratelimit-policy"]
            # Another user from the same IP: one more, then the per-IP fallback budget is spent too.
            query = {"username": "stella", "password": PASSWORD}
            assert app.client.get(f"{API}/user/login", params=query).status_code == 200
            assert_error(app.client.get(f"{API}/user/login", params=query), 429, "rate_limited")
            # Ordinary requests are not limited meanwhile (fail open).
            assert all(app.client.get(f"{API}/pet/findByStatus").status_code == 200 for _ in range(3))
            assert app.recorder.count("ratelimit.backend_error") == 8
            assert app.recorder.count("ratelimit.rejected", scope="login") == 2
        finally:
            redis_server.start()


# ------------------------------------------------------------------------------ the store, on both databases


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


@contextlib.asynccontextmanager
async def database(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(Settings(database_url=database_url, plugins=(), env="test"))
    try:
        await create_tables(engine)
        yield engine
    finally:
        await engine.dispose()


async def test_rotation_under_concurrency_lets_exactly_one_spend_a_token(database_url: str) -> None:
    async with database(database_url) as engine:
        store = TokenStore(engine, Clock())
        await store.start_family("f1", "r1", ttl=600)
        outcomes = await asyncio.gather(*(store.rotate("f1", "r1", f"next-{i}", 600, 60) for i in range(8)))
        assert outcomes.count(Rotation.ok) == 1, outcomes
        assert set(outcomes) - {Rotation.ok} <= {Rotation.reused, Rotation.revoked}
        assert Rotation.reused in outcomes  # a second spender of r1 means r1 was stolen: the family ends
        winner = f"next-{outcomes.index(Rotation.ok)}"
        assert await store.rotate("f1", winner, "after", 600, 60) is Rotation.revoked
        assert await store.is_revoked("any-access-token", "f1")


async def test_store_forgets_revocations_and_families_when_their_tokens_expire(database_url: str) -> None:
    clock = Clock()
    async with database(database_url) as engine:
        store = TokenStore(engine, clock)
        assert await store.poll() == 0 and store.revoked.loaded
        await store.revoke("j1", 60, "f1", 120)
        await store.start_family("f2", "r1", ttl=600)
        assert await store.is_revoked("j1", None) and await store.is_revoked("other", "f1")
        assert await store.rotate("f2", "r1", "r2", 600, 60) is Rotation.ok
        assert await store.rotate("f2", "r2", "r3", 600, 60) is Rotation.ok
        assert await store.rotate("f2", "r2", "r4", 600, 60) is Rotation.reused
        assert await store.rotate("f2", "r3", "r5", 600, 60) is Rotation.revoked
        assert await store.rotate("never-issued", "x", "y", 600, 60) is Rotation.unknown
        clock.now += 62
        assert not await store.is_revoked("j1", None)  # the token itself has expired: nothing to remember
        assert await store.is_revoked("other", "f1")
        clock.now += 10_000
        assert await store.rotate("f2", "r3", "r6", 600, 60) is Rotation.unknown
        await store.prune()
        await store.poll()
        assert len(store.revoked) == 0
        async with engine.connect() as connection:  # the rows are gone from the database too
            for table in (schema.revocations, schema.families):
                assert (await connection.execute(sa.select(sa.func.count()).select_from(table))).scalar() == 0
