"""plugins.ratelimit under attack, against real uvicorn servers and a real Redis: limits that hold
through a burst larger than any connection pool, a login budget that no body shape dodges,
X-Forwarded-For believed only from the proxies the one setting names, and a per-IP ceiling on
WebSocket connections however many accounts share the address."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import Response
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from petstore.access import Principal
from petstore.models import Role
from petstore.redis_client import PoolExhausted
from plugins.ratelimit import RateLimitPlugin
from tests.plugins.harness import PASSWORD, App, assert_error, bearer, running_app
from tests.plugins.test_ratelimit import API, READ, assert_limited, prepare_database, server_env, ws_scope
from tests.services import UvicornServer

pytestmark = pytest.mark.redis

#: More requests at once than redis-py's default pool of 100 connections, and than the shared pool.
BURST = 300


async def burst(
    url: str, n: int = BURST, headers: dict[str, str] | None = None, forms: list[dict[str, str]] | None = None
) -> Counter[int]:
    """``n`` requests at once, each on a connection of its own (a GET, or a POST of each form):
    how many got each status."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as http:
        if forms is None:
            responses = await asyncio.gather(*(http.get(url) for _ in range(n)))
        else:
            responses = await asyncio.gather(*(http.post(url, data=form) for form in forms))
    return Counter(response.status_code for response in responses)


async def ws_statuses(url: str, n: int) -> Counter[int | str]:
    """Open ``n`` WebSockets at once: what each got (``welcome`` or the refusal's HTTP status)."""

    async def one() -> int | str:
        try:
            async with connect(url, open_timeout=60) as ws:
                return "welcome" if '"welcome"' in str(await asyncio.wait_for(ws.recv(), 60)) else "other"
        except InvalidStatus as refused:
            return refused.response.status_code

    return Counter(await asyncio.gather(*(one() for _ in range(n))))


# ------------------------------------------------------------------------- item 1: pool exhaustion


def test_a_burst_larger_than_the_redis_pool_gets_exactly_the_budget(tmp_path: Path, redis_url: str) -> None:
    """300 requests at once against 40/hour: 40 pass, 260 are 429; none slips through as "Redis
    down", none is a 503. Anonymous, then as a logged-in user (a budget of its own), then logins."""
    env = server_env(tmp_path, prepare_database(tmp_path), redis_url) | {
        "PETSTORE_RATE_LIMIT": "40/hour",
        "PETSTORE_RATELIMIT_LOGIN_PER_IP": "10/hour",
    }
    with UvicornServer(env=env, cwd=tmp_path) as server:
        form = {"username": "alice", "password": PASSWORD}
        token = httpx.post(f"{server.url}{API}/auth/token", data=form, timeout=10).json()["access_token"]
        anonymous = asyncio.run(burst(f"{server.url}{READ}"))
        assert anonymous == {200: 40, 429: BURST - 40}, server.logtail(20)
        logged_in = asyncio.run(burst(f"{server.url}{READ}", headers=bearer(token)))
        assert logged_in == {200: 40, 429: BURST - 40}, server.logtail(20)
        # One login spent above: 9 left for this IP, each a wrong guess for a name of its own.
        guesses = [{"username": f"user{i}", "password": "guess"} for i in range(BURST)]
        logins = asyncio.run(burst(f"{server.url}{API}/auth/token", forms=guesses))
        assert logins == {401: 9, 429: BURST - 9}, server.logtail(20)
        assert "rate limit backend unreachable" not in server.logtail(10_000)


def test_a_burst_of_websocket_connects_gets_exactly_the_connect_budget(tmp_path: Path, redis_url: str) -> None:
    env = server_env(tmp_path, prepare_database(tmp_path), redis_url) | {
        "PETSTORE_RATELIMIT_WS_CONNECT": "30/hour",
        "PETSTORE_RATELIMIT_WS_CONNECT_PER_IP": "1000/hour",
    }
    with UvicornServer(env=env, cwd=tmp_path) as server:
        statuses = asyncio.run(ws_statuses(f"{server.ws_url}/ws", 200))
        assert statuses == {"welcome": 30, 429: 170}, server.logtail()  # SPEC §3: 429, not an empty 403


def test_an_exhausted_pool_is_503_never_an_unlimited_request(tmp_path: Path, redis_url: str) -> None:
    """Every connection of the shared pool busy past the wait: the server says it is busy (503 with
    Retry-After, on a WebSocket upgrade too), and neither lets the request through nor calls Redis down."""
    with running_app(tmp_path, redis_url=redis_url, rate_limit="3/hour") as app:
        redis = app.state.redis
        assert redis is not None
        pool = redis.connection_pool
        pool.timeout = 0.2  # type: ignore[attr-defined]
        held = []
        with pytest.raises(PoolExhausted):  # the auth plugin's subscriber may hold one of them
            while len(held) <= pool.max_connections:
                held.append(app.run(pool.get_connection))
        busy = app.client.get(READ)
        assert_error(busy, 503, "service_unavailable")
        assert busy.headers["retry-after"] == "1"
        plugin: RateLimitPlugin = app.plugin("ratelimit")
        busy_ws = app.run(plugin.ws_connect, ws_scope("198.51.100.1"))
        assert isinstance(busy_ws, Response) and busy_ws.status_code == 503
        assert busy_ws.headers["retry-after"] == "1"
        for connection in held:
            app.run(pool.release, connection)
        assert [app.client.get(READ).status_code for _ in range(4)] == [200, 200, 200, 429]
        assert app.recorder.count("ratelimit.backend_error") == 0


# ----------------------------------------------------------------- item 2: the login body's shape


@pytest.fixture(params=["memory", "redis"])
def guarded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    """Logins 2/hour per username, 20/hour per IP: the username's budget is the one that speaks."""
    store = None if request.param == "memory" else request.getfixturevalue("redis_url")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PETSTORE_RATELIMIT_LOGIN_PER_USER", "2/hour")
        env.setenv("PETSTORE_RATELIMIT_LOGIN_PER_IP", "20/hour")
        with running_app(tmp_path, redis_url=store) as app:
            app.add_user("alice")
            yield app


def padded_form(password: str) -> tuple[bytes, dict[str, str]]:
    # Past the 64 KiB the limiter used to read, well within the endpoint's 1 MiB.
    body = f"username=alice&password={password}&pad={'x' * 100_000}".encode()
    return body, {"Content-Type": "application/x-www-form-urlencoded"}


def vendor_json(password: str) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"username": "alice", "password": password}).encode(), {"Content-Type": "application/x+json"}


def untyped_json(password: str) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"username": "alice", "password": password}).encode(), {}


def padded_json(password: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"username": "alice", "password": password, "pad": "x" * 100_000}).encode()
    return body, {"Content-Type": "application/json"}


@pytest.mark.parametrize("shape", [padded_form, vendor_json, untyped_json, padded_json])
def test_every_body_the_login_endpoint_reads_counts_against_the_username(guarded: App, shape: Any) -> None:
    for _ in range(2):
        body, headers = shape("wrong guess")
        guess = guarded.client.post(f"{API}/auth/token", content=body, headers=headers)
        assert_error(guess, 401, oauth="invalid_grant")  # the endpoint read it and checked the password
        assert guess.headers["ratelimit"].startswith('"login-user";')
    body, headers = shape(PASSWORD)
    assert_limited(guarded.client.post(f"{API}/auth/token", content=body, headers=headers), "login-user")


def test_a_login_body_past_the_body_limit_is_refused_before_any_password_is_checked(guarded: App) -> None:
    body = f"username=alice&password=guess&pad={'x' * (1024 * 1024)}".encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(3):
        assert_error(
            guarded.client.post(f"{API}/auth/token", content=body, headers=headers), 413, oauth="invalid_request"
        )
    assert guarded.recorder.count("auth.failure", reason="bad_credentials") == 0


# -------------------------------------------------------- item 14: WebSocket connections per IP


def signed_in(address: str, user_id: int) -> WebSocket:
    websocket = ws_scope(address)
    websocket.scope["user"] = Principal.for_role(user_id, f"user{user_id}", Role.customer)
    return websocket


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_many_accounts_from_one_ip_meet_the_per_ip_connection_ceiling(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    monkeypatch.setenv("PETSTORE_RATELIMIT_WS_CONNECT", "3/hour")
    monkeypatch.setenv("PETSTORE_RATELIMIT_WS_CONNECT_PER_IP", "8/hour")
    redis_url = None if store == "memory" else request.getfixturevalue("redis_url")
    with running_app(tmp_path, redis_url=redis_url) as app:
        plugin: RateLimitPlugin = app.plugin("ratelimit")
        # Four accounts, three connections each, one address: the address's 8, not the accounts' 12.
        answers = [app.run(plugin.ws_connect, signed_in("198.51.100.1", user)) for user in range(4) for _ in range(3)]
        assert [None if a is None else a.status_code for a in answers] == [None] * 8 + [429] * 4
        assert app.run(plugin.ws_connect, signed_in("198.51.100.2", 9)) is None  # another address: its own
        assert app.run(plugin.ws_connect, signed_in("198.51.100.2", 2)) is None  # user 2 had only 2 of its 3
        spent = app.run(plugin.ws_connect, signed_in("198.51.100.2", 0))  # user 0 spent its own 3
        assert spent is not None and spent.status_code == 429
        assert app.recorder.count("ratelimit.rejected", scope="ws") == 5


def test_the_per_ip_connection_ceiling_holds_on_the_real_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PETSTORE_RATELIMIT_WS_CONNECT_PER_IP", "4/hour")
    with running_app(tmp_path) as app:
        tokens = []
        for name in ("ann", "ben", "cat"):
            app.add_user(name)
            tokens.append(app.login(name)["access_token"])
        welcomed = 0
        for token in tokens * 2:
            try:
                with app.client.websocket_connect("/ws", headers=bearer(token)) as ws:
                    welcomed += ws.receive_json()["type"] == "welcome"
            except WebSocketDenialResponse as refused:
                assert_error(refused, 429, "rate_limited")
                assert int(refused.headers["retry-after"]) > 0
        assert welcomed == 4


# -------------------------------------------- item 13: one setting of trusted proxies, for uvicorn too

PETSTORE = Path(sys.executable).with_name("petstore")  # the console script of the venv running the tests


def petstore_serve(tmp_path: Path, **env: str) -> UvicornServer:
    """``petstore serve`` itself, as users run it (uvicorn's proxy settings are its own)."""
    base = server_env(tmp_path, prepare_database(tmp_path), "")
    del base["PETSTORE_REDIS_URL"]
    return UvicornServer(
        command=[str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}"], env=base | env, cwd=tmp_path
    )


def test_rotating_forwarded_for_from_an_untrusted_loopback_buys_no_login_budget(tmp_path: Path) -> None:
    """20 logins an hour per IP (the default's 20 a minute, without the refill a slow machine would
    see): 25 guesses, each naming an address and a user of its own."""
    with (
        petstore_serve(tmp_path, PETSTORE_RATELIMIT_LOGIN_PER_IP="20/hour") as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        statuses = [
            http.post(
                f"{API}/auth/token",
                data={"username": f"user{i}", "password": "guess"},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
            ).status_code
            for i in range(25)
        ]
        assert statuses == [401] * 20 + [429] * 5


def test_a_trusted_loopback_proxy_is_believed_once_per_forwarded_client(tmp_path: Path) -> None:
    with (
        petstore_serve(
            tmp_path, PETSTORE_RATELIMIT_TRUSTED_PROXIES="127.0.0.1/32", PETSTORE_RATE_LIMIT="3/hour"
        ) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):

        def status(forwarded: str) -> int:
            return http.get(READ, headers={"X-Forwarded-For": forwarded}).status_code

        assert [status("203.0.113.1") for _ in range(4)] == [200, 200, 200, 429]
        assert status("203.0.113.2") == 200  # another client behind the proxy: a budget of its own
        # The client prepends what it likes; the hop our proxy appended is the one that counts.
        assert status("198.51.100.7, 203.0.113.1") == 429
        assert [status("203.0.113.2") for _ in range(3)] == [200, 200, 429]
