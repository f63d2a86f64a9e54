"""A WebSocket refused before the upgrade gets an HTTP answer in the JSON error shape (SPEC §3),
through the ASGI denial-response extension, from a real ``petstore`` uvicorn process: 403 for a
refused ``Origin`` (and the origin in the log, at WARNING), 401 for a bad bearer token, 429 with
``Retry-After`` over the per-IP connection ceiling. A server without the extension gets a close.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import Message
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from petstore.errors import error_response
from petstore.realtime.ws import deny_websocket
from tests.fakes import make_app
from tests.plugins.harness import SECRET
from tests.plugins.test_ratelimit import prepare_database
from tests.services import UvicornServer

pytestmark = pytest.mark.process  # a real uvicorn: the denial-response extension is the server's

ALLOWED = "http://127.0.0.1:8000"
BAD_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.not-a-signature"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    tmp = tmp_path_factory.mktemp("ws-refusals")
    env = {
        "PETSTORE_DATABASE_URL": prepare_database(tmp),
        "PETSTORE_PLUGINS": "plugins.auth,plugins.ratelimit",
        "PETSTORE_JWT_SECRET": SECRET,
        "PETSTORE_ALLOWED_ORIGINS": ALLOWED,
        "PETSTORE_RATELIMIT_WS_CONNECT_PER_IP": "2/hour",
        "PETSTORE_MEDIA_DIR": str(tmp / "media"),
        "PETSTORE_ENV": "test",
    }
    with UvicornServer(env=env, cwd=tmp) as running:
        yield running


def refusal(url: str, **options: Any) -> InvalidStatus:
    async def attempt() -> InvalidStatus:
        try:
            async with connect(url, open_timeout=10, **options):
                pass
        except InvalidStatus as refused:
            return refused
        raise AssertionError("the upgrade was accepted")

    return asyncio.run(attempt())


def error_body(refused: InvalidStatus, status: int, type: str) -> dict[str, Any]:
    response = refused.response
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(response.body)
    assert set(body) == {"code", "type", "message"} and body["code"] == status and body["type"] == type
    return body


def welcomed(url: str, **options: Any) -> bool:
    async def attempt() -> bool:
        async with connect(url, open_timeout=10, **options) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"

    return asyncio.run(attempt())


# One server for the three, in this order: refusals before the ceiling do not count against it.
def test_a_refused_origin_is_a_403_with_a_json_body_and_a_warning(server: UvicornServer) -> None:
    refused = refusal(f"{server.ws_url}/ws", origin="https://evil.example", additional_headers={"X-Note": "t0k3n"})
    body = error_body(refused, 403, "forbidden")
    assert "origin" in body["message"]
    server_log = server.log_path.read_text()
    assert "refused a WebSocket from origin 'https://evil.example'" in server_log
    assert "t0k3n" not in server_log


def test_a_bad_bearer_token_is_a_401_with_a_json_body(server: UvicornServer) -> None:
    refused = refusal(f"{server.ws_url}/ws", additional_headers={"Authorization": f"Bearer {BAD_TOKEN}"})
    error_body(refused, 401, "unauthorized")
    assert refused.response.headers["www-authenticate"].startswith("Bearer")
    assert BAD_TOKEN not in server.log_path.read_text()


def test_over_the_connection_ceiling_is_a_429_with_retry_after(server: UvicornServer) -> None:
    assert welcomed(f"{server.ws_url}/ws", origin=ALLOWED)
    assert welcomed(f"{server.ws_url}/ws")
    refused = refusal(f"{server.ws_url}/ws", origin=ALLOWED)
    body = error_body(refused, 429, "rate_limited")
    retry_after = int(refused.response.headers["retry-after"])
    assert retry_after > 0 and f"{retry_after} s" in body["message"]
    assert '"ws-connect-ip";q=2;w=3600' in refused.response.headers["ratelimit-policy"]


def test_origin_refusals_are_logged_at_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In process: the level and logger of that line (the real server's log above shows its text)."""
    caplog.set_level(logging.WARNING, logger="petstore.realtime.ws")
    app = make_app(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", media_dir=tmp_path / "m")
    with (
        TestClient(app) as client,
        pytest.raises(WebSocketDenialResponse) as refused,
        client.websocket_connect("/ws", headers={"Origin": "null"}),
    ):
        pass
    assert refused.value.status_code == 403
    [record] = [r for r in caplog.records if r.name == "petstore.realtime.ws"]
    assert record.levelno == logging.WARNING and "'null'" in record.getMessage()


async def test_without_the_denial_extension_the_refusal_is_a_close() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    response = error_response(429, "rate_limited", "slow down", {"Retry-After": "3"})
    await deny_websocket({"type": "websocket", "extensions": {}}, receive, send, response, 1013)
    assert sent == [{"type": "websocket.close", "code": 1013}]
    sent.clear()
    await deny_websocket(
        {"type": "websocket", "extensions": {"websocket.http.response": {}}}, receive, send, response, 1013
    )
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 429
    assert (b"retry-after", b"3") in sent[0]["headers"]
    assert sent[1] == {
        "type": "websocket.http.response.body",
        "body": b'{"code":429,"type":"rate_limited","message":"slow down"}',
    }
