"""The broker contract, for both backends: the in-process one and real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from petstore.config import Settings
from petstore.realtime.broker import Broker, BrokerUnavailable, Message, Publication, Since, create_broker, dumps
from petstore.realtime.broker.memory import MemoryBroker
from petstore.realtime.broker.redis import RedisBroker, channel, keys
from tests.realtime.support import until
from tests.services import RedisServer

TS = "2026-01-02T03:04:05.678Z"


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[Message] = []
        self.observed: list[str] = []

    def deliver(self, message: Message) -> None:
        self.delivered.append(message)

    def observe(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.observed.append(name)

    def offsets(self, room: str) -> list[int]:
        return [m.offset for m in self.delivered if m.room == room]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Recorder]]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    recorder = Recorder()
    broker = create_broker(Settings(redis_url=url, history_size=5), recorder.deliver, recorder.observe)
    await broker.start()
    try:
        yield broker, recorder
    finally:
        await broker.stop()


async def publish(broker: Broker, room: str, n: int, source: int | None = None) -> None:
    await broker.publish([room], "pet.deleted", dumps({"id": n}), TS, source if source is not None else n)


async def test_the_backend_follows_the_configuration(redis_url: str) -> None:
    recorder = Recorder()
    assert isinstance(create_broker(Settings(), recorder.deliver, recorder.observe), MemoryBroker)
    broker = create_broker(Settings(redis_url=redis_url), recorder.deliver, recorder.observe)
    assert isinstance(broker, RedisBroker)
    await broker.stop()


async def test_watched_rooms_receive_events_in_order_with_contiguous_offsets(backend: Any) -> None:
    broker, recorder = backend
    await broker.watch("pets")
    start = await broker.history("pets", None)
    for n in range(1, 4):
        await publish(broker, "pets", n)
    await publish(broker, "inventory", 9)  # not watched: not delivered
    await until(lambda: len(recorder.delivered) == 3, "three events")
    assert recorder.offsets("pets") == [start.offset + 1, start.offset + 2, start.offset + 3]
    first = recorder.delivered[0]
    assert first.epoch == start.epoch and first.event == "pet.deleted" and first.kind == "pets"
    assert first.frame == (
        f'{{"type":"event","room":"pets","offset":{first.offset},"epoch":"{first.epoch}",'
        f'"event":"pet.deleted","data":{{"id":1}},"ts":"{TS}"}}'
    )
    assert first.committed_at == pytest.approx(1767323045.678)


async def test_one_event_goes_to_all_its_rooms_at_once(backend: Any) -> None:
    broker, recorder = backend
    await broker.watch("pets")
    await broker.watch("pet:1")
    await broker.publish(["pets", "pet:1"], "pet.created", dumps({"id": 1}), TS, 1)
    await until(lambda: len(recorder.delivered) == 2, "the event in both rooms")
    assert sorted(m.room for m in recorder.delivered) == ["pet:1", "pets"]
    assert all(m.offset == 1 and m.event == "pet.created" for m in recorder.delivered)


async def test_a_batch_goes_out_in_order_and_publishing_it_again_changes_nothing(backend: Any) -> None:
    """The relay publishes a batch at once (one pipeline on Redis); after a failure part way it
    publishes the whole batch again, and the rows that did go out are not repeated."""
    broker, recorder = backend
    await broker.watch("pets")
    start = await broker.history("pets", None)
    batch = [Publication(["pets"], "pet.deleted", dumps({"id": n}), TS, n) for n in range(1, 5)]
    await broker.publish_all(batch[:2])  # as if the broker failed after the first two
    await broker.publish_all(batch)
    await until(lambda: len(recorder.delivered) == 4, "the batch")
    assert recorder.offsets("pets") == [start.offset + n for n in range(1, 5)]
    assert [json.loads(m.frame)["data"]["id"] for m in recorder.delivered] == [1, 2, 3, 4]


async def test_history_proves_continuity_or_says_it_cannot(backend: Any) -> None:
    broker, _ = backend
    position = await broker.history("pets", None)
    assert position.messages is None and position.offset == 0
    for n in range(1, 8):
        await publish(broker, "pets", n)
    epoch = position.epoch
    inside = await broker.history("pets", Since(epoch, 4))
    assert inside.offset == 7 and [m.offset for m in inside.messages] == [5, 6, 7]
    assert (await broker.history("pets", Since(epoch, 7))).messages == []
    assert (await broker.history("pets", Since(epoch, 1))).messages is None  # trimmed to the last 5
    assert (await broker.history("pets", Since("other", 6))).messages is None
    assert (await broker.history("pets", Since(epoch, 8))).messages is None


async def test_unwatched_rooms_stop_delivering(backend: Any) -> None:
    broker, recorder = backend
    await broker.watch("pets")
    await broker.watch("pets")
    await broker.unwatch("pets")
    await publish(broker, "pets", 1)
    await until(lambda: len(recorder.delivered) == 1, "the event while one watcher remains")
    await broker.unwatch("pets")
    await broker.watch("inventory")
    await publish(broker, "pets", 2)
    await publish(broker, "inventory", 3)
    await until(lambda: len(recorder.delivered) == 2, "the inventory event")
    assert [m.room for m in recorder.delivered] == ["pets", "inventory"]


# --------------------------------------------------------------------------------- Redis only


@pytest.fixture
async def redis_broker(redis_url: str) -> AsyncIterator[tuple[RedisBroker, Recorder]]:
    recorder = Recorder()
    broker = RedisBroker(Settings(redis_url=redis_url, history_size=50), recorder.deliver, recorder.observe)
    await broker.start()
    try:
        yield broker, recorder
    finally:
        await broker.stop()


async def test_a_retried_publish_of_the_same_outbox_row_is_a_no_op(redis_broker: Any) -> None:
    broker, recorder = redis_broker
    await broker.watch("pets")
    await publish(broker, "pets", 1, source=10)
    await publish(broker, "pets", 1, source=10)
    await publish(broker, "pets", 2, source=11)
    await until(lambda: len(recorder.delivered) == 2, "two events")
    assert recorder.offsets("pets") == [1, 2]


async def test_one_script_keeps_offset_stream_and_ttl_together(redis_broker: Any, redis_url: str) -> None:
    broker, _ = redis_broker
    await publish(broker, "pet:7", 1)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        meta = await client.hgetall("petstore:{pet:7}:meta")
        assert meta[b"offset"] == b"1" and meta[b"epoch"]
        assert await client.xlen("petstore:{pet:7}:log") == 1
        for key in ("meta", "log", "src"):
            ttl = await client.ttl(f"petstore:{{pet:7}}:{key}")
            assert 0 < ttl <= 24 * 3600
    finally:
        await client.aclose()


@pytest.mark.process
async def test_lost_history_starts_a_new_epoch(redis_broker: Any, redis_server: RedisServer) -> None:
    broker, _ = redis_broker
    await publish(broker, "pets", 1)
    before = await broker.history("pets", None)
    redis_server.flushall()
    await publish(broker, "pets", 2)
    after = await broker.history("pets", Since(before.epoch, before.offset))
    assert after.epoch != before.epoch and after.offset == 1 and after.messages is None


@pytest.mark.process
async def test_publishing_while_redis_is_down_raises_broker_unavailable(redis_server: RedisServer) -> None:
    server = RedisServer()
    server.start()
    recorder = Recorder()
    broker = RedisBroker(Settings(redis_url=server.url), recorder.deliver, recorder.observe)
    await broker.start()
    try:
        server.stop()
        with pytest.raises(BrokerUnavailable):
            await publish(broker, "pets", 1)
        with pytest.raises(BrokerUnavailable):
            await broker.history("pets", None)
    finally:
        await broker.stop()
        server.close()


async def test_after_a_lost_connection_the_listener_resubscribes_and_fills_the_gap(
    redis_broker: Any, redis_url: str
) -> None:
    broker, recorder = redis_broker
    await broker.watch("pets")
    await publish(broker, "pets", 1)
    await until(lambda: len(recorder.delivered) == 1, "the first event")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        # Cut the pub/sub connection, then publish before the listener is back: only the
        # stream has these events, and the gap fill must deliver them, once, in order.
        await client.client_kill_filter(_type="pubsub")
        for n in range(2, 6):
            await publish(broker, "pets", n)
        await until(lambda: broker.reconnects >= 1, "the listener to reconnect")
        await until(lambda: len(recorder.delivered) == 5, "the missed events")
        await publish(broker, "pets", 6)
        await until(lambda: len(recorder.delivered) == 6, "a live event after the reconnect")
    finally:
        await client.aclose()
    assert recorder.offsets("pets") == [1, 2, 3, 4, 5, 6]
    assert "broker.reconnected" in recorder.observed


@pytest.mark.process
async def test_the_watchdog_reconnects_a_listener_that_went_silent(redis_server: RedisServer) -> None:
    server = RedisServer()
    server.start()
    recorder = Recorder()
    broker = RedisBroker(Settings(redis_url=server.url), recorder.deliver, recorder.observe, watchdog_seconds=0.3)
    await broker.start()
    try:
        await broker.watch("pets")
        pid = server._child.proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)  # the connection stays open but nothing answers
        try:
            await until(lambda: broker._conn is None, "the watchdog to give up on the silent connection")
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: broker.reconnects >= 1, "the listener to reconnect after the watchdog fired")
        await publish(broker, "pets", 1)
        await until(lambda: len(recorder.delivered) == 1, "an event on the new connection")
    finally:
        await broker.stop()
        server.close()


@pytest.mark.process
async def test_a_fast_redis_restart_does_not_end_delivery(redis_server: RedisServer) -> None:
    """Redis restarted empty at once: the listener's gap fill meets the pool's dead connections
    (BrokerUnavailable). That used to end the listener task for good; now it reconnects, and the
    rooms go on in a new epoch, with subscribing working again."""
    server = RedisServer()
    server.start()
    recorder = Recorder()
    broker = RedisBroker(Settings(redis_url=server.url), recorder.deliver, recorder.observe)
    await broker.start()
    try:
        await broker.watch("pets")
        await publish(broker, "pets", 1)
        await until(lambda: len(recorder.delivered) == 1, "the first event")
        await broker.history("pets", None)  # a pooled connection that the restart will break
        for _ in range(3):
            server.stop()
            server.start()
            await until(lambda: not broker.connected or broker.reconnects > 0, "the listener to see the restart")
            await until(lambda: broker.connected, "the listener to deliver again")
        await publish(broker, "pets", 2)
        await until(lambda: len(recorder.delivered) == 2, "an event after the restarts")
        await broker.watch("inventory")  # subscribing works again
        await publish(broker, "inventory", 3)
        await until(lambda: len(recorder.delivered) == 3, "an event of a room watched after the restarts")
    finally:
        await broker.stop()
        server.close()
    first, second = recorder.delivered[0], recorder.delivered[1]
    assert second.epoch != first.epoch and second.offset == 1  # history was lost: a new epoch says so


async def test_any_failure_of_the_gap_fill_ends_in_a_reconnect(
    redis_broker: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, recorder = redis_broker
    await broker.watch("pets")
    await publish(broker, "pets", 1)
    await until(lambda: broker.connected and len(recorder.delivered) == 1, "the first event")
    real_read = broker._read_room
    failures = [BrokerUnavailable("redis read failed"), RuntimeError("a bug nobody expected")]

    async def flaky_read(*args: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return await real_read(*args)

    monkeypatch.setattr(broker, "_read_room", flaky_read)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.client_kill_filter(_type="pubsub")
        for n in range(2, 5):
            await publish(broker, "pets", n)
        await until(lambda: not failures and broker.connected, "the listener to get past two failed gap fills")
        await until(lambda: len(recorder.delivered) == 4, "the missed events")
    finally:
        await client.aclose()
    assert recorder.offsets("pets") == [1, 2, 3, 4]
    assert "broker.connected" in recorder.observed


async def test_the_memory_broker_forgets_rooms_that_hold_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crawl through 5,000 pet rooms (subscribe, leave) must not leave 5,000 rooms in memory;
    rooms with history are kept until it expires, then swept."""
    from petstore.realtime.broker import memory

    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    recorder = Recorder()
    broker = MemoryBroker(Settings(history_size=5, history_ttl_seconds=60), recorder.deliver)
    await broker.watch("pets")  # watched all along: kept, though empty
    await broker.history("pets", None)
    await publish(broker, "pet:1", 1)
    kept = await broker.history("pet:1", None)
    for n in range(2, 5000):
        room = f"pet:{n}"
        await broker.watch(room)
        await broker.history(room, None)
        await broker.unwatch(room)
    assert len(broker._rooms) <= memory.SWEEP_EVERY
    assert "pet:1" in broker._rooms and "pets" in broker._rooms  # history is worth keeping while it lasts
    clock[0] += 61
    for n in range(memory.SWEEP_EVERY):
        await publish(broker, f"pet:{10_000 + n}", n)
    assert "pet:1" not in broker._rooms
    assert len(broker._rooms) <= memory.SWEEP_EVERY
    assert (await broker.history("pet:1", None)).epoch != kept.epoch  # expired: a new epoch says so


async def test_a_room_nobody_publishes_to_expires_from_redis_sooner(redis_broker: Any, redis_url: str) -> None:
    broker, _ = redis_broker
    await broker.history("pet:424242", None)
    await publish(broker, "pet:7", 1)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert 0 < await client.ttl("petstore:{pet:424242}:meta") <= 3600
        assert await client.ttl("petstore:{pet:7}:meta") > 3600
    finally:
        await client.aclose()


# -- a failover that lost the last writes: never a silent gap -----------------------------------------


class Gate:
    """Keeps the broker's listener from reconnecting while closed, as during a failover."""

    def __init__(self, broker: RedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
        from petstore.realtime.broker import redis as module

        self.closed = True
        real = module._Link._new_connection

        def gated(link: Any) -> Any:
            if self.closed:
                raise redis.exceptions.ConnectionError("the gate is closed")
            return real(link)

        monkeypatch.setattr(module._Link, "_new_connection", gated)


async def lose_last_write(client: redis.asyncio.Redis, room: str, offset: int) -> None:
    """What a promoted replica that missed the primary's last write looks like: one entry less."""
    meta, log, _ = keys(room)
    await client.xdel(log, f"0-{offset}")
    await client.execute_command("XSETID", log, f"0-{offset - 1}")  # as if the entry never came
    await client.hset(meta, "offset", offset - 1)


@pytest.mark.parametrize("rewritten", [False, True], ids=["offset-went-back", "offset-reused-by-another-event"])
async def test_a_history_that_lost_delivered_events_starts_a_new_epoch(
    redis_broker: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch, rewritten: bool
) -> None:
    """The listener delivered offset 3, then the room's history lost it (a failover to a replica
    that had not received it). Reusing offset 3 for another event would be a silent gap for every
    client that saw the first one: the room must start a new epoch, which tells them."""
    broker, recorder = redis_broker
    await broker.watch("pets")
    for n in range(1, 4):
        await publish(broker, "pets", n)
    await until(lambda: len(recorder.delivered) == 3, "three events")
    old_epoch = recorder.delivered[-1].epoch
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        gate = Gate(broker, monkeypatch)
        await client.client_kill_filter(_type="pubsub")
        await until(lambda: not broker.connected, "the listener to lose its connection")
        await lose_last_write(client, "pets", 3)
        if rewritten:
            await publish(broker, "pets", 40)  # takes offset 3 again, with other content
        gate.closed = False
        await until(lambda: broker.connected, "the listener to reconnect")
        history = await broker.history("pets", Since(old_epoch, 3))
        assert history.epoch != old_epoch and history.messages is None  # a client coming back starts over
        await publish(broker, "pets", 5)
        await until(lambda: len(recorder.delivered) == 4, "the next event")
    finally:
        await client.aclose()
    fresh = recorder.delivered[-1]
    assert (fresh.epoch, fresh.offset) == (history.epoch, 1)
    assert [m.offset for m in recorder.delivered[:3]] == [1, 2, 3]  # nothing delivered twice at offset 3


async def test_a_live_event_reusing_a_delivered_offset_starts_a_new_epoch(redis_broker: Any, redis_url: str) -> None:
    """The same divergence, seen on a live connection: an event at the offset last delivered, with
    other content. It is not a duplicate to drop: the room's history went back."""
    broker, recorder = redis_broker
    await broker.watch("pets")
    for n in range(1, 3):
        await publish(broker, "pets", n)
    await until(lambda: len(recorder.delivered) == 2, "two events")
    old_epoch = recorder.delivered[-1].epoch
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await lose_last_write(client, "pets", 2)
        await publish(broker, "pets", 30)
        await until(lambda: broker._cursors["pets"].epoch != old_epoch, "the room to start a new epoch")
        await publish(broker, "pets", 4)
        await until(lambda: len(recorder.delivered) == 3, "the next event")
    finally:
        await client.aclose()
    assert recorder.delivered[-1].epoch != old_epoch and recorder.delivered[-1].offset == 1


async def test_a_late_frame_of_a_superseded_epoch_is_not_handed_over(redis_broker: Any, redis_url: str) -> None:
    """A frame of an epoch the room no longer has (sent before a failover, read after the room
    moved on) must not take the room back: it would move the cursor to that epoch, and the room's
    real epoch would then be replayed from its start as duplicates."""
    broker, recorder = redis_broker
    await broker.watch("pets")
    for n in range(1, 3):
        await publish(broker, "pets", n)
    await until(lambda: len(recorder.delivered) == 2, "two events")
    epoch = recorder.delivered[-1].epoch
    stale = '{"type":"event","room":"pets","offset":7,"epoch":"superseded","event":"pet.deleted","data":{},"ts":"%s"}'
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.publish(channel("pets"), stale % TS)
        await publish(broker, "pets", 3)
        await until(lambda: len(recorder.delivered) >= 3, "the next event")
        await publish(broker, "pets", 4)
        await until(lambda: len(recorder.delivered) >= 4, "one more")
    finally:
        await client.aclose()
    assert [(m.epoch, m.offset) for m in recorder.delivered] == [(epoch, n) for n in range(1, 5)]


async def test_a_subscriber_waiting_while_its_room_moves_to_another_link_follows_it(redis_broker: Any) -> None:
    """On a cluster a room moves to another link (a failover, a slot migration), and the old link
    cancels the confirmation it owed. One who was waiting on it must wait for the new link's,
    not be cancelled: the CancelledError ended its whole WebSocket session without a close frame."""
    broker, recorder = redis_broker
    await broker.watch("here")
    link = broker._room_links["here"]
    link.rooms.add("moving")  # as if its subscription were sent and not confirmed yet
    broker._room_links["moving"] = link
    link.confirmation("moving")
    waiting = asyncio.create_task(broker.watch("moving"))
    await until(lambda: broker._watched.get("moving") == 1, "the subscriber to wait for the confirmation")
    assert not waiting.done()
    link.drop("moving")  # what _rehome does, then the new owner subscribes it
    await link.add("moving", fill=False)
    await asyncio.wait_for(waiting, 10)
    await publish(broker, "moving", 1)
    await until(lambda: recorder.offsets("moving") == [1], "the event of the moved room")


async def test_two_gap_fills_of_one_room_in_flight_at_once_deliver_each_event_once(redis_broker: Any) -> None:
    """A room whose slot moves is filled by its new link while its old link's fill may still be
    reading: whichever read answers second must not hand over again what the first delivered."""
    broker, recorder = redis_broker
    await broker.watch("pets")
    await publish(broker, "pets", 1)
    await until(lambda: len(recorder.delivered) == 1, "the first event")
    # Three events published while the room is not listened to: a gap for both fills to find.
    broker._watched.pop("pets")
    for n in range(2, 5):
        await publish(broker, "pets", n)
    broker._watched["pets"] = 1
    real_read = broker._read_room
    both_read = asyncio.Event()
    reads = 0

    async def read_side_by_side(*args: Any) -> Any:
        nonlocal reads
        answer = await real_read(*args)
        reads += 1
        if reads == 2:
            both_read.set()
        await both_read.wait()  # each fill holds its answer until the other has read too
        return answer

    broker._read_room = read_side_by_side
    try:
        await asyncio.wait_for(asyncio.gather(broker._fill("pets"), broker._fill("pets")), 10)
    finally:
        del broker._read_room
    assert recorder.offsets("pets") == [1, 2, 3, 4]
