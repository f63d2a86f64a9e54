"""The hub: encode-once fan-out to bounded queues, the subscription merge, slow consumers, shutdown."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections import Counter
from typing import Any

from petstore.realtime.broker import Message, encode_frame, frame_tail
from petstore.realtime.hub import Hub
from tests.realtime.support import until


class Observed:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def __call__(self, name: str, value: float = 1.0, **labels: Any) -> None:
        self.counts[name] += value
        self.calls[name] += 1


def message(room: str, offset: int, epoch: str = "e1") -> Message:
    frame = encode_frame(room, offset, epoch, frame_tail("pet.deleted", '{"id":1}', "2026-01-01T00:00:00.000Z"))
    return Message.parse(frame)


async def test_one_event_object_goes_to_every_subscriber_of_its_room_only() -> None:
    hub = Hub(Observed())
    a, b, c = (hub.connection(name, 10) for name in "abc")
    for conn in (a, b):
        hub.go_live(hub.join(conn, "pets"), "e1", 0)
    hub.go_live(hub.join(c, "inventory"), "e1", 0)
    event = message("pets", 1)
    hub.deliver(event)
    batches = [await conn.next_batch(10) for conn in (a, b)]
    assert batches[0][0] is event and batches[1][0] is event  # encoded once, shared
    assert hub.subscribers("pets") == 2 and hub.subscribers("inventory") == 1
    hub.deliver(message("inventory", 1))
    assert [m.room for m in await c.next_batch(10)] == ["inventory"]  # type: ignore[union-attr]


async def test_a_new_subscription_buffers_live_events_and_releases_only_unseen_ones() -> None:
    hub = Hub(Observed())
    conn = hub.connection("a", 10)
    subscription = hub.join(conn, "pets")
    for offset in (4, 5, 6):
        hub.deliver(message("pets", offset))
    hub.deliver(message("pets", 1, epoch="e2"))  # a new epoch arrived meanwhile: always released
    conn.put_nowait("subscribed")  # what the transport sends before going live
    hub.go_live(subscription, "e1", 5)
    batch = await conn.next_batch(10)
    assert batch[0] == "subscribed"
    assert [(m.epoch, m.offset) for m in batch[1:]] == [("e1", 6), ("e2", 1)]  # type: ignore[union-attr]


async def test_a_full_queue_closes_that_connection_with_1013_and_the_others_keep_receiving() -> None:
    observed = Observed()
    hub = Hub(observed)
    slow, fast = hub.connection("slow", 3), hub.connection("fast", 100)
    for conn in (slow, fast):
        hub.go_live(hub.join(conn, "pets"), "e1", 0)
    for offset in range(1, 11):
        hub.deliver(message("pets", offset))
    assert slow.close_code == 1013
    assert await slow.next_batch(10) == []
    assert observed.counts["ws.slow_consumer"] == 1
    assert [m.offset for m in await fast.next_batch(100)] == list(range(1, 11))  # type: ignore[union-attr]
    assert fast.close_code is None


async def test_a_closed_connection_lets_go_of_its_queue_at_once() -> None:
    """Its queue held the slow consumer's events until a full GC collected the connection's
    reference cycle: RSS 88 to 739 MB over four rounds of slow consumers."""
    hub = Hub(Observed())
    slow = hub.connection("slow", 3)
    hub.go_live(hub.join(slow, "pets"), "e1", 0)
    held = [message("pets", offset) for offset in range(1, 5)]
    refs = [weakref.ref(m) for m in held]
    for m in held:
        hub.deliver(m)
    assert slow.close_code == 1013
    del held, m
    assert [r() for r in refs] == [None] * 4  # nothing keeps them: the connection itself is still alive
    assert slow.close_code == 1013


async def test_a_subscription_that_buffers_too_much_is_a_slow_consumer_too() -> None:
    observed = Observed()
    hub = Hub(observed)
    conn = hub.connection("a", 2)
    hub.join(conn, "pets")
    for offset in range(1, 4):
        hub.deliver(message("pets", offset))
    assert conn.close_code == 1013 and observed.counts["ws.slow_consumer"] == 1


async def test_batches_are_bounded_in_count_and_size() -> None:
    hub = Hub(Observed())
    conn = hub.connection("a", 100)
    for _ in range(10):
        conn.put_nowait("x" * 100)
    assert len(await conn.next_batch(4)) == 4
    assert len(await conn.next_batch(100, max_chars=250)) == 2
    assert len(await conn.next_batch(100, max_chars=10)) == 1  # never empty while items wait


async def test_close_all_asks_every_connection_to_close_and_waits_until_they_are_gone() -> None:
    hub = Hub(Observed())
    conns = [hub.connection(str(n), 10) for n in range(3)]
    loop = asyncio.get_running_loop()
    for conn in conns:
        hub.join(conn, "pets")
        # A transport told to close goes away a loop turn later, as a session does.
        conn.attach(on_close=functools.partial(loop.call_soon, hub.drop, conn))
    await asyncio.wait_for(hub.close_all(1012, 5.0), 5.0)
    assert [conn.close_code for conn in conns] == [1012, 1012, 1012]
    assert not hub.connections and hub.subscribers("pets") == 0


async def test_a_sender_started_on_demand_is_told_of_each_queueing_and_takes_without_waiting() -> None:
    """The WebSocket's sender runs only while something is queued (an idle socket holds no task):
    ``on_queued`` says when to start one, ``take_batch`` never waits, and a sender waiting in
    ``next_batch`` (SSE's) is woken instead of a new one being asked for."""
    hub = Hub(Observed())
    conn = hub.connection("a", 100)
    starts: list[int] = []
    conn.attach(on_queued=lambda: starts.append(len(starts)))
    assert conn.take_batch(10) == [] and starts == []
    conn.put_nowait("one")
    conn.put_nowait("two")
    assert starts == [0, 1]  # started once, then asked again: a running sender ignores it
    assert conn.take_batch(10) == ["one", "two"]
    conn.sent()
    assert conn.take_batch(10) == []
    waiting = asyncio.create_task(conn.next_batch(10))
    await until(lambda: conn._wake is not None, "the sender to wait")
    conn.put_nowait("three")
    assert await asyncio.wait_for(waiting, 5.0) == ["three"] and starts == [0, 1]
    conn.sent()
    conn.close_when_sent(1008)
    assert starts == [0, 1, 2] and conn.take_batch(10) == [] and conn.close_code == 1008
    conn.put_nowait("too late")
    assert starts == [0, 1, 2]  # closing: nothing is queued, no sender asked for


async def test_close_all_gives_up_after_its_bound() -> None:
    hub = Hub(Observed())
    stuck = hub.connection("stuck", 10)
    await asyncio.wait_for(hub.close_all(1012, 0.1), 5.0)
    assert stuck.close_code == 1012 and stuck in hub.connections


# ------------------------------------------------------------- the direct path (write_now)


async def next_turn() -> None:
    """Let the loop run what the hub scheduled for the end of this turn (its flush)."""
    await asyncio.sleep(0)


class Writer:
    """A transport's synchronous writer: records each write, or refuses while ``refusing``."""

    def __init__(self) -> None:
        self.writes: list[list[Message]] = []
        self.refusing = False

    def __call__(self, messages: list[Message]) -> bool:
        if self.refusing:
            return False
        self.writes.append(list(messages))
        return True

    @property
    def offsets(self) -> list[list[int]]:
        return [[m.offset for m in write] for write in self.writes]


def direct(hub: Hub, name: str, room: str = "pets") -> tuple[Any, Writer]:
    conn = hub.connection(name, 10)
    writer = Writer()
    conn.attach(write_now=writer)
    hub.go_live(hub.join(conn, room), "e1", 0)
    return conn, writer


async def test_events_for_idle_connections_are_written_once_the_turn_ends_and_counted_as_sent() -> None:
    observed = Observed()
    hub = Hub(observed)
    (a, wa), (b, wb) = direct(hub, "a"), direct(hub, "b")
    event = message("pets", 1)
    hub.deliver(event)
    assert wa.writes == [] and wb.writes == []  # set aside until this turn of the loop is over
    await next_turn()
    assert wa.writes == [[event]] and wb.writes == [[event]]
    assert not a._items and not b._items  # nothing queued, no sender task woken
    assert observed.counts["ws.message_sent"] == 2
    assert observed.calls["event.delivery_lag"] == 1  # once per event, not per connection


async def test_events_delivered_in_one_turn_go_out_in_one_write_per_connection() -> None:
    hub = Hub(Observed())
    _, writer = direct(hub, "a")
    for offset in (1, 2, 3):  # a relay pass publishing a backlog: all in one turn
        hub.deliver(message("pets", offset))
    await next_turn()
    hub.deliver(message("pets", 4))
    await next_turn()
    assert writer.offsets == [[1, 2, 3], [4]]


async def test_events_queue_behind_what_is_queued_or_being_sent_so_order_holds() -> None:
    hub = Hub(Observed())
    conn, writer = direct(hub, "a")
    hub.deliver(message("pets", 1))  # set aside ...
    conn.put_nowait("subscribed")  # ... so a later control message must not overtake it
    await next_turn()
    assert writer.writes == []
    batch = await conn.next_batch(10)  # the sender holds a batch it has not finished writing ...
    assert [m if isinstance(m, str) else m.offset for m in batch] == [1, "subscribed"]
    hub.deliver(message("pets", 2))
    conn.sent()  # ... until now
    hub.deliver(message("pets", 3))  # the queue still holds 2: 3 goes behind it
    await next_turn()
    assert writer.writes == []
    assert [m.offset for m in await conn.next_batch(10)] == [2, 3]  # type: ignore[union-attr]
    conn.sent()
    hub.deliver(message("pets", 4))
    await next_turn()
    assert writer.offsets == [[4]]


async def test_what_the_writer_refuses_is_queued_and_still_bounded() -> None:
    observed = Observed()
    hub = Hub(observed)
    conn, writer = direct(hub, "a")
    writer.refusing = True  # say, the client's socket buffer is full
    hub.deliver(message("pets", 1))
    await next_turn()
    assert [m.offset for m in await conn.next_batch(10)] == [1]  # type: ignore[union-attr]  (not yet sent)
    for offset in range(2, 13):
        hub.deliver(message("pets", offset))
    assert writer.writes == [] and observed.counts["ws.message_sent"] == 0
    assert conn.close_code == 1013  # the eleventh did not fit a queue of 10
