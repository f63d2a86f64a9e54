"""plugins.ratelimit: budgets per client and route class, in process and in real Redis, shared by two
real server processes, and what happens when Redis goes away (open for traffic, a per-instance
fallback budget for login)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.responses import Response
from starlette.testclient import WebSocketDenialResponse
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from petstore import db
from petstore.api.users import create_user_row
from petstore.app import create_app
from petstore.errors import PluginError
from petstore.models import Role, UserBody
from petstore.rates import Rate, parse_rates
from plugins.ratelimit import RateLimitPlugin
from plugins.ratelimit.clients import client_ip
from plugins.ratelimit.gcra import Budget, MemoryLimiter, Policy
from tests.plugins.harness import (
    PASSWORD,
    SECRET,
    App,
    assert_error,
    bearer,
    create_tables,
    make_settings,
    running_app,
)
from tests.services import RedisServer, UvicornServer, wait_until

pytestmark = pytest.mark.redis

API = "/api/v3"
READ = f"{API}/pet/findByStatus"


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def limited(tmp_path: Path, store: str | None) -> Iterator[App]:
    """Default budget 3/hour, logins 2/hour per username and 4/hour per IP."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PETSTORE_RATELIMIT_LOGIN_PER_USER", "2/hour")
        env.setenv("PETSTORE_RATELIMIT_LOGIN_PER_IP", "4/hour")
        with running_app(tmp_path, redis_url=store, rate_limit="3/hour") as app:
            app.add_user("alice")
            app.add_user("bob")
            yield app


def exhaust(app: App, path: str = READ, n: int = 3, **kwargs: Any) -> None:
    for i in range(n):
        response = app.client.get(path, **kwargs)
        assert response.status_code == 200, (i, response.text)


def assert_limited(response: Any, policy: str) -> None:
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1
    assert f'"{policy}";r=0;' in response.headers["ratelimit"]
    assert f'"{policy}";q=' in response.headers["ratelimit-policy"]


# ------------------------------------------------------------------------------------ rates and GCRA


def test_parse_rates() -> None:
    assert parse_rates("100/minute") == (Rate(100, 60),)
    assert parse_rates("10 per 5 seconds") == (Rate(10, 5),)
    assert parse_rates("5/minute; 50/hour") == (Rate(5, 60), Rate(50, 3600))
    assert parse_rates("1/day")[0].per_hour() == 0 and parse_rates("100/minute")[0].per_hour() == 6000
    for bad in ("", "100", "0/minute", "5/fortnight", "-1/second", "5/0 seconds", "abc/minute"):
        with pytest.raises(ValueError):
            parse_rates(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_gcra_allows_a_burst_then_one_per_interval() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    checks = [Budget(Policy("p", (Rate(4, 60),)), 0, "c")]
    remaining = [limiter.check_now(checks).remaining for _ in range(4)]
    assert remaining == [3, 2, 1, 0]
    refused = limiter.check_now(checks)
    assert not refused.allowed and refused.retry_after == 15 and refused.reset == 60
    clock.now += 14
    assert not limiter.check_now(checks).allowed  # refusals do not consume budget, nor extend the wait
    clock.now += 1
    assert limiter.check_now(checks).allowed
    assert not limiter.check_now(checks).allowed
    clock.now += 60
    assert limiter.check_now(checks).remaining == 3  # a quiet minute refills the whole quota


def test_gcra_several_windows_and_keys_decide_together() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    policy = Policy("p", (Rate(2, 1), Rate(3, 3600)))
    checks = [Budget(policy, 0, "c"), Budget(policy, 1, "c")]
    assert limiter.check_now(checks).allowed and limiter.check_now(checks).allowed
    assert not limiter.check_now(checks).allowed  # the per-second window
    clock.now += 1
    last = limiter.check_now(checks)
    assert last.allowed and last.remaining == 0 and last.budget.index == 1
    clock.now += 1
    refused = limiter.check_now(checks)
    assert not refused.allowed and refused.budget.index == 1 and refused.retry_after > 1000  # the hourly one


def test_client_ip_believes_forwarded_for_only_from_trusted_proxies() -> None:
    import ipaddress

    scope: dict[str, Any] = {"client": ("10.0.0.5", 1), "headers": [(b"x-forwarded-for", b"1.2.3.4, 10.0.0.9")]}
    assert client_ip(scope, []) == "10.0.0.5"
    trusted = [ipaddress.ip_network("10.0.0.0/24")]
    assert client_ip(scope, trusted) == "1.2.3.4"  # 10.0.0.9 is one of ours: skipped
    scope["client"] = ("192.0.2.1", 1)
    assert client_ip(scope, trusted) == "192.0.2.1"  # an untrusted peer cannot pick its own address


def test_bad_rate_settings_stop_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginError, match="not a rate"):
        create_app(make_settings(tmp_path, rate_limit="lots"))
    monkeypatch.setenv("PETSTORE_RATELIMIT_ROUTES", "GET=5/minute")
    with pytest.raises(PluginError, match="route override"):
        create_app(make_settings(tmp_path))


# ------------------------------------------------------------------------------------ HTTP


def test_default_limit_holds_with_headers_on_every_response(limited: App) -> None:
    for expected in (2, 1, 0):
        response = limited.client.get(READ)
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == '"default";q=3;w=3600'
        assert response.headers["ratelimit"].startswith(f'"default";r={expected};t=')
    over = limited.client.get(READ)
    assert_limited(over, "default")
    assert 1 <= int(over.headers["retry-after"]) <= 1200
    assert limited.recorder.count("ratelimit.rejected", scope="http") == 1
    assert limited.client.get("/healthz").status_code == 200  # health checks are never limited
    assert limited.client.get("/static/dashboard.css").status_code == 200  # nor static files


def test_authenticated_clients_have_their_own_budget(limited: App) -> None:
    # Tokens minted by the auth plugin directly: the login budget is not what this test is about.
    authority = limited.plugin("auth").authority

    async def token(name: str) -> str:
        from petstore.db.queries import find_user

        async with limited.state.sessions() as session:
            user = await find_user(session, name)
        assert user is not None
        pair = await authority.issue(user)
        return str(pair.access_token)

    alice, bob = bearer(limited.run(token, "alice")), bearer(limited.run(token, "bob"))
    exhaust(limited, headers=alice)
    assert_limited(limited.client.get(READ, headers=alice), "default")
    exhaust(limited, headers=bob)  # same IP, another user: a budget of their own
    exhaust(limited)  # anonymous from that IP: the IP's budget, untouched by the users
    assert_limited(limited.client.get(READ), "default")


def test_forwarded_for_counts_only_behind_a_trusted_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_app(tmp_path, rate_limit="2/hour") as app:
        exhaust(app, n=2, headers={"X-Forwarded-For": "203.0.113.1"})
        # Spoofing the header from an untrusted peer buys nothing.
        assert_limited(app.client.get(READ, headers={"X-Forwarded-For": "203.0.113.2"}), "default")
    monkeypatch.setenv("PETSTORE_RATELIMIT_TRUSTED_PROXIES", "127.0.0.1/32")
    with running_app(tmp_path, rate_limit="2/hour") as app:
        exhaust(app, n=2, headers={"X-Forwarded-For": "203.0.113.1"})
        assert_limited(app.client.get(READ, headers={"X-Forwarded-For": "203.0.113.1"}), "default")
        exhaust(app, n=2, headers={"X-Forwarded-For": "203.0.113.2"})


def test_per_route_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_RATELIMIT_ROUTES", "GET /api/v3/store/*=1/hour, * /api/v3/pet/*/uploadImage=5/hour")
    with running_app(tmp_path, rate_limit="5/hour") as app:
        first = app.client.get(f"{API}/store/inventory")
        assert first.status_code == 200
        assert first.headers["ratelimit-policy"] == '"route0";q=1;w=3600'
        assert_limited(app.client.get(f"{API}/store/inventory"), "route0")
        exhaust(app, n=5)  # other routes: the default budget, untouched by the override


def test_login_is_limited_per_username(limited: App) -> None:
    for _ in range(2):
        assert_error(
            limited.client.post(f"{API}/auth/token", data={"username": "alice", "password": "guess"}),
            401,
            oauth="invalid_grant",
        )
    # The right password does not help once the username's budget is spent; the IP's budget is separate.
    blocked = limited.client.post(f"{API}/auth/token", data={"username": "alice", "password": PASSWORD})
    assert_limited(blocked, "login-user")
    assert_limited(
        limited.client.get(f"{API}/user/login", params={"username": "alice", "password": PASSWORD}), "login-user"
    )
    assert limited.recorder.count("ratelimit.rejected", scope="login") == 2
    assert limited.client.post(f"{API}/auth/token", json={"username": "bob", "password": PASSWORD}).status_code == 200


def test_login_is_limited_per_ip(limited: App) -> None:
    for name in ("u1", "u2", "u3", "u4"):
        assert_error(
            limited.client.post(f"{API}/auth/token", data={"username": name, "password": "x"}),
            401,
            oauth="invalid_grant",
        )
    assert_limited(limited.client.post(f"{API}/auth/token", data={"username": "bob", "password": PASSWORD}), "login-ip")
    exhaust(limited)  # ordinary requests from that IP have their own budget


# ------------------------------------------------------------------------------------ WebSocket


def ws_scope(client: str) -> WebSocket:
    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        return None

    scope = {"type": "websocket", "path": "/ws", "headers": [], "client": (client, 1234), "query_string": b""}
    return WebSocket(scope, receive, send)


def ws_refusal(answer: object) -> int | None:
    """The status of a ``ws_connect`` refusal (an HTTP answer to the upgrade), None for none."""
    assert answer is None or isinstance(answer, Response), answer
    return None if answer is None else answer.status_code


def test_ws_connection_attempts_per_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str | None) -> None:
    monkeypatch.setenv("PETSTORE_RATELIMIT_WS_CONNECT", "2/hour")
    with running_app(tmp_path, redis_url=store) as app:
        plugin: RateLimitPlugin = app.plugin("ratelimit")
        answers = [app.run(plugin.ws_connect, ws_scope("198.51.100.1")) for _ in range(3)]
        assert answers[:2] == [None, None] and ws_refusal(answers[2]) == 429
        assert app.run(plugin.ws_connect, ws_scope("198.51.100.2")) is None
        assert app.recorder.count("ratelimit.rejected", scope="ws") == 1
        # Through the real endpoint too: the third upgrade is answered 429 instead of being upgraded.
        for _ in range(2):
            with app.client.websocket_connect("/ws") as ws:
                assert ws.receive_json()["type"] == "welcome"
        with pytest.raises(WebSocketDenialResponse) as refused, app.client.websocket_connect("/ws"):
            pass
        assert_error(refused.value, 429, "rate_limited")
        assert int(refused.value.headers["retry-after"]) > 0
        assert "ratelimit" in refused.value.headers


def test_ws_messages_per_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_RATELIMIT_WS_MESSAGES", "3/hour")
    with running_app(tmp_path) as app:
        plugin: RateLimitPlugin = app.plugin("ratelimit")
        answers = [app.run(plugin.ws_message, "conn-1", None, "ping") for _ in range(4)]
        assert answers == [None, None, None, "rate_limited"]
        assert app.run(plugin.ws_message, "conn-2", None, "ping") is None
        assert app.recorder.count("ratelimit.rejected", scope="ws") == 1
        with app.client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "welcome"
            replies = []
            for i in range(4):
                ws.send_json({"type": "ping", "id": i})
                replies.append(ws.receive_json())
            assert [r["type"] for r in replies[:3]] == ["pong"] * 3
            assert replies[3]["type"] == "error" and replies[3]["code"] == "rate_limited" and replies[3]["id"] == 3
            # Told to slow down, the connection is then closed with 1013 (SPEC §3: too many messages).
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1013


# ------------------------------------------------------------------------------------ shared through Redis


def test_two_apps_on_one_redis_share_one_budget(tmp_path: Path, redis_url: str) -> None:
    with (
        running_app(tmp_path, redis_url=redis_url, rate_limit="4/hour") as one,
        running_app(tmp_path, redis_url=redis_url, rate_limit="4/hour") as two,
    ):
        for app in (one, two, one, two):
            assert app.client.get(READ).status_code == 200
        assert_limited(one.client.get(READ), "default")
        assert_limited(two.client.get(READ), "default")


def prepare_database(tmp_path: Path) -> str:
    settings = make_settings(tmp_path)

    async def prepare() -> None:
        engine = db.create_engine(settings)
        await create_tables(engine)
        async with db.create_sessionmaker(engine)() as session:
            for name in ("alice", "bob"):
                await create_user_row(session, UserBody(username=name, password=PASSWORD), Role.customer)
            await session.commit()
        await engine.dispose()

    asyncio.run(prepare())
    return settings.database_url


def server_env(tmp_path: Path, database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "PETSTORE_DATABASE_URL": database_url,
        "PETSTORE_REDIS_URL": redis_url,
        "PETSTORE_PLUGINS": "plugins.auth,plugins.ratelimit",
        "PETSTORE_RATE_LIMIT": "6/hour",  # one request back every 10 min: nothing refills mid-test
        "PETSTORE_JWT_SECRET": SECRET,
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
        "PETSTORE_ENV": "test",
    }


def test_two_server_processes_share_one_budget_and_one_revocation_list(tmp_path: Path, redis_url: str) -> None:
    env = server_env(tmp_path, prepare_database(tmp_path), redis_url)
    with UvicornServer(env=env) as a, UvicornServer(env=env) as b, httpx.Client(timeout=10) as http:
        statuses = [http.get(f"{server.url}{READ}").status_code for server in (a, b, a, b, a, b)]
        assert statuses == [200] * 6
        for server in (a, b):
            over = http.get(f"{server.url}{READ}")
            assert over.status_code == 429 and over.json()["type"] == "rate_limited"
            assert over.headers["ratelimit-policy"] == '"default";q=6;w=3600'
        # One revocation list: a token logged out on B is refused by A (as soon as pub/sub brings it).
        tokens = http.post(f"{a.url}{API}/auth/token", data={"username": "alice", "password": PASSWORD}).json()
        assert http.post(f"{b.url}{API}/auth/logout", headers=bearer(tokens["access_token"])).status_code == 200

        def refused_on_a() -> httpx.Response | None:
            response = http.get(f"{a.url}{API}/store/orders", headers=bearer(tokens["access_token"]))
            return response if response.status_code == 401 else None

        refused = wait_until(refused_on_a, 5, "the revocation to reach the other server")
        assert refused.headers["www-authenticate"].startswith("Bearer")
        # A burst of concurrent requests from one user, spread over both servers: exactly the budget passes.
        bob = bearer(
            http.post(f"{b.url}{API}/auth/token", data={"username": "bob", "password": PASSWORD}).json()["access_token"]
        )

        def get(server: UvicornServer) -> int:
            return httpx.get(f"{server.url}{READ}", headers=bob, timeout=10).status_code

        with ThreadPoolExecutor(max_workers=12) as pool:
            burst = list(pool.map(get, [a, b] * 6))
        assert sorted(burst) == [200] * 6 + [429] * 6


# ------------------------------------------------------------------------------------ Redis goes away


def test_redis_down_fails_open_for_traffic_and_holds_login_to_a_fallback_budget(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_USER", "1/hour")
        with running_app(tmp_path, redis_url=redis_url, rate_limit="3/hour") as app:
            app.add_user("alice")
            assert app.client.get(READ).status_code == 200
            redis_server.stop()
            try:
                with caplog.at_level(logging.WARNING, logger="plugins.ratelimit"):
                    for _ in range(5):  # more than the budget: nobody is counting, so nobody is refused
                        response = app.client.get(READ)
                        assert response.status_code == 200
                        assert "ratelimit" not in response.headers
                    # Logins go on, counted by this instance alone (its own, stricter budget).
                    form = {"username": "alice", "password": PASSWORD}
                    login = app.client.post(f"{API}/auth/token", data=form)
                    assert login.status_code == 200, login.text
                    assert login.headers["ratelimit-policy"].startswith('"login-user-fallback";q=1;w=3600')
                    assert_limited(app.client.post(f"{API}/auth/token", data=form), "login-user-fallback")
                    wrong = app.client.get(f"{API}/user/login", params={"username": "a", "password": "b"})
                    assert_error(wrong, 400)  # its own budget: refused by the endpoint, not the limiter
                    plugin: RateLimitPlugin = app.plugin("ratelimit")
                    assert app.run(plugin.ws_connect, ws_scope("198.51.100.7")) is None  # connections: open
                assert app.recorder.count("ratelimit.backend_error") == 9
                warnings = [r for r in caplog.records if r.name == "plugins.ratelimit"]
                assert len(warnings) == 1  # logged once per interval, not once per request
            finally:
                redis_server.start()
            # Redis is back (empty): the limits hold again, with no restart of the app.
            wait_until(lambda: "ratelimit" in app.client.get(READ).headers, 10, "the limiter to reach Redis again")
            exhaust(app, n=2)
            assert_limited(app.client.get(READ), "default")
            assert app.client.post(f"{API}/auth/token", data=form).status_code == 200


def test_rate_limiting_works_without_the_auth_plugin(tmp_path: Path) -> None:
    with running_app(tmp_path, rate_limit="2/hour", plugins=("plugins.ratelimit",)) as app:
        # Without auth, writes are 401 from the core; login routes do not exist, and with no plugin
        # to name it a login (the login_routes hook), a request to one is ordinary traffic.
        assert app.client.post(f"{API}/auth/token", data={"username": "a", "password": "b"}).status_code in (404, 405)
        exhaust(app, n=1)
        assert_limited(app.client.get(READ), "default")


def test_openapi_document_lists_429_on_every_operation(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        document = app.client.get(f"{API}/openapi.json").json()
    validate(document)
    operations = [op for item in document["paths"].values() for op in item.values() if isinstance(op, dict)]
    assert len(operations) >= 19
    assert all("429" in op["responses"] for op in operations)
    find = document["paths"]["/pet/findByStatus"]["get"]
    assert find["responses"]["429"] == {"$ref": "#/components/responses/TooManyRequests"}
    too_many = document["components"]["responses"]["TooManyRequests"]
    assert set(too_many["headers"]) == {"Retry-After", "RateLimit", "RateLimit-Policy"}


def test_redis_budgets_expire_when_full_again(tmp_path: Path, redis_server: RedisServer, redis_url: str) -> None:
    with running_app(tmp_path, redis_url=redis_url, rate_limit="3/hour") as app:
        assert app.client.get(READ).status_code == 200
        pttl = int(redis_server.command("PTTL", "petstore:rl:{ip:127.0.0.1}:default:0") or b"0")
        assert 0 < pttl <= 20 * 60 * 1000 + 1000  # one request of 3/hour is forgotten after 20 minutes
