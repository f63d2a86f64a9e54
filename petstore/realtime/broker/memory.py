"""The in-process broker: one process, history in bounded deques, delivery by a direct call.

Same contract as the Redis broker (see :mod:`petstore.realtime.broker`), so everything above it is
tested in process against this one. A room idle for longer than the history TTL is forgotten
and starts a new epoch, as an expired Redis room does.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from petstore.config import Settings
from petstore.realtime.broker import Deliver, History, Message, Observe, Publication, Since, encode_frame, frame_tail


@dataclass
class _Room:
    epoch: str
    history: deque[Message]
    #: The outbox ids of the events in ``history``: a repeated one is not published again.
    sources: deque[int]
    offset: int = 0
    touched: float = field(default_factory=time.monotonic)


#: Every this many new rooms, empty and expired ones are swept (amortised: no timer task to run
#: and stop), so rooms that hold nothing stay fewer than this.
SWEEP_EVERY = 1024


class MemoryBroker:
    name = "memory"
    connected = True  # nothing to lose: delivery is a function call

    def __init__(self, settings: Settings, deliver: Deliver, observe: Observe | None = None) -> None:
        self._deliver = deliver
        self._observe = observe
        self._size = settings.history_size
        self._ttl = settings.history_ttl_seconds
        self._rooms: dict[str, _Room] = {}
        self._watched: dict[str, int] = {}
        self._created = 0

    async def start(self) -> None:
        # Always connected: ``petstore_broker_connected`` says so (0 would page as a stalled delivery).
        if self._observe is not None:
            self._observe("broker.connected", 1.0)

    async def stop(self) -> None:
        self._rooms.clear()

    def _room(self, name: str) -> _Room:
        room = self._rooms.get(name)
        now = time.monotonic()
        if room is None or now - room.touched > self._ttl:
            room = _Room(epoch=uuid.uuid4().hex, history=deque(maxlen=self._size), sources=deque(maxlen=self._size))
            self._rooms[name] = room
            self._created += 1
            if self._created % SWEEP_EVERY == 0:
                self._sweep(now)
        room.touched = now
        return room

    def _sweep(self, now: float) -> None:
        """Forget the rooms nobody watches that hold nothing (no history) or whose history has
        expired, as Redis expires their keys: one room per pet ever seen would otherwise stay in
        memory for the life of the process. An empty room's next reader starts a new epoch,
        which costs a client nothing it could have recovered."""
        gone = [
            name
            for name, room in self._rooms.items()
            if name not in self._watched and (not room.history or now - room.touched > self._ttl)
        ]
        for name in gone:
            del self._rooms[name]

    async def publish(
        self, room_names: list[str], event: str, data_json: str, ts: str, source: int, trace: str | None = None
    ) -> None:
        tail = frame_tail(event, data_json, ts)
        for room in room_names:
            state = self._room(room)
            if source in state.sources:
                continue  # published before (the Redis script does the same)
            state.sources.append(source)
            state.offset += 1
            message = Message.parse(encode_frame(room, state.offset, state.epoch, tail))
            message.trace = trace
            state.history.append(message)
            if room in self._watched:
                self._deliver(message)

    async def publish_all(self, publications: Sequence[Publication]) -> None:
        for p in publications:
            await self.publish(p.rooms, p.event, p.data_json, p.ts, p.source, p.trace)

    async def watch(self, room: str) -> None:
        self._watched[room] = self._watched.get(room, 0) + 1

    async def unwatch(self, room: str) -> None:
        count = self._watched.get(room, 0) - 1
        if count > 0:
            self._watched[room] = count
        else:
            self._watched.pop(room, None)

    async def history(self, room: str, since: Since | None) -> History:
        state = self._room(room)
        if since is None:
            return History(state.epoch, state.offset, None)
        return History(state.epoch, state.offset, continuation(state.epoch, state.offset, since, state.history))

    async def ping(self) -> None:
        return None


def continuation(
    epoch: str, offset: int, since: Since, retained: deque[Message] | list[Message]
) -> list[Message] | None:
    """The events after ``since`` if ``retained`` holds every one of them, else None."""
    if since.epoch != epoch or since.offset > offset or since.offset < 0:
        return None
    missed = [message for message in retained if message.offset > since.offset]
    if len(missed) != offset - since.offset:
        return None  # trimmed: the oldest missed events are gone
    if missed and missed[0].offset != since.offset + 1:
        return None
    return missed
