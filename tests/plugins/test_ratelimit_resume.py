"""Resume passes (plugins.ratelimit.resume): a reconnect storm behind one address gets in, a flood does not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis.asyncio
from starlette.testclient import WebSocketDenialResponse

from plugins.ratelimit import RateLimitPlugin
from plugins.ratelimit import resume as resume_module
from plugins.ratelimit.resume import RESUME_AFTER, RESUME_WITHIN, RedactResume, ResumePasses
from tests.fakes import Clock, assert_error
from tests.plugins.harness import running_app

HERE, ELSEWHERE = "198.51.100.1", "203.0.113.9"
#: Passes carry Unix time: a clock that reads like one.
EPOCH_NOW = 1_800_000_000.0


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> str | None:
    """Where the budgets, the key and the spent passes live: this process, or Redis."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


async def test_a_pass_holds_once_for_its_address_within_its_window() -> None:
    clock = Clock(EPOCH_NOW)
    passes = ResumePasses(clock=clock)
    issued = passes.issue(HERE)
    assert not await passes.spend(issued, HERE), "not before the connection stayed RESUME_AFTER"
    clock.now += RESUME_AFTER
    assert not await passes.spend(issued, ELSEWHERE), "for the address it was issued to only"
    assert await passes.spend(issued, HERE)
    assert not await passes.spend(issued, HERE), "spent"
    late = passes.issue(HERE)
    clock.now += RESUME_WITHIN + 1
    assert not await passes.spend(late, HERE), "expired"


@pytest.mark.parametrize(
    "forged",
    ["", "garbage", "1800000000.abcdefghijkl.0123456789abcdefghijkl", "1.2.3", "9" * 40],
)
async def test_what_this_deployment_did_not_sign_does_not_hold(forged: str) -> None:
    clock = Clock(EPOCH_NOW)
    passes = ResumePasses(clock=clock)
    clock.now += RESUME_AFTER
    assert not await passes.spend(forged, HERE)


async def test_a_pass_altered_in_any_part_does_not_hold() -> None:
    clock = Clock(EPOCH_NOW)
    passes = ResumePasses(clock=clock)
    issued = passes.issue(HERE)
    clock.now += RESUME_AFTER
    issued_at, nonce, signature = issued.split(".")
    for altered in (
        f"{int(issued_at) - 1}.{nonce}.{signature}",  # made to look older
        f"{issued_at}.{nonce[::-1]}.{signature}",
        f"{issued_at}.{nonce}.{signature[::-1]}",
    ):
        assert not await passes.spend(altered, HERE)
    assert await passes.spend(issued, HERE)


@pytest.mark.redis
async def test_through_redis_every_instance_takes_every_pass_once(redis_url: str) -> None:
    clock = Clock(EPOCH_NOW)
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
    try:
        a, b = (ResumePasses(client, clock=clock) for client in clients)
        await a.start()
        await b.start()  # the key a made: one deployment, one key
        issued = a.issue(HERE)
        clock.now += RESUME_AFTER
        assert await b.spend(issued, HERE), "issued by an instance that died, spent on another"
        assert not await a.spend(issued, HERE), "spent, on every instance"
        before_restart = a.issue(HERE)
        restarted = ResumePasses(clients[0], clock=clock)  # a's process, started again
        await restarted.start()
        clock.now += RESUME_AFTER
        assert await restarted.spend(before_restart, HERE), "a pass outlives the restart it is for"
    finally:
        for client in clients:
            await client.aclose()


def test_the_pass_in_a_logged_url_is_redacted() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s" [accepted]', None, None)
    record.args = ("127.0.0.1:5000", "/ws?resume=1800000000.abcdefghijkl.0123456789abcdefghijkl&x=1")
    RedactResume().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "WebSocket /ws?resume=***&x=1" [accepted]'


def test_a_storm_of_reconnects_with_passes_gets_past_a_spent_connect_budget(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: str | None,
) -> None:
    """Every connection's pass lets its own reconnect in, however spent the address's budget;
    a connection without one, or with one already spent, is counted as before (429)."""
    monkeypatch.setenv("PETSTORE_RATELIMIT_WS_CONNECT", "3/hour")
    monkeypatch.setattr(resume_module, "RESUME_AFTER", 0)  # no waiting in a test: the clock is real here
    with running_app(tmp_path, redis_url=store) as app:
        plugin: RateLimitPlugin = app.plugin("ratelimit")
        passes = []
        for _ in range(3):
            with app.client.websocket_connect("/ws") as ws:
                welcome = ws.receive_json()
                assert welcome["type"] == "welcome"
                passes.append(welcome["resume"])
        with pytest.raises(WebSocketDenialResponse) as refused, app.client.websocket_connect("/ws"):
            pass
        assert_error(refused.value, 429, "rate_limited")
        for held in passes:  # the storm: each reconnects with its own pass
            with app.client.websocket_connect(f"/ws?resume={held}") as ws:
                assert ws.receive_json()["type"] == "welcome"
        with pytest.raises(WebSocketDenialResponse) as again, app.client.websocket_connect(f"/ws?resume={passes[0]}"):
            pass
        assert_error(again.value, 429, "rate_limited")
        assert app.recorder.count("ratelimit.resume", outcome="accepted") == 3
        assert app.recorder.count("ratelimit.resume", outcome="refused") == 1
        assert plugin.policies.ws_resume_ip.name == "ws-resume-ip"


def test_the_resume_budget_still_bounds_what_passes_can_do(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: str | None,
) -> None:
    monkeypatch.setenv("PETSTORE_RATELIMIT_WS_RESUME_PER_IP", "2/hour")
    monkeypatch.setattr(resume_module, "RESUME_AFTER", 0)
    with running_app(tmp_path, redis_url=store) as app:
        passes = []
        for _ in range(3):
            with app.client.websocket_connect("/ws") as ws:
                passes.append(ws.receive_json()["resume"])
        for held in passes[:2]:
            with app.client.websocket_connect(f"/ws?resume={held}") as ws:
                assert ws.receive_json()["type"] == "welcome"
        with pytest.raises(WebSocketDenialResponse) as refused, app.client.websocket_connect(f"/ws?resume={passes[2]}"):
            pass
        assert_error(refused.value, 429, "rate_limited")
        assert "ws-resume-ip" in refused.value.headers["ratelimit-policy"]
