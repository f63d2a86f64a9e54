"""The broker: publishes room events with an offset and an epoch, keeps each room's recent
history, and hands every event of the rooms this instance watches to one ``deliver`` callback.

Two interchangeable backends, picked by configuration (``PETSTORE_REDIS_URL`` set or not):

- :class:`~petstore.realtime.broker.memory.MemoryBroker`: in-process, for one process.
- :class:`~petstore.realtime.broker.redis.RedisBroker`: Redis streams for history, pub/sub for fan-out
  between instances, one atomic Lua script per publish.

Contract, for both:

- Within one room, offsets increase by one per published event; the epoch changes only when
  the room's history is lost (a Redis restart without persistence, an expired room).
- ``deliver`` is called with each event of a watched room once, in offset order, epoch by
  epoch; a backend that reconnects fills the gap from history before delivering newer events.
- ``history(room, since)`` answers atomically: the room's current epoch and offset, and, when
  ``since`` is given and the history still proves continuity from it, every event after it.

An event travels as its ``frame``: the JSON text of the ``event`` message of SPEC §3, encoded
once by the publisher (offset and epoch inside, :func:`encode_frame`, which the Redis publish
script mirrors) and sent unchanged to every subscriber, whatever the transport. How a transport
puts that text on the wire (a WebSocket frame's header, say) is the transport's own business: it
may keep its encoding in the message's ``wire``, built once per event, which the broker and the
hub never read (:func:`petstore.server.uvicorn_ws.frame` does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from petstore.errors import PetstoreError
from petstore.realtime.rooms import room_kind

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

    from petstore.config import Settings


class BrokerUnavailable(PetstoreError):
    """The broker cannot be reached right now; the caller retries later (nothing was lost)."""


@dataclass(frozen=True)
class Since:
    """Where a client stood in a room: the last offset it saw, in that epoch."""

    epoch: str
    offset: int


@dataclass(eq=False)
class Message:
    """One published event of one room, with its encoded ``frame``."""

    room: str
    epoch: str
    offset: int
    event: str
    frame: str
    #: Unix time of the change's commit (the ``ts`` of the frame), for the delivery-lag metric.
    committed_at: float
    #: The room's kind (``inventory``, ``pet``, ...), the label of the per-room metrics.
    kind: str = ""
    #: Set by the first transport that sends it, so the lag is observed once per event and instance.
    lag_observed: bool = field(default=False, compare=False)
    #: The transports' encodings of the frame, each built once per event by the transport that
    #: owns it, under a key of its own, and shared by every connection it writes to (opaque here).
    wire: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    #: The trace context kept with the event's outbox row (JSON text; see ``trace_context()`` in
    #: :mod:`petstore.plugin`), for the hub's traced delivery; never part of the frame. None
    #: without tracing, and for an event read back from history.
    trace: str | None = field(default=None, compare=False, repr=False)

    @cached_property
    def payload(self) -> bytes:
        """The frame in UTF-8, encoded once for every connection that sends it."""
        return self.frame.encode()

    @classmethod
    def parse(cls, frame: str | bytes) -> Message:
        """A message from its frame, as read back from pub/sub or history."""
        text = frame.decode() if isinstance(frame, bytes) else frame
        body = json.loads(text)
        return cls(
            room=body["room"],
            epoch=body["epoch"],
            offset=int(body["offset"]),
            event=body["event"],
            frame=text,
            committed_at=parse_ts(body["ts"]),
            kind=room_kind(body["room"]) or "unknown",
        )


@dataclass(frozen=True)
class Publication:
    """One outbox row on its way out: one event, to each of its rooms."""

    rooms: list[str]
    event: str
    data_json: str
    ts: str
    #: The outbox id: publishing the same source to a room again is a no-op.
    source: int
    #: The trace context kept with the outbox row, as JSON text (see :attr:`Message.trace`).
    trace: str | None = None


@dataclass(frozen=True)
class History:
    """A room's position, and the events after ``since`` when history proves them complete.

    ``messages`` is None when no ``since`` was asked, or when history cannot prove continuity
    (other epoch, trimmed, expired, an offset from the future): the client must start over.
    """

    epoch: str
    offset: int
    messages: list[Message] | None


Deliver = Callable[[Message], None]
Observe = Callable[..., None]


class Broker(Protocol):
    """What the relay, the hub and the transports need of a broker."""

    #: True while the broker delivers the events of watched rooms (a Redis listener that is
    #: subscribed and caught up); False during an outage. Readiness and metrics report it.
    connected: bool

    async def start(self) -> None:
        """Connect; a backend whose server is down keeps retrying in the background."""

    async def stop(self) -> None: ...

    async def publish(self, room_names: list[str], event: str, data_json: str, ts: str, source: int) -> None:
        """Publish one event to all its rooms at once; ``source`` (the outbox id) makes a retried
        publish a no-op. Raises :class:`BrokerUnavailable` when the broker cannot take it now.
        """

    async def publish_all(self, publications: Sequence[Publication]) -> None:
        """Publish several in order, in one round trip where the backend can. On
        :class:`BrokerUnavailable` some may have gone out: the caller publishes them all again
        later, and the repeated sources are ignored.
        """

    async def watch(self, room: str) -> None:
        """This instance has a subscriber in ``room``: deliver its events (counted; returns once live)."""

    async def unwatch(self, room: str) -> None: ...

    async def history(self, room: str, since: Since | None) -> History: ...

    async def ping(self) -> None:
        """Raise when the broker is unreachable (readiness)."""


def format_ts(moment: datetime) -> str:
    """RFC 3339 with milliseconds, in UTC (a naive time is UTC: SQLite drops the zone)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def frame_tail(event: str, data_json: str, ts: str) -> str:
    """The part of an event's frame (its JSON text) that does not depend on offset and epoch: built
    once per publication, for each of its rooms."""
    return f'"event":{json.dumps(event)},"data":{data_json},"ts":{json.dumps(ts)}}}'


def encode_frame(room: str, offset: int, epoch: str, tail: str) -> str:
    """An event's frame: the JSON text of its ``event`` message, the same for every transport.

    Must build exactly what the Redis publish script builds, so both backends send the same bytes."""
    return f'{{"type":"event","room":{json.dumps(room)},"offset":{offset},"epoch":"{epoch}",{tail}'


def dumps(value: Any) -> str:
    """Compact JSON on one line (SSE ``data:`` lines must not contain newlines)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def create_broker(
    settings: Settings, deliver: Deliver, observe: Observe, redis: Redis | RedisCluster | None = None
) -> Broker:
    """The Redis broker when ``settings.redis_url`` is set (on the process's client ``redis``, which
    its owner closes), else the in-process one."""
    if settings.redis_url:
        from petstore.realtime.broker.redis import RedisBroker

        return RedisBroker(settings, deliver, observe, client=redis)
    from petstore.realtime.broker.memory import MemoryBroker

    return MemoryBroker(settings, deliver, observe)
