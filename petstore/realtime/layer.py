"""The real-time layer of one app: broker, hub and outbox relay, started and stopped in the lifespan.

``create_app``'s lifespan builds one :class:`Realtime` from the app's
:class:`~petstore.realtime.parts.Parts`, starts it
after the plugins, checks :meth:`Realtime.ready` in ``/readyz`` and stops it first. Both
transports (``/ws`` and SSE) reach it with :func:`realtime` and share :meth:`Realtime.subscribe`,
the one place where a subscription's history, snapshot and live events are put together without
gap or duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from petstore.access import Principal
from petstore.db import answers
from petstore.realtime import events, rooms
from petstore.realtime.broker import Broker, BrokerUnavailable, Message, Since, create_broker
from petstore.realtime.hub import POLICY_VIOLATION, RESTARTING, Connection, Hub
from petstore.realtime.parts import Parts
from petstore.realtime.relay import Relay

logger = logging.getLogger("petstore.realtime")

SHUTDOWN_SECONDS = 5.0
#: Snapshots kept, by room, for the subscribers that come while the room has not moved.
SNAPSHOTS_KEPT = 4096


@dataclass(frozen=True)
class Subscribed:
    """The answer to a subscription: position, whether ``since`` was honoured, the snapshot, the replay."""

    room: str
    epoch: str
    offset: int
    recovered: bool
    snapshot: Any
    replay: list[Message]


class Realtime:
    def __init__(self, parts: Parts) -> None:
        self.settings = parts.settings
        self.plugins = parts.plugins
        self.sessions = parts.sessions
        tracing = parts.plugins.tracing
        if tracing is not None:
            events.keep_trace_context(parts.sessions, tracing.context)
        self.hub = Hub(parts.plugins.observe, tracing)
        self.broker: Broker = create_broker(parts.settings, self.hub.deliver, parts.plugins.observe, parts.redis)
        self.relay = Relay(parts, self.broker)
        #: room -> ((epoch, offset), its snapshot read at that position), least recently used first.
        self._snapshots: OrderedDict[str, tuple[tuple[str, int], asyncio.Future[Any]]] = OrderedDict()
        #: Clean-up tasks started where awaiting is impossible (see ``sse.release``), kept referenced.
        self.background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.broker.start()
        self.relay.start()

    async def ready(self) -> None:
        """Raise :class:`BrokerUnavailable` unless the broker is delivering (``/readyz``'s ``broker``)."""
        if not self.broker.connected:
            raise BrokerUnavailable("the broker is not delivering")

    async def stop(self) -> None:
        # Clients first (1012: reconnect and recover elsewhere), then what feeds them.
        await self.hub.close_all(RESTARTING, SHUTDOWN_SECONDS)
        await self.relay.stop()
        await self.broker.stop()

    async def authorized(self, principal: Principal | None, room: str) -> bool:
        """The core's rule and every plugin's: all must allow."""
        if not rooms.may_join(principal, room):
            return False
        return await self.plugins.ws_authorize(principal, room) is not False

    async def subscribe(self, conn: Connection, room: str, since: Since | None) -> Subscribed:
        """Join ``room`` and read where it stands; live events wait until :meth:`go_live`.

        Order matters: the broker watches the room (live events start buffering) BEFORE its
        position and history are read, and the snapshot is read after the position, so every
        event after ``offset`` is either buffered or still to come, and the snapshot is never
        older than ``offset``.
        """
        if room in conn.subscriptions:
            await self.unsubscribe(conn, room)
        self.hub.join(conn, room)
        try:
            await self.broker.watch(room)
        except BaseException:
            self.hub.leave(conn, room)
            raise
        try:
            history = await self.broker.history(room, since)
            recovered = since is not None and history.messages is not None
            snapshot = None if recovered else await self._snapshot_at(room, history.epoch, history.offset)
        except BaseException:
            await self.unsubscribe(conn, room)
            raise
        return Subscribed(room, history.epoch, history.offset, recovered, snapshot, history.messages or [])

    def go_live(self, conn: Connection, subscribed: Subscribed) -> None:
        subscription = conn.subscriptions.get(subscribed.room)
        if subscription is not None:
            self.hub.go_live(subscription, subscribed.epoch, subscribed.offset)

    async def unsubscribe(self, conn: Connection, room: str) -> bool:
        if not self.hub.leave(conn, room):
            return False
        await self.broker.unwatch(room)
        return True

    async def disconnect(self, conn: Connection) -> None:
        for room in self.hub.drop(conn):
            await self.broker.unwatch(room)

    def end_sessions(self, match: Callable[[Principal], bool]) -> int:
        """End this instance's live sessions (WebSocket: close 1008; SSE: the stream ends) whose
        principal ``match`` picks; how many.

        For plugins whose credentials stop standing: a revoked token, a deleted account. Reaching
        every instance is the caller's part (the auth plugin calls it wherever a revocation
        arrives). One pass over the connections when called, nothing per event."""
        return self.hub.close_sessions(match, POLICY_VIOLATION)

    async def _snapshot_at(self, room: str, epoch: str, offset: int) -> Any:
        """The room's snapshot for a subscriber at ``offset`` of ``epoch``: read once per position.

        A snapshot read after the room stood at a position reflects every event up to it, and
        every change to what a snapshot shows (a pet, the counts) is an event of its room: while
        the room stays at that position, the same snapshot serves every subscriber. A reconnect
        storm after a restart (thousands joining ``inventory`` at one position) then costs one
        query, not one per client; concurrent subscribers share the one read in flight."""
        key = (epoch, offset)
        kept = self._snapshots.get(room)
        if kept is not None and kept[0] == key:
            self._snapshots.move_to_end(room)
            return await asyncio.shield(kept[1])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._snapshots[room] = (key, future)
        if len(self._snapshots) > SNAPSHOTS_KEPT:
            self._snapshots.popitem(last=False)
        try:
            value = await self.snapshot(room)
        except BaseException as exc:
            if self._snapshots.get(room, (None, None))[1] is future:
                del self._snapshots[room]
            future.set_exception(exc if isinstance(exc, Exception) else BrokerUnavailable("snapshot read cancelled"))
            future.exception()  # retrieved: those waiting on it get it; nobody else must
            raise
        future.set_result(value)
        if value is None and self._snapshots.get(room, (None, None))[1] is future:
            # No pet (yet): a pet created with this id by a seed or a migration says nothing in
            # its room, so absence is read again each time.
            del self._snapshots[room]
        return value

    async def snapshot(self, room: str) -> Any:
        """The current state a subscriber starts from: inventory counts, or the pet (null if gone)."""
        kind = rooms.room_kind(room)
        if kind == "inventory":
            async with self.sessions() as session:
                return await events.inventory_counts(session)
        if kind == "pet":
            pet_id = rooms.pet_id_of(room)
            assert pet_id is not None
            async with self.sessions() as session:
                answer = await answers.pet_answer(session, pet_id)  # the REST answer's JSON
            return None if answer is None else json.loads(answer)
        return None


def realtime(conn: HTTPConnection) -> Realtime:
    """The running layer of the app serving ``conn`` (its lifespan state carries it as ``realtime``)."""
    layer = getattr(conn.state, "realtime", None)
    if not isinstance(layer, Realtime):
        raise RuntimeError("the real-time layer is not running (is the app's lifespan on?)")
    return layer
