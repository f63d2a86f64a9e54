"""``GET /api/v3/events?room=…&room=…``: the rooms' events as Server-Sent Events, on the same hub.

Each event goes out as ``id: <room>:<epoch>:<offset>``, ``event: <event name>``, ``data: <the
event message of SPEC §3>``. Each room first gets an ``event: subscribed`` carrying the
``subscribed`` message (position, ``recovered``, snapshot). A reconnecting ``EventSource``
sends ``Last-Event-ID``, which recovers that room like ``since``; because one id names one room,
a client of several rooms may also pass ``since=<room>:<epoch>:<offset>`` once per room.
Authorization is the WebSocket's (the auth plugin's middleware reads the ``Authorization``
header); a refused room is a 401/403 before the stream starts. A client too slow for its
bounded queue has its stream ended; it reconnects with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute

from petstore import access
from petstore.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable, Unauthorized
from petstore.operations import Param, operation, ref
from petstore.realtime import rooms
from petstore.realtime.broker import BrokerUnavailable, Message, Since, dumps
from petstore.realtime.hub import POLICY_VIOLATION, Connection, Outgoing, observe_lag
from petstore.realtime.layer import Realtime, Subscribed, realtime

#: The ASGI extension with which a response says it is an event stream, so that the server ends it
#: when it stops (:mod:`petstore.server.uvicorn_http`).
STREAM_EXTENSION = "petstore.http.stream"
MAX_BATCH = 64
RETRY_MS = 2000


def parse_event_id(text: str) -> tuple[str, Since]:
    """``room:epoch:offset`` (room names contain colons, so split from the right)."""
    parts = text.strip().rsplit(":", 2)
    if len(parts) != 3 or not parts[2].isdigit() or not parts[1] or rooms.room_kind(parts[0]) is None:
        raise BadRequest("Last-Event-ID / since must be <room>:<epoch>:<offset> as the server sent it")
    return parts[0], Since(epoch=parts[1], offset=int(parts[2]))


def format_event(message: Message) -> str:
    return f"id: {message.room}:{message.epoch}:{message.offset}\nevent: {message.event}\ndata: {message.frame}\n\n"


def format_subscribed(result: Subscribed) -> str:
    body = {
        "type": "subscribed",
        "id": None,
        "room": result.room,
        "epoch": result.epoch,
        "offset": result.offset,
        "recovered": result.recovered,
        "snapshot": result.snapshot,
    }
    return f"event: subscribed\ndata: {dumps(body)}\n\n"


EVENT_ID = {"type": "string", "pattern": "^.+:.+:[0-9]+$"}


@operation(
    "GET",
    "/events",
    "events",
    # Each room's rule decides (rooms.may_join), after the rooms are known.
    permission=None,
    tag="events",
    summary="Stream rooms' events as Server-Sent Events.",
    description="Each room first sends `event: subscribed` (its position and snapshot), then every event as "
    "`id: <room>:<epoch>:<offset>`, `event: <name>`, `data: <the event message>`. A reconnect with "
    "`Last-Event-ID`, or `since` once per room, recovers what was missed. `orders` needs staff; "
    "`user:{username}` that user or an admin (401 when anonymous).",
    params=(
        Param(
            "room",
            "query",
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "Rooms: `inventory`, `pets`, `pet:{id}`, `orders`, `user:{username}`",
            required=True,
        ),
        Param(
            "since",
            "query",
            {"type": "array", "items": EVENT_ID},
            "`<room>:<epoch>:<offset>` of the last event seen, once per room",
        ),
        Param(
            "Last-Event-ID",
            "header",
            EVENT_ID,
            "Sent by a reconnecting EventSource: the id of the last event it saw",
        ),
    ),
    ok=ref("ServerSentEvent"),
    ok_media="text/event-stream",
    ok_description="The event stream, until the client goes away",
    errors={
        400: "No room named, too many rooms, or a malformed `since` / `Last-Event-ID`",
        401: "A room that needs a signed-in user (`orders`, `user:{username}`), asked for anonymously",
        403: "Your role may not subscribe to one of the rooms",
        404: "No such room",
        503: "Events are unavailable right now (the broker is down); retry shortly",
    },
)
async def events_endpoint(request: Request) -> Response:
    layer = realtime(request)
    names = list(dict.fromkeys(request.query_params.getlist("room")))
    if not names:
        raise BadRequest("name at least one room: ?room=inventory&room=pets")
    if len(names) > layer.settings.ws_max_subscriptions:
        raise BadRequest(f"too many rooms (at most {layer.settings.ws_max_subscriptions})")
    for name in names:
        if rooms.room_kind(name) is None:
            raise NotFound(f"no such room: {name[:80]!r}")
    principal = access.principal(request)
    for name in names:
        if not await layer.authorized(principal, name):
            if principal is None:
                raise Unauthorized(f"sign in to subscribe to {name}")
            raise Forbidden(f"you may not subscribe to {name}")
    positions: dict[str, Since] = {}
    for text in request.query_params.getlist("since"):
        room, since = parse_event_id(text)
        positions[room] = since
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        room, since = parse_event_id(last_event_id)
        positions[room] = since

    conn = layer.hub.connection("sse-" + uuid.uuid4().hex[:12], layer.settings.ws_queue_size, principal)
    try:
        for name in names:
            result = await layer.subscribe(conn, name, positions.get(name))
            conn.put_nowait(format_subscribed(result))
            for message in result.replay:
                conn.put_nowait(message)
            layer.go_live(conn, result)
    except BrokerUnavailable:
        release(layer, conn)
        raise ServiceUnavailable("events are unavailable right now; retry shortly", retry_after=2) from None
    except BaseException:
        release(layer, conn)  # a stream that fails half-open gives back every room it took
        raise
    # Served by petstore.server.uvicorn_http: the server then ends this stream when it stops (petstore.server.shutdown).
    mark = request.scope.get("extensions", {}).get(STREAM_EXTENSION, {}).get("mark")
    if mark is not None:
        mark()
    return StreamingResponse(
        stream(layer, conn),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def stream(layer: Realtime, conn: Connection) -> AsyncIterator[str]:
    heartbeat = layer.settings.ws_heartbeat_seconds
    observe = layer.plugins.observe
    # The stream ends when its token expires, as a WebSocket closes (a revocation ends it sooner).
    principal = conn.principal
    expiry = None
    if principal is not None and principal.expires_at is not None:
        delay = max(0.0, principal.expires_at - time.time())
        expiry = asyncio.get_running_loop().call_later(delay, conn.close, POLICY_VIOLATION)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        while True:
            try:
                batch: list[Outgoing] = await asyncio.wait_for(conn.next_batch(MAX_BATCH), heartbeat)
            except TimeoutError:
                yield ": keep-alive\n\n"  # a comment: keeps proxies from timing the stream out
                continue
            if not batch:
                return  # closed: too slow, or the server is stopping
            chunks = []
            for item in batch:
                if isinstance(item, str):
                    chunks.append(item)
                    continue
                chunks.append(format_event(item))
                observe_lag(observe, item)
            yield "".join(chunks)
            conn.sent()
    finally:
        if expiry is not None:
            expiry.cancel()
        release(layer, conn)


def release(layer: Realtime, conn: Connection) -> None:
    """Leave the hub now; the broker's unwatch runs as its own task, because this may run inside a
    cancelled scope (a client that went away), where awaiting is not possible."""
    rooms_left = layer.hub.drop(conn)
    if rooms_left:
        task = asyncio.get_running_loop().create_task(unwatch_all(layer, rooms_left))
        layer.background.add(task)
        task.add_done_callback(layer.background.discard)


async def unwatch_all(layer: Realtime, names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(BrokerUnavailable):
            await layer.broker.unwatch(name)


def routes() -> list[BaseRoute]:
    return [events_endpoint.route("/api/v3")]
