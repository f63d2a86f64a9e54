"""The hub: this instance's rooms and the local connections subscribed to them.

Fan-out is encode-once: the broker hands over a :class:`~petstore.realtime.broker.Message` whose frame
was encoded by the publisher, and the hub puts that same object on every subscriber's bounded
queue with :meth:`Connection.put_nowait`. Nothing here awaits a client: a sender task of the
transport's drains a connection's queue, and a connection whose queue is full is closed
with 1013 instead of slowing the others down.

The direct path: a transport that can write synchronously (the ``write_now`` it gives
:meth:`Connection.attach`; see :mod:`petstore.server.uvicorn_ws`) skips the queue and the sender
task. An event for a connection with nothing queued or being sent is set aside, and once the
events of this turn of the loop are delivered (``call_soon``) each connection gets what was set
aside for it in one write: one event alone when the server keeps up, several back to back when
it falls behind, so a busy server makes fewer, larger writes instead of queueing up. Order
holds: anything queued later goes behind what was set aside, and what the writer refuses (a
client that does not read) goes to the bounded queue like everything else.

A new subscription starts *buffering*: live events are held aside while the transport reads
history and the snapshot, then :meth:`Hub.go_live` releases the ones the history did not
already cover, so a client sees no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from petstore.realtime import rooms as room_names
from petstore.realtime.broker import Message

if TYPE_CHECKING:
    from petstore.access import Principal
    from petstore.plugin import Tracing

logger = logging.getLogger("petstore.realtime.hub")

SLOW_CONSUMER = 1013
#: The session's credentials no longer stand (expired, revoked, the account deleted).
POLICY_VIOLATION = 1008
RESTARTING = 1012

#: What a connection's queue holds: events (shared objects) and control messages (own text).
Outgoing = Message | str


#: A transport's synchronous write of events (the direct path): True when it wrote them all, in order.
WriteNow = Callable[[list[Message]], bool]


class Connection:
    """One client of a transport: its bounded queue, its subscriptions, its principal.

    The transport that serves it attaches its writer once, with :meth:`attach`, and lets go of it
    with :meth:`detach`; everything else it changes goes through a method too (:meth:`sign_in`,
    :meth:`next_batch` or :meth:`take_batch` and :meth:`sent`, :meth:`close`).

    A sender either waits in :meth:`next_batch` all the connection long (SSE), or is started by
    the ``on_queued`` it attaches whenever something is queued and ends once it has taken
    everything, with :meth:`take_batch` (the WebSocket's): an idle connection then holds no task.
    """

    __slots__ = (
        "_items",
        "_observe",
        "_on_close",
        "_on_queued",
        "_principal",
        "_sending",
        "_set_aside",
        "_wake",
        "_write_now",
        "aside",
        "close_after_sending",
        "close_code",
        "id",
        "limit",
        "subscriptions",
    )

    def __init__(
        self,
        connection_id: str,
        limit: int,
        observe: Callable[..., None],
        set_aside: Callable[[Connection], None] | None = None,
        principal: Principal | None = None,
    ) -> None:
        self.id = connection_id
        self.limit = limit
        self._principal = principal
        self.subscriptions: dict[str, Subscription] = {}
        self.close_code: int | None = None
        #: Close with this code once what is queued now has gone out (see ``close_when_sent``).
        self.close_after_sending: int | None = None
        self._on_close: Callable[[], None] | None = None
        self._on_queued: Callable[[], None] | None = None
        self._write_now: WriteNow | None = None
        #: The sender holds a batch it has not finished sending (events must wait behind it).
        self._sending = False
        self._items: list[Outgoing] = []  # not a deque, whose first block (~0.7 KB) it would always hold
        #: What the sender awaits while nothing is queued (set only then): a future, not an
        #: ``asyncio.Event``, whose deque of waiters would cost every idle connection ~0.8 KB.
        self._wake: asyncio.Future[None] | None = None
        self._observe = observe
        #: Events for the direct path, written when the hub flushes (see the module docstring).
        self.aside: list[Message] = []
        self._set_aside = set_aside

    def attach(
        self,
        *,
        write_now: WriteNow | None = None,
        on_close: Callable[[], None] | None = None,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        """The transport serving this connection, once it runs: ``write_now`` writes events at once
        when it can (the direct path, see the module docstring; None: every event goes through the
        queue), ``on_close`` is called once when the connection must close, so that the transport
        can interrupt its tasks, and ``on_queued`` whenever something is queued (or the connection
        is to close once its queue is sent) while no sender waits in :meth:`next_batch`."""
        self._write_now = write_now
        self._on_close = on_close
        self._on_queued = on_queued

    def detach(self) -> None:
        """The transport is done with this connection: nothing is written or interrupted through it any more."""
        self._write_now = None
        self._on_close = None
        self._on_queued = None

    @property
    def principal(self) -> Principal | None:
        """Who the client is (None: anonymous), for permissions and :meth:`Hub.close_sessions`."""
        return self._principal

    def sign_in(self, principal: Principal) -> None:
        """The client proved it is ``principal`` (a WebSocket ``auth``): it is who it is from now on."""
        self._principal = principal

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def put_nowait(self, item: Outgoing) -> None:
        """Queue ``item`` for the sender task, or set an event aside for the direct path when
        nothing is queued or being sent (see the module docstring)."""
        if self.close_code is not None or self.close_after_sending is not None:
            return
        items = self._items
        aside = self.aside
        if self._write_now is not None and not items and not self._sending and not isinstance(item, str):
            if len(aside) >= self.limit:
                self.overflow()
                return
            if not aside and self._set_aside is not None:
                self._set_aside(self)
            aside.append(item)
            return
        if aside:
            self.requeue()  # what was set aside goes first
        if len(items) >= self.limit:
            self.overflow()
            return
        items.append(item)
        self._wake_sender()

    def requeue(self) -> None:
        """Move the events set aside to the queue, for the sender task (bounded like the rest)."""
        aside, self.aside = self.aside, []
        for message in aside:
            if len(self._items) >= self.limit:
                self.overflow()
                return
            self._items.append(message)
        self._wake_sender()

    def _wake_sender(self) -> None:
        """Something was queued: wake the sender waiting in :meth:`next_batch`, or ask for one."""
        if not self._wake_waiting() and self._on_queued is not None:
            self._on_queued()

    def _wake_waiting(self) -> bool:
        """Wake the sender waiting in :meth:`next_batch`, if one waits (True)."""
        wake = self._wake
        if wake is None:
            return False
        if not wake.done():
            wake.set_result(None)
        return True

    def overflow(self) -> None:
        """The client does not keep up: close it with 1013 rather than wait for it."""
        if self.close_code is None:
            self._observe("ws.slow_consumer")
            logger.info("connection %s is too slow: closing it with %d", self.id, SLOW_CONSUMER)
            self.close(SLOW_CONSUMER)

    def close(self, code: int) -> None:
        """Ask the transport to close this connection with ``code`` (the first request wins)."""
        if self.close_code is None:
            self.close_code = code
            # Nothing queued will be sent now: let it go at once. A slow consumer's queue can be
            # hundreds of large events, and the connection itself may live on in a reference
            # cycle (its transport's tasks) until a full garbage collection.
            self._items.clear()
            self.aside = []
            self._wake_waiting()  # a waiting sender returns empty; a started one is interrupted below
            if self._on_close is not None:
                self._on_close()

    def close_when_sent(self, code: int) -> None:
        """Close with ``code`` after what is already queued (say, the error explaining why) is sent."""
        if self.close_code is None and self.close_after_sending is None:
            self.close_after_sending = code
            self._wake_sender()

    async def next_batch(self, most: int, max_chars: int = 256 * 1024) -> list[Outgoing]:
        """Wait for queued items and take up to ``most`` of them, about ``max_chars`` of text at most
        (at least one), so a batch of large events stays a reasonable frame; empty once closing.

        The sender holds the batch until it calls :meth:`sent`: meanwhile new events queue behind
        it instead of taking the direct path, so the order holds."""
        while not self._items and self.close_code is None and self.close_after_sending is None:
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._wake
            finally:
                self._wake = None
        return self.take_batch(most, max_chars)

    def take_batch(self, most: int, max_chars: int = 256 * 1024) -> list[Outgoing]:
        """:meth:`next_batch` without the wait: empty when nothing is queued (closing, at once, if it
        was to close once its queue was sent)."""
        items = self._items
        if self.close_code is not None:
            return []
        if not items:
            if self.close_after_sending is not None:
                self.close(self.close_after_sending)
            return []
        size, count, end = _size(items[0]), 1, min(len(items), most)
        while count < end:
            size += _size(items[count])
            if size > max_chars:
                break
            count += 1
        batch = items[:count]
        del items[:count]  # emptied, a list frees its array: an idle connection's queue holds none
        self._sending = True
        return batch

    def sent(self) -> None:
        """The batch from :meth:`next_batch` or :meth:`take_batch` is written (or given up on)."""
        self._sending = False


def observe_lag(observe: Callable[..., None], message: Message) -> None:
    """The commit-to-send lag of ``message``, observed by whichever path sends it first (once per
    event and instance)."""
    if not message.lag_observed:
        message.lag_observed = True
        observe("event.delivery_lag", max(0.0, time.time() - message.committed_at))


def _size(item: Outgoing) -> int:
    return len(item) if isinstance(item, str) else len(item.frame)


class Subscription:
    """A connection's membership of one room; ``pending`` holds live events until it goes live."""

    __slots__ = ("connection", "kind", "pending", "room")

    def __init__(self, connection: Connection, room: str) -> None:
        self.connection = connection
        self.room = room
        self.kind = room_names.room_kind(room) or "unknown"
        self.pending: list[Message] | None = []

    def offer(self, message: Message) -> None:
        """Hand a live event to the connection, or hold it while the subscription buffers."""
        pending = self.pending
        if pending is None:
            self.connection.put_nowait(message)
        elif len(pending) >= self.connection.limit:
            self.connection.overflow()
        else:
            pending.append(message)


class Hub:
    """Rooms → local subscriptions. Created per app in the lifespan; see the module docstring."""

    def __init__(self, observe: Callable[..., None], tracing: Tracing | None = None) -> None:
        self._rooms: dict[str, dict[Connection, Subscription]] = {}
        self.connections: set[Connection] = set()
        self._observe = observe
        self._tracing = tracing
        self._empty = asyncio.Event()
        self._empty.set()
        self._aside: list[Connection] = []
        #: Set by :meth:`close_every` when the server stops: a connection made now closes at once.
        self.closing_code: int | None = None

    def connection(self, connection_id: str, limit: int, principal: Principal | None = None) -> Connection:
        """A new connection of a transport, which then attaches its writer (:meth:`Connection.attach`)."""
        conn = Connection(connection_id, limit, self._observe, self._set_aside, principal)
        self.connections.add(conn)
        self._empty.clear()
        if self.closing_code is not None:
            conn.close(self.closing_code)
        return conn

    def deliver(self, message: Message) -> None:
        """The broker's callback: one event to every local subscriber of its room."""
        members = self._rooms.get(message.room)
        if not members:
            return
        if message.trace is not None and self._tracing is not None:
            # One span for the event on this instance, however many subscribers it goes to.
            with self._tracing.delivering(message.event, message.room, message.trace, len(members)):
                for subscription in tuple(members.values()):
                    subscription.offer(message)
            return
        for subscription in tuple(members.values()):
            subscription.offer(message)

    def _set_aside(self, conn: Connection) -> None:
        if not self._aside:
            asyncio.get_running_loop().call_soon(self.flush)
        self._aside.append(conn)

    def flush(self) -> None:
        """Write what each connection has set aside, in one write each (see the module docstring)."""
        conns, self._aside = self._aside, []
        written: dict[Message, int] = {}
        for conn in conns:
            messages = conn.aside
            if not messages or conn.close_code is not None:
                continue
            write_now = conn._write_now
            if write_now is not None and write_now(messages):
                conn.aside = []
                for message in messages:
                    written[message] = written.get(message, 0) + 1
            else:
                conn.requeue()
        for message, count in written.items():
            observe_lag(self._observe, message)
            self._observe("ws.message_sent", float(count), room_kind=message.kind)

    def join(self, conn: Connection, room: str) -> Subscription:
        """Subscribe ``conn`` to ``room`` in buffering mode (see :meth:`go_live`)."""
        subscription = Subscription(conn, room)
        self._rooms.setdefault(room, {})[conn] = subscription
        conn.subscriptions[room] = subscription
        return subscription

    def go_live(self, subscription: Subscription, epoch: str, offset: int) -> None:
        """Release buffered events the client has not seen: anything after ``offset`` of ``epoch``."""
        pending, subscription.pending = subscription.pending or [], None
        for message in pending:
            if message.epoch == epoch and message.offset <= offset:
                continue  # covered by the history or the snapshot the client already has
            subscription.connection.put_nowait(message)

    def leave(self, conn: Connection, room: str) -> bool:
        if conn.subscriptions.pop(room, None) is None:
            return False
        members = self._rooms.get(room)
        if members is not None:
            members.pop(conn, None)
            if not members:
                del self._rooms[room]
        return True

    def drop(self, conn: Connection) -> list[str]:
        """Forget a closed connection; returns the rooms it was in."""
        left = list(conn.subscriptions)
        for room in left:
            self.leave(conn, room)
        conn.detach()
        conn.aside = []
        self.connections.discard(conn)
        if not self.connections:
            self._empty.set()
        return left

    def subscribers(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    def close_every(self, code: int, *, also_new: bool = False) -> None:
        """Ask every connection to close with ``code``; with ``also_new``, every one made from now on too
        (the server is stopping)."""
        if also_new:
            self.closing_code = code
        for conn in tuple(self.connections):
            conn.close(code)

    def close_sessions(self, match: Callable[[Principal], bool], code: int) -> int:
        """Close with ``code`` every connection whose principal ``match`` picks; how many.

        Called when credentials stop standing (a logout, a deleted account), never per event:
        one pass over this instance's connections."""
        ended = 0
        for conn in tuple(self.connections):
            principal = conn.principal
            if principal is not None and conn.close_code is None and match(principal):
                logger.info("connection %s: the session of %s ended, closing", conn.id, principal.username)
                conn.close(code)
                ended += 1
        return ended

    async def wait_empty(self, seconds: float | None) -> bool:
        """Wait until no connection is left, at most ``seconds`` (None: no bound); True if none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), seconds)
        return not self.connections

    async def close_all(self, code: int, wait_seconds: float) -> None:
        """Ask every connection to close with ``code`` and wait, at most ``wait_seconds``, until they are gone."""
        self.close_every(code)
        if not await self.wait_empty(wait_seconds):
            logger.warning(
                "%d connections were still open %.1fs after asking them to close", len(self.connections), wait_seconds
            )
