"""create_app: health, readiness, error shape, no globals."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from petstore.app import create_app
from petstore.config import Settings
from petstore.db import create_all, create_engine
from petstore.plugin import PluginBase


def make_settings(tmp_path: Path, name: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/{name}.db",
        "plugins": (),
        "media_dir": tmp_path / f"media-{name}",
        **overrides,
    }
    s = Settings(**values)  # type: ignore[arg-type]

    async def init() -> None:
        engine = create_engine(s)
        await create_all(engine)
        await engine.dispose()

    asyncio.run(init())
    return s


def test_healthz_and_readyz(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, "a"))) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_origin_says_whether_a_page_of_that_origin_may_open_the_websocket(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "o", allowed_origins=("http://127.0.0.1:9000",))
    with TestClient(create_app(settings)) as client:
        allowed = client.get("/origin", params={"origin": "http://127.0.0.1:9000"})
        assert allowed.json() == {"origin": "http://127.0.0.1:9000", "allowed": True}
        assert client.get("/origin", params={"origin": "http://evil.example"}).json()["allowed"] is False
        by_header = client.get("/origin", headers={"Origin": "http://127.0.0.1:9000"})
        assert by_header.json()["allowed"] is True
        missing = client.get("/origin")
        assert missing.status_code == 400 and missing.json()["type"] == "bad_request"


def test_readyz_names_the_failing_part(tmp_path: Path) -> None:
    s = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/missing-dir/x/y.db", plugins=(), media_dir=tmp_path)
    with TestClient(create_app(s)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["type"] == "not_ready"
        assert "database" in response.json()["message"]


def test_two_apps_with_two_settings_live_in_one_process(tmp_path: Path) -> None:
    first, second = make_settings(tmp_path, "one"), make_settings(tmp_path, "two")
    with TestClient(create_app(first)) as a, TestClient(create_app(second)) as b:
        assert a.get("/api/v3/store/inventory").json() == {"available": 0, "pending": 0, "sold": 0}
        assert b.get("/api/v3/store/inventory").json() == {"available": 0, "pending": 0, "sold": 0}
    assert (tmp_path / "one.db").exists() and (tmp_path / "two.db").exists()


def test_unknown_paths_and_methods_answer_the_json_error_shape(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, "e"))) as client:
        missing = client.get("/api/v3/nothing-here")
        assert missing.status_code == 404
        assert missing.json() == {"code": 404, "type": "not_found", "message": "Not Found"}
        wrong = client.patch("/api/v3/pet/findByStatus")
        assert wrong.status_code == 405
        assert wrong.json()["type"] == "method_not_allowed"
        # The path also matches /pet/{petId}, whose operations answer it (with a 400 for the id).
        assert wrong.headers["allow"] == "DELETE, GET, HEAD, POST"
        # /pet is two operations (addPet, updatePet): the 405 names both methods.
        assert client.patch("/api/v3/pet").headers["allow"] == "POST, PUT"
        assert client.put("/api/v3/pet/1").headers["allow"] == "DELETE, GET, HEAD, POST"


class Exploding(PluginBase):
    name = "exploding"

    def routes(self) -> list[Route]:
        async def boom(request: Request) -> Response:
            raise RuntimeError("secret internals /etc/passwd")

        return [Route("/boom", boom)]


def test_an_unexpected_error_is_a_json_500_without_internals(tmp_path: Path) -> None:
    import sys
    import types

    module = types.ModuleType("exploding_plugin_for_test")
    module.plugin = lambda settings: Exploding()  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        app = create_app(make_settings(tmp_path, "x", plugins=(module.__name__,)))
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/boom")
        assert response.status_code == 500
        assert response.json() == {"code": 500, "type": "internal_error", "message": "internal server error"}
        assert "secret" not in response.text and "Traceback" not in response.text
    finally:
        del sys.modules[module.__name__]


def test_a_client_that_hangs_up_mid_body_is_not_logged_as_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """wrk and impatient clients stop mid-POST; that is no server error and leaves no traceback."""
    app = create_app(make_settings(tmp_path, "d", plugins=("tests.fakes",)))
    sent: list[dict[str, object]] = []
    body_parts = [
        {"type": "http.request", "body": b'{"name": "half', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, object]:
        return body_parts.pop(0) if body_parts else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v3/pet",
        "raw_path": b"/api/v3/pet",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"x-test-user", b"sam:1:staff")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    async def hang_up() -> None:
        async with app.router.lifespan_context(app) as state:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

    with caplog.at_level(logging.DEBUG, logger="petstore"):
        asyncio.run(hang_up())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("client disconnected" in r.getMessage() for r in caplog.records)


def test_a_database_that_cannot_answer_is_a_503_that_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write lock held past the timeout (or a database restarting) is no server bug: 503 with
    Retry-After and the JSON error shape, one log line, no traceback, and nothing written."""
    settings = make_settings(tmp_path, "locked", plugins=("tests.fakes",))
    settings = settings.model_copy(update={"database_url": settings.database_url + "?timeout=0.2"})
    holder = sqlite3.connect(tmp_path / "locked.db")
    staff = {"X-Test-User": "stan:2:staff"}
    with TestClient(create_app(settings)) as client, caplog.at_level(logging.WARNING):
        assert client.get("/readyz").json()["checks"]["database"] == "ok"
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            response = client.post("/api/v3/pet", json={"name": "Rex", "photoUrls": []}, headers=staff)
            # Readiness says so, without leaving rotation: reads go on, and every instance shares the lock.
            ready = client.get("/readyz")
            reads = client.get("/api/v3/pet/findByStatus", params={"status": "available"})
        finally:
            holder.rollback()
        assert (ready.status_code, ready.json()["checks"]["database"]) == (200, "locked")
        assert (reads.status_code, reads.json()) == (200, [])
        assert client.get("/readyz").json()["checks"]["database"] == "ok"
        assert response.status_code == 503
        assert response.json() == {
            "code": 503,
            "type": "service_unavailable",
            "message": "the database is unavailable right now; retry shortly",
        }
        assert response.headers["Retry-After"] == "1"
        assert client.get("/api/v3/pet/findByStatus", params={"status": "available"}).json() == []
        assert client.post("/api/v3/pet", json={"name": "Rex", "photoUrls": []}, headers=staff).status_code == 200
    holder.close()
    assert not [r for r in caplog.records if r.exc_info], "no traceback for an outage"
    assert any("database unavailable on POST /api/v3/pet" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("before", "after"), [(700, 10_000), (50_000, 50_000)])
def test_a_started_app_raises_the_collectors_young_threshold_and_never_lowers_one(
    tmp_path: Path, before: int, after: int
) -> None:
    """A reconnect storm spent a third of the server's CPU in full collections at Python's default
    700 (docs/benchmarks.md): the app, once started, collects its young generation every 10,000
    allocations, leaving a higher threshold someone chose as it is, and the other two alone."""
    saved = gc.get_threshold()
    try:
        gc.set_threshold(before, 11, 12)
        with TestClient(create_app(make_settings(tmp_path, "gc"))) as client:
            assert client.get("/healthz").status_code == 200
            assert gc.get_threshold() == (after, 11, 12)
    finally:
        gc.set_threshold(*saved)
