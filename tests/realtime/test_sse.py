"""``GET /api/v3/events``: the same rooms as Server-Sent Events, with ``Last-Event-ID`` recovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.realtime.support import DEADLINE, AppServer, add_pet, serve, settings_for, until


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[AppServer]:
    async with serve(settings_for(f"sqlite+aiosqlite:///{tmp_path}/sse.db", media_dir=tmp_path / "media")) as server:
        yield server


class Stream:
    """Reads an event stream event by event, each read under a deadline."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next(self) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            fields: dict[str, Any] = {}
            async for line in self.lines:
                if not line:
                    if "data" in fields:
                        fields["data"] = json.loads(fields["data"])
                        return fields
                    fields = {}  # a retry: or comment-only block
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            raise AssertionError("the stream ended")

        return await asyncio.wait_for(read(), DEADLINE)


@contextlib.asynccontextmanager
async def stream(app: AppServer, query: str, headers: dict[str, str] | None = None) -> AsyncIterator[Stream]:
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=DEADLINE) as http,
        http.stream("GET", f"/api/v3/events?{query}", headers=headers or {}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


async def test_each_room_starts_with_subscribed_then_streams_events_with_ids(app: AppServer) -> None:
    async with stream(app, "room=inventory&room=pets") as events:
        subscribed = [await events.next(), await events.next()]
        assert [s["event"] for s in subscribed] == ["subscribed", "subscribed"]
        by_room = {s["data"]["room"]: s["data"] for s in subscribed}
        assert by_room["inventory"]["snapshot"] == {"available": 0, "pending": 0, "sold": 0}
        pet = await add_pet(app.url, "Streamed")
        received = {}
        for _ in range(2):
            event = await events.next()
            received[event["event"]] = event
        created = received["pet.created"]
        assert created["data"]["data"] == pet and created["data"]["type"] == "event"
        assert created["id"] == f"pets:{by_room['pets']['epoch']}:{by_room['pets']['offset'] + 1}"
        assert received["inventory.changed"]["data"]["data"]["available"] == 1


async def test_an_event_stream_is_never_gzipped(app: AppServer) -> None:
    """gzip would hold events back until a buffer fills (SPEC §2: gzip, never on SSE)."""
    async with stream(app, "room=pets", {"Accept-Encoding": "gzip"}) as events:
        assert "content-encoding" not in events.response.headers
        assert events.response.headers["x-request-id"]
        assert (await events.next())["event"] == "subscribed"
        pet = await add_pet(app.url, "Unzipped")
        assert (await events.next())["data"]["data"] == pet


async def test_last_event_id_recovers_what_was_missed(app: AppServer) -> None:
    async with stream(app, "room=pet:1") as events:
        await events.next()
        await add_pet(app.url, "First")
        last = await events.next()
    for name in ("Second", "Third"):
        async with httpx.AsyncClient(base_url=app.url) as http:
            await http.put(
                "/api/v3/pet", json={"id": 1, "name": name, "photoUrls": []}, headers={"X-Test-User": "s:2:staff"}
            )
    await until(lambda: app.count("event.published", event="pet.updated") == 2, "the updates to be published")
    async with stream(app, "room=pet:1", {"Last-Event-ID": last["id"]}) as events:
        subscribed = await events.next()
        assert subscribed["data"]["recovered"] is True and subscribed["data"]["snapshot"] is None
        missed = [await events.next(), await events.next()]
        assert [m["data"]["data"]["name"] for m in missed] == ["Second", "Third"]
    async with stream(app, "room=pet:1&since=pet:1:other-epoch:1") as events:
        subscribed = await events.next()
        assert subscribed["data"]["recovered"] is False and subscribed["data"]["snapshot"]["name"] == "Third"


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("", {}, 400),
        ("room=kennel", {}, 404),
        ("room=pets&room=pet:9999999999999999999", {}, 404),  # no pet can have it: past 64-bit ids
        ("room=orders", {}, 401),
        ("room=orders", {"X-Test-User": "c:3:customer"}, 403),
        ("room=pets", {"Last-Event-ID": "garbage"}, 400),
        ("room=pets&since=pets:e:notanumber", {}, 400),
    ],
)
async def test_bad_requests_get_a_json_error_before_any_stream(
    app: AppServer, query: str, headers: dict[str, str], status: int
) -> None:
    async with httpx.AsyncClient(base_url=app.url, timeout=DEADLINE) as http:
        response = await http.get(f"/api/v3/events?{query}", headers=headers)
    assert response.status_code == status
    assert response.json()["code"] == status


async def test_staff_may_stream_the_orders_room(app: AppServer) -> None:
    async with stream(app, "room=orders", {"X-Test-User": "s:2:staff"}) as events:
        assert (await events.next())["data"]["room"] == "orders"


async def test_a_stream_that_fails_half_open_gives_back_every_room(
    app: AppServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = app.state.realtime
    assert layer is not None

    async def broken_snapshot(room: str) -> Any:
        raise RuntimeError("the snapshot query failed")

    monkeypatch.setattr(layer, "snapshot", broken_snapshot)
    async with httpx.AsyncClient(base_url=app.url, timeout=DEADLINE) as http:
        response = await http.get("/api/v3/events?room=pets&room=inventory")  # pets has no snapshot; inventory fails
    assert response.status_code == 500 and response.json()["type"] == "internal_error"
    assert layer.hub.connections == set()
    assert layer.hub.subscribers("pets") == 0
    await until(lambda: not layer.background, "the broker to stop watching the rooms")
