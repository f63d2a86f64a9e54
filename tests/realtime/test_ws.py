"""``/ws`` message by message (SPEC §3): an in-process uvicorn, the in-process broker, SQLite."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import col
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from petstore.config import Settings
from petstore.models import OutboxEvent
from petstore.realtime import events
from petstore.server import uvicorn_ws
from tests.realtime.support import (
    AppServer,
    add_pet,
    serve,
    set_status,
    settings_for,
    until,
    ws_client,
)

ORIGIN = "http://127.0.0.1:8000"
STAFF = "stan:2:staff"
CUSTOMER = "cora:3:customer"
ADMIN = "ada:1:admin"

MakeSettings = Callable[..., Settings]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_settings(request: pytest.FixtureRequest, tmp_path: Path) -> MakeSettings:
    """Settings on a fresh SQLite file, with the in-process broker or with real Redis."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def make(**fields: Any) -> Settings:
        database_url = f"sqlite+aiosqlite:///{tmp_path}/ws.db"
        return settings_for(database_url, media_dir=tmp_path / "media", redis_url=redis_url, **fields)

    return make


@pytest.fixture(params=[uvicorn_ws.PROTOCOL, "websockets-sansio"], ids=["direct", "asgi"])
async def app(request: pytest.FixtureRequest, make_settings: MakeSettings) -> AsyncIterator[AppServer]:
    """The app under the protocol ``petstore serve`` runs (events written directly) and under
    plain uvicorn (every send through ASGI): the protocol holds on both paths."""
    async with serve(make_settings(), ws=request.param) as server:
        yield server


# ------------------------------------------------------------------------------- the happy path


async def test_welcome_names_the_connection_the_user_and_the_heartbeat(app: AppServer) -> None:
    async with connect(app.ws_url + "/ws") as ws:
        welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome"
    assert welcome["user"] is None
    assert welcome["heartbeat"] == app.state.settings.ws_heartbeat_seconds
    assert isinstance(welcome["connection"], str) and welcome["connection"]
    async with connect(app.ws_url + "/ws", additional_headers={"X-Test-User": STAFF}) as ws:
        assert json.loads(await ws.recv())["user"] == "stan"


def senders() -> list[asyncio.Task[Any]]:
    """The sessions' sender tasks running in this loop (the in-process server's)."""
    return [task for task in asyncio.all_tasks() if task.get_coro().__qualname__ == "Session.send_loop"]  # type: ignore[union-attr]


async def test_an_idle_connection_holds_no_sender_task_and_one_runs_while_there_is_something_to_send(
    app: AppServer,
) -> None:
    """What an idle socket costs (RSS per connection, docs/benchmarks.md): the sender runs while
    something is queued and ends once it is out, so idle sockets hold their reader only; every
    answer and event after a quiet spell still arrives, in order."""
    async with ws_client(app.ws_url) as a, ws_client(app.ws_url) as b:
        for client in (a, b):
            await client.request({"type": "subscribe", "room": "inventory", "id": 1}, "subscribed")
        await until(lambda: not senders(), "the senders to end once the answers are out")
        assert (await a.request({"type": "ping", "id": 2}, "pong"))["id"] == 2
        await add_pet(app.url)
        for client in (a, b):
            assert (await client.expect("event"))["data"] == {"available": 1, "pending": 0, "sold": 0}
        await until(lambda: not senders(), "the senders to end again")
        assert (await b.request({"type": "ping", "id": 3}, "pong"))["id"] == 3


async def test_subscribe_inventory_gives_counts_then_every_change_as_an_event(app: AppServer) -> None:
    async with ws_client(app.ws_url) as client:
        subscribed = await client.request({"type": "subscribe", "room": "inventory", "id": 1}, "subscribed")
        assert subscribed["id"] == 1 and subscribed["room"] == "inventory"
        assert subscribed["snapshot"] == {"available": 0, "pending": 0, "sold": 0}
        assert subscribed["recovered"] is False
        start = subscribed["offset"]
        pet = await add_pet(app.url)
        event = await client.expect("event")
        assert event["event"] == "inventory.changed"
        assert event["data"] == {"available": 1, "pending": 0, "sold": 0}
        assert event["offset"] == start + 1 and event["epoch"] == subscribed["epoch"]
        assert event["ts"].endswith("Z") and "." in event["ts"]
        await set_status(app.url, pet["id"], "sold")
        event = await client.expect("event")
        assert event["data"] == {"available": 0, "pending": 0, "sold": 1}
        assert event["offset"] == start + 2


async def test_subscribers_at_one_position_share_one_snapshot_read(
    app: AppServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect storm joins ``inventory`` at one position: one count query serves them all,
    and the next change (a new position) is counted again, so no subscriber gets an old snapshot."""
    from petstore.realtime import layer

    reads: list[str] = []
    real = layer.Realtime.snapshot

    async def counted(self: layer.Realtime, room: str) -> Any:
        reads.append(room)
        return await real(self, room)

    monkeypatch.setattr(layer.Realtime, "snapshot", counted)
    pet = await add_pet(app.url, "Kept")
    await until(lambda: app.count("event.published", event="inventory.changed") == 1, "the event to be published")
    async with ws_client(app.ws_url) as a, ws_client(app.ws_url) as b, ws_client(app.ws_url) as c:
        answers = [await x.request({"type": "subscribe", "room": "inventory"}, "subscribed") for x in (a, b, c)]
        pet_answers = [await x.request({"type": "subscribe", "room": f"pet:{pet['id']}"}, "subscribed") for x in (a, b)]
        assert reads == ["inventory", f"pet:{pet['id']}"]
        assert {json.dumps(x["snapshot"]) for x in answers} == {json.dumps({"available": 1, "pending": 0, "sold": 0})}
        assert pet_answers[0]["snapshot"] == pet_answers[1]["snapshot"] == pet
        await set_status(app.url, pet["id"], "sold")
        await a.expect("event")
        await a.expect("event")
        async with ws_client(app.ws_url) as d:
            later = await d.request({"type": "subscribe", "room": "inventory"}, "subscribed")
            again = await d.request({"type": "subscribe", "room": f"pet:{pet['id']}"}, "subscribed")
    assert later["snapshot"] == {"available": 0, "pending": 0, "sold": 1}
    assert again["snapshot"]["status"] == "sold"
    assert reads == ["inventory", f"pet:{pet['id']}", "inventory", f"pet:{pet['id']}"]


async def test_pets_and_pet_rooms_carry_the_pet_as_rest_shows_it(app: AppServer) -> None:
    async with ws_client(app.ws_url) as pets, ws_client(app.ws_url) as one:
        await pets.request({"type": "subscribe", "room": "pets"}, "subscribed")
        pet = await add_pet(app.url, "Bella", tags=[{"name": "dog"}])
        created = await pets.expect("event")
        assert created["event"] == "pet.created" and created["data"] == pet
        subscribed = await one.request({"type": "subscribe", "room": f"pet:{pet['id']}"}, "subscribed")
        assert subscribed["snapshot"] == pet
        await set_status(app.url, pet["id"], "pending")
        for client in (pets, one):
            updated = await client.expect("event")
            assert updated["event"] == "pet.updated" and updated["data"]["status"] == "pending"
        missing = await one.request({"type": "subscribe", "room": "pet:999999"}, "subscribed")
        assert missing["snapshot"] is None


async def test_several_queued_events_leave_as_one_json_array_frame(tmp_path: Path) -> None:
    # The in-process broker hands a whole relay batch over without yielding: a deterministic burst.
    # Events queue when they cannot be written at once; through plain ASGI every one does (the
    # direct path queues behind a busy socket: tests/realtime/test_hub.py).
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path}/ws.db", media_dir=tmp_path / "media")
    async with serve(settings, ws="websockets-sansio") as app, ws_client(app.ws_url) as client:
        await client.request({"type": "subscribe", "room": "pets"}, "subscribed")
        async with app.state.sessions() as session:
            for n in range(5):
                events.record(session, "pet.deleted", ["pets"], {"id": n})
            await session.commit()
        app.state.outbox_wakeup.set()
        received = await client.events(5)
        assert [event["data"]["id"] for event in received] == [0, 1, 2, 3, 4]
        assert any(frame.startswith("[") for frame in client.frames), client.frames


async def test_ping_pong_and_unsubscribe_stop_the_events(app: AppServer) -> None:
    async with ws_client(app.ws_url) as client:
        assert await client.request({"type": "ping", "id": "p1"}, "pong") == {"type": "pong", "id": "p1"}
        await client.request({"type": "subscribe", "room": "pets", "id": 1}, "subscribed")
        unsubscribed = await client.request({"type": "unsubscribe", "room": "pets", "id": 2}, "unsubscribed")
        assert unsubscribed == {"type": "unsubscribed", "id": 2, "room": "pets"}
        await add_pet(app.url)
        assert await client.request({"type": "ping", "id": 3}, "pong") == {"type": "pong", "id": 3}
        await until(lambda: app.count("event.published", event="pet.created") == 1, "the event to be published")
        assert await client.request({"type": "ping", "id": 4}, "pong") == {"type": "pong", "id": 4}
        assert client.buffer == []


# ---------------------------------------------------------------------------------- recovery


async def test_since_recovers_the_missed_events_in_order_then_live_ones(app: AppServer) -> None:
    async with ws_client(app.ws_url) as client:
        subscribed = await client.request({"type": "subscribe", "room": "pets", "id": 1}, "subscribed")
        await add_pet(app.url, "one")
        seen = await client.expect("event")
    epoch, offset = subscribed["epoch"], seen["offset"]
    for name in ("two", "three", "four"):
        await add_pet(app.url, name)
    await until(lambda: app.count("event.published", event="pet.created") == 4, "the events to be published")
    async with ws_client(app.ws_url) as client:
        since = {"offset": offset, "epoch": epoch}
        again = await client.request({"type": "subscribe", "room": "pets", "id": 2, "since": since}, "subscribed")
        assert again["recovered"] is True and again["snapshot"] is None
        assert again["offset"] == offset + 3 and again["epoch"] == epoch
        missed = await client.events(3)
        assert [e["data"]["name"] for e in missed] == ["two", "three", "four"]
        assert [e["offset"] for e in missed] == [offset + 1, offset + 2, offset + 3]
        await add_pet(app.url, "five")
        live = await client.expect("event")
        assert live["offset"] == offset + 4 and live["data"]["name"] == "five"


async def test_since_at_the_current_offset_recovers_nothing_missing(app: AppServer) -> None:
    async with ws_client(app.ws_url) as client:
        first = await client.request({"type": "subscribe", "room": "inventory"}, "subscribed")
        since = {"offset": first["offset"], "epoch": first["epoch"]}
        again = await client.request({"type": "subscribe", "room": "inventory", "since": since}, "subscribed")
        assert again["recovered"] is True and again["offset"] == first["offset"]
        assert await client.request({"type": "ping"}, "pong") == {"type": "pong", "id": None}


async def test_since_from_another_epoch_or_the_future_starts_over_with_a_snapshot(app: AppServer) -> None:
    async with ws_client(app.ws_url) as client:
        await add_pet(app.url)
        await until(lambda: app.count("event.published", event="inventory.changed") == 1, "the event to be published")
        first = await client.request({"type": "subscribe", "room": "inventory"}, "subscribed")
        future = {"offset": first["offset"] + 5, "epoch": first["epoch"]}
        for since in ({"offset": 1, "epoch": "not-the-epoch"}, future):
            again = await client.request({"type": "subscribe", "room": "inventory", "since": since}, "subscribed")
            assert again["recovered"] is False
            assert again["snapshot"] == {"available": 1, "pending": 0, "sold": 0}
            assert again["epoch"] == first["epoch"] and again["offset"] == first["offset"]


async def test_since_beyond_the_trimmed_history_starts_over_with_a_snapshot(make_settings: MakeSettings) -> None:
    async with serve(make_settings(history_size=3)) as app, ws_client(app.ws_url) as client:
        first = await client.request({"type": "subscribe", "room": "inventory"}, "subscribed")
        for n in range(5):
            await add_pet(app.url, f"pet{n}")
        await client.events(5)
        since = {"offset": first["offset"], "epoch": first["epoch"]}
        again = await client.request({"type": "subscribe", "room": "inventory", "since": since}, "subscribed")
        assert again["recovered"] is False and again["snapshot"] == {"available": 5, "pending": 0, "sold": 0}
        inside = {"offset": first["offset"] + 2, "epoch": first["epoch"]}
        recovered = await client.request({"type": "subscribe", "room": "inventory", "since": inside}, "subscribed")
        assert recovered["recovered"] is True
        assert [e["offset"] for e in await client.events(3)] == [first["offset"] + n for n in (3, 4, 5)]


async def test_events_published_while_history_is_read_are_neither_lost_nor_doubled(app: AppServer) -> None:
    """The subscription buffers live events while history is read; the merge drops what history covered."""
    async with ws_client(app.ws_url) as watcher, ws_client(app.ws_url) as client:
        base = await watcher.request({"type": "subscribe", "room": "pets"}, "subscribed")
        layer = app.state.realtime
        original = layer.broker.history

        async def slow_history(room: str, since: Any) -> Any:
            result = await original(room, since)
            async with app.state.sessions() as session:  # an event lands after the history was read
                events.record(session, "pet.deleted", ["pets"], {"id": 42})
                await session.commit()
            app.state.outbox_wakeup.set()
            await until(lambda: app.count("event.published", event="pet.deleted") >= 1, "the concurrent event")
            return result

        layer.broker.history = slow_history  # type: ignore[method-assign]
        since = {"offset": base["offset"], "epoch": base["epoch"]}
        subscribed = await client.request({"type": "subscribe", "room": "pets", "since": since}, "subscribed")
        layer.broker.history = original  # type: ignore[method-assign]
        assert subscribed["recovered"] is True
        event = await client.expect("event")
        assert event["offset"] == base["offset"] + 1 and event["data"] == {"id": 42}
        await add_pet(app.url)
        assert (await client.expect("event"))["offset"] == base["offset"] + 2


# ------------------------------------------------------------------------------- error paths


async def assert_error(client: Any, message: Any, code: str, ident: Any = None) -> dict[str, Any]:
    await client.send(message)
    error = await client.expect("error")
    assert error["code"] == code and error["id"] == ident, error
    assert isinstance(error["message"], str) and error["message"]
    return error


async def test_every_bad_message_gets_an_error_and_the_connection_stays(make_settings: MakeSettings) -> None:
    async with serve(make_settings(ws_max_subscriptions=2)) as app, ws_client(app.ws_url) as client:
        await assert_error(client, "{not json", "bad_request")
        await assert_error(client, "[1, 2]", "bad_request")
        await assert_error(client, '{"id": 1}', "bad_request")
        await assert_error(client, {"type": 7}, "bad_request")
        await assert_error(client, {"type": "dance", "id": 1}, "bad_request", 1)
        await assert_error(client, {"type": "ping", "id": [1]}, "bad_request")
        await assert_error(client, {"type": "ping", "id": True}, "bad_request")
        await assert_error(client, b'{"type": "ping"}', "bad_request")
        await assert_error(client, {"type": "subscribe", "id": 2}, "bad_request", 2)
        await assert_error(client, {"type": "subscribe", "room": 5, "id": 3}, "bad_request", 3)
        await assert_error(client, {"type": "subscribe", "room": "kennel", "id": 4}, "not_found", 4)
        await assert_error(client, {"type": "subscribe", "room": "pet:abc", "id": 5}, "not_found", 5)
        await assert_error(client, {"type": "subscribe", "room": "pet:9999999999999999999", "id": 5}, "not_found", 5)
        for since in ([1], {"offset": -1, "epoch": "e"}, {"offset": 1}, {"offset": "1", "epoch": "e"}, {"epoch": ""}):
            await assert_error(client, {"type": "subscribe", "room": "pets", "since": since, "id": 6}, "bad_request", 6)
        await assert_error(client, {"type": "unsubscribe", "room": "pets", "id": 7}, "not_found", 7)
        await assert_error(client, {"type": "unsubscribe", "id": 8}, "bad_request", 8)
        await assert_error(client, {"type": "auth", "id": 9}, "bad_request", 9)
        await assert_error(client, {"type": "auth", "token": "garbage", "id": 10}, "unauthorized", 10)
        await client.request({"type": "subscribe", "room": "pets"}, "subscribed")
        await client.request({"type": "subscribe", "room": "inventory"}, "subscribed")
        await assert_error(client, {"type": "subscribe", "room": "pet:1", "id": 11}, "bad_request", 11)
        again = await client.request({"type": "subscribe", "room": "pets", "id": 12}, "subscribed")
        assert again["id"] == 12  # subscribing again to a room already joined is not one more subscription
        assert await client.request({"type": "ping", "id": 13}, "pong") == {"type": "pong", "id": 13}
        assert app.count("ws.message_received", type="invalid") == 5
        assert app.count("ws.message_received", type="unknown") == 1


async def test_rooms_are_authorized_by_role(app: AppServer) -> None:
    async with ws_client(app.ws_url) as anonymous:
        await assert_error(anonymous, {"type": "subscribe", "room": "orders", "id": 1}, "unauthorized", 1)
        await assert_error(anonymous, {"type": "subscribe", "room": "user:cora", "id": 2}, "unauthorized", 2)
    async with ws_client(app.ws_url, headers={"X-Test-User": CUSTOMER}) as customer:
        await assert_error(customer, {"type": "subscribe", "room": "orders", "id": 1}, "forbidden", 1)
        await assert_error(customer, {"type": "subscribe", "room": "user:stan", "id": 2}, "forbidden", 2)
        await customer.request({"type": "subscribe", "room": "user:cora"}, "subscribed")
    async with ws_client(app.ws_url, headers={"X-Test-User": STAFF}) as staff:
        await staff.request({"type": "subscribe", "room": "orders"}, "subscribed")
        await assert_error(staff, {"type": "subscribe", "room": "user:cora", "id": 3}, "forbidden", 3)
    async with ws_client(app.ws_url) as browser:
        authenticated = await browser.request({"type": "auth", "token": ADMIN, "id": 1}, "authenticated")
        assert authenticated == {"type": "authenticated", "id": 1, "user": "ada"}
        await browser.request({"type": "subscribe", "room": "user:cora"}, "subscribed")
        await browser.request({"type": "subscribe", "room": "orders"}, "subscribed")


async def test_reauthenticating_as_someone_with_fewer_rights_leaves_their_forbidden_rooms(app: AppServer) -> None:
    async with ws_client(app.ws_url) as client:
        await client.request({"type": "auth", "token": STAFF}, "authenticated")
        await client.request({"type": "subscribe", "room": "orders"}, "subscribed")
        await client.send({"type": "auth", "token": CUSTOMER, "id": 5})
        assert await client.expect("unsubscribed") == {"type": "unsubscribed", "id": None, "room": "orders"}
        assert (await client.expect("authenticated"))["user"] == "cora"


async def test_an_oversize_frame_closes_with_1009(make_settings: MakeSettings) -> None:
    async with serve(make_settings(ws_max_message_bytes=1000)) as app, ws_client(app.ws_url) as client:
        await client.send({"type": "ping", "pad": "x" * 2000})
        assert await client.closed() == 1009
    assert app.count("ws.disconnected", code="1009") == 1


async def test_an_origin_not_allowed_is_refused_before_accepting(app: AppServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(app.ws_url + "/ws", origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    async with ws_client(app.ws_url, origin=ORIGIN) as client:
        await client.request({"type": "ping"}, "pong")
    assert app.count("ws.connected") == 1


async def test_an_idle_anonymous_connection_is_closed_at_the_auth_deadline(make_settings: MakeSettings) -> None:
    async with serve(make_settings(ws_auth_timeout_seconds=0.3)) as app, ws_client(app.ws_url) as client:
        await client.request({"type": "ping"}, "pong")
        assert await client.closed() == 1008


async def test_a_token_that_expires_on_a_live_connection_ends_it_unless_renewed(app: AppServer) -> None:
    async with ws_client(app.ws_url) as client:
        await client.request({"type": "auth", "token": f"{STAFF}:{time.time() + 0.5}"}, "authenticated")
        await client.request({"type": "auth", "token": f"{STAFF}:{time.time() + 3600}"}, "authenticated")
        await client.request({"type": "subscribe", "room": "orders"}, "subscribed")
        assert await client.request({"type": "ping", "id": 1}, "pong") == {"type": "pong", "id": 1}
    async with ws_client(app.ws_url) as client:
        await client.request({"type": "auth", "token": f"{STAFF}:{time.time() + 0.3}"}, "authenticated")
        assert await client.closed() == 1008
    async with ws_client(app.ws_url) as client:
        await assert_error(client, {"type": "auth", "token": f"{STAFF}:{time.time() - 1}", "id": 1}, "unauthorized", 1)


async def test_published_state_is_marked_in_the_outbox_and_counted(app: AppServer) -> None:
    await add_pet(app.url)
    await until(lambda: app.count("event.published", event="inventory.changed") == 1, "inventory.changed")
    assert app.count("event.published", event="pet.created") == 1
    await until(lambda: app.probe.gauges.get("outbox.pending") == 0, "outbox.pending to be reported")
    assert app.probe.gauges["inventory.pets|status=available"] == 1

    # The relay marks its batch right after publishing it: wait for that (with a deadline), since
    # the counters above move while it publishes, just before the rows are marked.
    async def all_marked() -> bool:
        async with app.state.sessions() as session:
            unmarked = await session.execute(
                select(func.count()).select_from(OutboxEvent).where(col(OutboxEvent.published_at).is_(None))
            )
            return unmarked.scalar_one() == 0

    await until(all_marked, "the published rows to be marked in the outbox")


async def test_plugins_take_part_in_connect_messages_and_room_authorization(make_settings: MakeSettings) -> None:
    plugins = (
        "tests.realtime.support:expiring_auth",
        "tests.realtime.support:gatekeeper",
        "tests.realtime.support:probe",
    )
    async with serve(make_settings(plugins=plugins)) as app:
        with pytest.raises(InvalidStatus):
            async with connect(app.ws_url + "/ws", additional_headers={"X-Too-Many": "1"}):
                pass
        async with ws_client(app.ws_url) as client:
            await assert_error(client, {"type": "subscribe", "room": "pet:13", "id": 2}, "unauthorized", 2)
            await client.request({"type": "subscribe", "room": "pet:12"}, "subscribed")
        async with ws_client(app.ws_url) as client:
            await assert_error(client, {"type": "unsubscribe", "room": "pets", "id": 1}, "rate_limited", 1)
            assert await client.closed() == 1013  # told why, then closed: too many messages
        async with ws_client(app.ws_url, headers={"X-Test-User": ADMIN}) as admin:
            await assert_error(admin, {"type": "subscribe", "room": "pet:13", "id": 3}, "forbidden", 3)


# ----------------------------------------------------------------- messages that used to kill it


async def test_json_nested_too_deep_is_a_bad_request_not_a_dead_connection(app: AppServer) -> None:
    async with ws_client(app.ws_url) as client:
        await client.send("[" * 20_000 + "]" * 20_000)  # 40 KB: within the message limit
        error = await client.expect("error")
        assert error["code"] == "bad_request"
        assert await client.request({"type": "ping", "id": 1}, "pong") == {"type": "pong", "id": 1}


async def test_an_id_that_cannot_be_echoed_is_refused_and_the_connection_keeps_speaking(app: AppServer) -> None:
    """A lone surrogate parses as JSON but has no UTF-8 form: echoing it killed the sender task
    and left the socket open and mute for ever."""
    async with ws_client(app.ws_url) as client:
        await client.send('{"type": "ping", "id": "\\ud800"}')
        error = await client.expect("error")
        assert error["code"] == "bad_request" and error["id"] is None
        assert await client.request({"type": "ping", "id": "ok"}, "pong") == {"type": "pong", "id": "ok"}


async def test_a_failing_handler_closes_with_1011_and_a_log_line(
    app: AppServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from petstore.realtime.ws import Session

    async def broken(self: Session, body: dict[str, Any], ident: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Session, "on_ping", broken)
    async with ws_client(app.ws_url) as client:
        await client.send({"type": "ping", "id": 1})
        assert await client.closed() == 1011
    assert any("closing with 1011" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_database_outage_during_subscribe_closes_with_1012_to_reconnect(
    app: AppServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    layer = app.state.realtime

    async def unreachable(room: str) -> Any:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(layer, "snapshot", unreachable)
    async with ws_client(app.ws_url) as client:
        await client.send({"type": "subscribe", "room": "inventory", "id": 1})
        assert await client.closed() == 1012
    await until(lambda: layer.hub.subscribers("inventory") == 0, "the subscription to be released")
