"""``/ws``: the WebSocket transport of SPEC §3.

One connection runs in the endpoint's own task, which reads client messages (one at a time, in
order), and, while its bounded queue holds something, a sender task that drains it (several
queued messages leave as one JSON array frame) and ends once it is empty. The authentication
deadline and token expiry are timers, not tasks: an idle connection costs little memory.
Whoever decides the connection must end calls ``conn.close(code)``, which interrupts both; the
endpoint then sends the close frame, with a bound on how long that may take.

Choices where the SPEC is silent (also in the README):

- A missing ``Origin`` is accepted (non-browser clients send none); a present one must be in
  ``PETSTORE_ALLOWED_ORIGINS``, else the upgrade is refused before it is accepted: 403 with the
  JSON error shape (:func:`deny_websocket`), and the refused origin is logged at WARNING.
- A connection that is anonymous must send ``auth`` or ``subscribe`` within
  ``ws_auth_timeout_seconds`` of connecting, else it is closed with 1008.
- A good ``auth`` message is answered with ``{"type": "authenticated", "id", "user"}``; a bad
  token gets an ``unauthorized`` error and the connection stays, as anonymous as before.
- When the broker cannot be reached during a ``subscribe`` the connection is closed with 1012,
  so the client reconnects and recovers with ``since`` once the server can serve it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from petstore import access
from petstore.errors import PetstoreError, database_unavailable, error_response
from petstore.realtime import rooms
from petstore.realtime.broker import BrokerUnavailable, Message, Since, dumps
from petstore.realtime.hub import POLICY_VIOLATION, RESTARTING, Connection, observe_lag
from petstore.realtime.layer import Realtime, realtime

logger = logging.getLogger("petstore.realtime.ws")

TOO_BIG = 1009
TRY_AGAIN_LATER = 1013  # too many messages (and, in the hub, too slow to keep up)
INTERNAL_ERROR = 1011
MAX_BATCH = 64
CLOSE_SECONDS = 5.0
#: The ASGI extension through which the server offers a direct write to the socket
#: (:mod:`petstore.server.uvicorn_ws`): events then skip the queue when they can.
WRITE_EXTENSION = "petstore.websocket.write"
#: The ASGI WebSocket Denial Response extension: an HTTP answer instead of the upgrade.
DENIAL_EXTENSION = "websocket.http.response"
MAX_LOGGED_ORIGIN = 200


async def deny_websocket(scope: Scope, receive: Receive, send: Send, response: Response, close_code: int) -> None:
    """Refuse an upgrade with ``response`` (status, headers, JSON body: SPEC §3) where the server
    offers the denial-response extension (uvicorn does), else with a plain close ``close_code``."""
    if DENIAL_EXTENSION in (scope.get("extensions") or {}):
        await response(scope, receive, send)  # Starlette sends websocket.http.response.start / body
    else:
        await send({"type": "websocket.close", "code": close_code})


class Refused(PetstoreError):
    """A client message cannot be served; becomes an ``error`` message, the connection stays."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_since(value: object) -> Since | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Refused("bad_request", "since must be an object {offset, epoch}")
    offset, epoch = value.get("offset"), value.get("epoch")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise Refused("bad_request", "since.offset must be a non-negative integer")
    if not isinstance(epoch, str) or not epoch or len(epoch) > 64:
        raise Refused("bad_request", "since.epoch must be the epoch string the server sent")
    return Since(epoch=epoch, offset=offset)


def encode_batch(frames: list[str]) -> str:
    return frames[0] if len(frames) == 1 else "[" + ",".join(frames) + "]"


class Session:
    """One accepted WebSocket connection and its protocol state."""

    __slots__ = (
        "active",
        "conn",
        "deadline",
        "expiry",
        "layer",
        "plugins",
        "reader",
        "reading",
        "sender",
        "settings",
        "websocket",
    )

    def __init__(self, websocket: WebSocket, layer: Realtime) -> None:
        self.websocket = websocket
        self.layer = layer
        self.settings = layer.settings
        self.plugins = layer.plugins
        self.conn: Connection = layer.hub.connection(
            uuid.uuid4().hex[:16], self.settings.ws_queue_size, access.principal(websocket)
        )
        self.active = False  # an auth or a subscription arrived: the auth deadline is met
        self.reader: asyncio.Task[Any] | None = None
        self.reading = False  # the reader is interrupted only inside read_loop, never while closing
        #: Runs while something is queued, then ends (see :meth:`start_sender`).
        self.sender: asyncio.Task[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.expiry: asyncio.TimerHandle | None = None

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read client messages in this task while a sender task writes what is queued; either may end it."""
        conn = self.conn
        self.plugins.observe("ws.connected")
        principal = conn.principal
        loop = asyncio.get_running_loop()
        self.reader = asyncio.current_task()
        # Served by petstore.server.uvicorn_ws: events skip the queue when they can (petstore.realtime.hub).
        write_now = self.websocket.scope.get("extensions", {}).get(WRITE_EXTENSION, {}).get("write")
        conn.attach(write_now=write_now, on_close=self.interrupt, on_queued=self.start_sender)
        self.send(self.plugins.ws_welcome(self.websocket) | {
            "type": "welcome",
            "connection": conn.id,
            "user": principal.username if principal else None,
            "heartbeat": self.settings.ws_heartbeat_seconds,
        })  # fmt: skip
        if principal is None:
            self.deadline = loop.call_later(self.settings.ws_auth_timeout_seconds, self.deadline_passed)
        self.arm_expiry()
        code = 1006
        try:
            self.reading = True
            try:
                code = await self.read_loop()
            except asyncio.CancelledError:
                if conn.close_code is None:
                    raise  # cancelled from outside: the server is going away
                if self.reader is not None:
                    self.reader.uncancel()
            finally:
                self.reading = False
            if conn.close_code is not None:
                code = conn.close_code
                if self.sender is not None:
                    self.sender.cancel()  # it may be stuck writing to a client that does not read
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.websocket.close(code), CLOSE_SECONDS)
        finally:
            conn.detach()
            for timer in (self.deadline, self.expiry):
                if timer is not None:
                    timer.cancel()
            if self.sender is not None:
                self.sender.cancel()
                with contextlib.suppress(BaseException):
                    await self.sender
            for room in list(conn.subscriptions):
                self.plugins.observe("ws.unsubscribed", room_kind=rooms.room_kind(room) or "unknown")
            await self.layer.disconnect(conn)
            self.plugins.observe("ws.disconnected", code=str(code))

    def interrupt(self) -> None:
        """``conn.close`` was called: stop the sender and, unless it is the one closing, the reader."""
        if self.sender is not None:
            self.sender.cancel()
        if self.reading and self.reader is not None and asyncio.current_task() is not self.reader:
            self.reader.cancel()

    async def read_loop(self) -> int:
        """Handle client messages in order; returns the client's close code when it goes away."""
        limit = self.settings.ws_max_message_bytes
        while True:
            if self.conn.close_code is not None:
                return self.conn.close_code  # by a message's handler, or before reading began (stopping)
            try:
                message = await self.websocket.receive()
            except WebSocketDisconnect as exc:
                return exc.code
            if message["type"] == "websocket.disconnect":
                return int(message.get("code") or 1005)
            text = message.get("text")
            data = message.get("bytes")
            size = len(text.encode()) if text is not None else len(data or b"")
            if size > limit:
                self.conn.close(TOO_BIG)
                return TOO_BIG
            if text is None:
                await self.refuse("invalid", None, "bad_request", "send text frames of JSON")
                continue
            try:
                await self.handle(text)
            except Exception:
                # A bug must not leave a socket open and mute: say it in the log, close with 1011.
                logger.exception("connection %s: failed handling a message, closing with 1011", self.conn.id)
                self.conn.close(INTERNAL_ERROR)

    def start_sender(self) -> None:
        """Something was queued: a sender task writes the queue out and ends once it is empty, so
        an idle connection holds no task (about 1.5 KB: the task, its coroutines, its future)."""
        if self.sender is None or self.sender.done():
            self.sender = asyncio.create_task(self.send_loop())

    async def send_loop(self) -> None:
        try:
            await self._send_loop()
        except Exception:
            # Same as the reader: a sender that died would leave the connection open and mute.
            logger.exception("connection %s: the sender failed, closing with 1011", self.conn.id)
            self.conn.close(INTERNAL_ERROR)
        finally:
            if self.sender is asyncio.current_task():
                self.sender = None  # not kept once done: a finished task is ~0.7 KB

    async def _send_loop(self) -> None:
        conn = self.conn
        observe = self.plugins.observe
        while True:
            batch = conn.take_batch(MAX_BATCH)
            if not batch:
                return
            frames: list[str] = []
            sent: dict[str, int] = {}
            for item in batch:
                if isinstance(item, str):
                    frames.append(item)
                    continue
                frames.append(item.frame)
                sent[item.kind] = sent.get(item.kind, 0) + 1
                observe_lag(observe, item)
            try:
                await self.websocket.send_text(encode_batch(frames))
            except (WebSocketDisconnect, OSError, RuntimeError):
                return  # the client is gone; the reader sees the disconnect
            finally:
                conn.sent()
            for kind, count in sent.items():
                observe("ws.message_sent", float(count), room_kind=kind)

    def deadline_passed(self) -> None:
        """An anonymous connection must authenticate or subscribe in time (a bound on idle sockets)."""
        if self.conn.principal is None and not self.active:
            logger.info("connection %s: no auth or subscribe in time, closing", self.conn.id)
            self.conn.close(POLICY_VIOLATION)

    def met_deadline(self) -> None:
        """An auth or a subscription arrived: the deadline is met, and its timer let go of now
        rather than held (and the session with it) until it would have fired."""
        self.active = True
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def arm_expiry(self) -> None:
        """Close with 1008 when the principal's token expires, unless a newer one arrives first."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        principal = self.conn.principal
        if principal is not None and principal.expires_at is not None:
            delay = max(0.0, principal.expires_at - time.time())
            self.expiry = asyncio.get_running_loop().call_later(delay, self.expired)

    def expired(self) -> None:
        logger.info("connection %s: token expired, closing", self.conn.id)
        self.conn.close(POLICY_VIOLATION)

    # -- messages -----------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        self.conn.put_nowait(dumps(message))

    async def refuse(self, label: str, ident: Any, code: str, message: str) -> None:
        self.plugins.observe("ws.message_received", type=label)
        refusal = await self.plugins.ws_message(self.conn.id, self.conn.principal, label)
        if refusal is not None:
            self.refused_by_plugin(ident, refusal)
            return
        self.send({"type": "error", "id": ident, "code": code, "message": message})

    def refused_by_plugin(self, ident: Any, refusal: str) -> None:
        """A plugin refused a message. Too many messages: say so, then close 1013 (SPEC §3)."""
        if refusal == "rate_limited":
            self.send({"type": "error", "id": ident, "code": refusal, "message": "too many messages, slow down"})
            self.conn.close_when_sent(TRY_AGAIN_LATER)
        else:
            self.send({"type": "error", "id": ident, "code": refusal, "message": "message refused"})

    async def handle(self, text: str) -> None:
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            await self.refuse("invalid", None, "bad_request", "not valid JSON")
            return
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            await self.refuse("invalid", None, "bad_request", 'a message is a JSON object with a "type"')
            return
        kind = body["type"]
        label = kind if kind in MESSAGE_TYPES else "unknown"
        ident = body.get("id")
        if ident is not None and (isinstance(ident, bool) or not isinstance(ident, int | str)):
            await self.refuse(label, None, "bad_request", "id must be a number or a string")
            return
        if isinstance(ident, str) and not _encodable(ident):
            # A lone surrogate ("\ud800") parses but cannot be sent back as UTF-8: no echo of it.
            await self.refuse(label, None, "bad_request", "id must be text that UTF-8 can encode")
            return
        self.plugins.observe("ws.message_received", type=label)
        refusal = await self.plugins.ws_message(self.conn.id, self.conn.principal, label)
        if refusal is not None:
            self.refused_by_plugin(ident, refusal)
            return
        name = HANDLERS.get(kind)
        if name is None:
            self.send({"type": "error", "id": ident, "code": "bad_request", "message": f"unknown type {kind[:40]!r}"})
            return
        try:
            handler: Callable[[dict[str, Any], Any], Awaitable[None]] = getattr(self, name)
            await handler(body, ident)
        except Refused as exc:
            self.send({"type": "error", "id": ident, "code": exc.code, "message": exc.message})
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            # Like a broker outage: nothing to do here but reconnect later (elsewhere) and recover.
            logger.warning(
                "connection %s: database unavailable (%s), closing with 1012", self.conn.id, type(exc).__name__
            )
            self.conn.close(RESTARTING)

    async def on_ping(self, body: dict[str, Any], ident: Any) -> None:
        self.send({"type": "pong", "id": ident})

    async def on_auth(self, body: dict[str, Any], ident: Any) -> None:
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise Refused("bad_request", "auth needs a token")
        try:
            principal = await asyncio.wait_for(
                self.plugins.ws_authenticate(self.websocket, token), self.settings.ws_auth_timeout_seconds
            )
        except access.AuthFailed as exc:
            raise Refused("unauthorized", exc.message) from None
        except TimeoutError:
            raise Refused("unauthorized", "authentication timed out") from None
        if principal is None:
            raise Refused("unauthorized", "this server does not accept tokens")
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise Refused("unauthorized", "token expired")
        self.conn.sign_in(principal)
        self.met_deadline()
        self.arm_expiry()
        for room in list(self.conn.subscriptions):
            if not await self.layer.authorized(principal, room):
                await self.layer.unsubscribe(self.conn, room)
                self.plugins.observe("ws.unsubscribed", room_kind=rooms.room_kind(room) or "unknown")
                self.send({"type": "unsubscribed", "id": None, "room": room})
        self.send({"type": "authenticated", "id": ident, "user": principal.username})

    async def on_subscribe(self, body: dict[str, Any], ident: Any) -> None:
        conn = self.conn
        room = body.get("room")
        if not isinstance(room, str):
            raise Refused("bad_request", "subscribe needs a room")
        kind = rooms.room_kind(room)
        if kind is None:
            raise Refused("not_found", f"no such room: {room[:80]!r}")
        since = parse_since(body.get("since"))
        if room not in conn.subscriptions and len(conn.subscriptions) >= self.settings.ws_max_subscriptions:
            raise Refused("bad_request", f"too many subscriptions (at most {self.settings.ws_max_subscriptions})")
        if not await self.layer.authorized(conn.principal, room):
            if conn.principal is None:
                raise Refused("unauthorized", f"sign in to subscribe to {room}")
            raise Refused("forbidden", f"you may not subscribe to {room}")
        if room in conn.subscriptions:
            self.plugins.observe("ws.unsubscribed", room_kind=kind)
        try:
            result = await self.layer.subscribe(conn, room, since)
        except BrokerUnavailable as exc:
            logger.warning("connection %s: broker unavailable during subscribe (%s), closing with 1012", conn.id, exc)
            conn.close(RESTARTING)
            return
        self.met_deadline()
        self.plugins.observe("ws.subscribed", room_kind=kind)
        self.send({
            "type": "subscribed",
            "id": ident,
            "room": room,
            "epoch": result.epoch,
            "offset": result.offset,
            "recovered": result.recovered,
            "snapshot": result.snapshot,
        })  # fmt: skip
        replay: list[Message] = result.replay
        for message in replay:
            conn.put_nowait(message)
        self.layer.go_live(conn, result)

    async def on_unsubscribe(self, body: dict[str, Any], ident: Any) -> None:
        room = body.get("room")
        if not isinstance(room, str):
            raise Refused("bad_request", "unsubscribe needs a room")
        if not await self.layer.unsubscribe(self.conn, room):
            raise Refused("not_found", f"not subscribed to {room[:80]!r}")
        self.plugins.observe("ws.unsubscribed", room_kind=rooms.room_kind(room) or "unknown")
        self.send({"type": "unsubscribed", "id": ident, "room": room})


#: The method that handles a client message, by its type: looked up per message rather than bound
#: in a dict per session (which cost every connection ~0.5 KB).
HANDLERS = {"auth": "on_auth", "subscribe": "on_subscribe", "unsubscribe": "on_unsubscribe", "ping": "on_ping"}
MESSAGE_TYPES = frozenset(HANDLERS)


async def websocket_endpoint(websocket: WebSocket) -> None:
    layer = realtime(websocket)
    origin = websocket.headers.get("origin")
    if origin is not None and origin not in layer.settings.allowed_origins:
        # The Origin header only, never the query or another header: nothing secret is logged.
        logger.warning(
            "refused a WebSocket from origin %r: not in PETSTORE_ALLOWED_ORIGINS", origin[:MAX_LOGGED_ORIGIN]
        )
        refused = error_response(403, "forbidden", "this origin may not open WebSockets here")
        await deny_websocket(websocket.scope, websocket.receive, websocket.send, refused, POLICY_VIOLATION)
        return
    refusal = await layer.plugins.ws_connect(websocket)
    if isinstance(refusal, Response):
        code = TRY_AGAIN_LATER if refusal.status_code in (429, 503) else POLICY_VIOLATION
        await deny_websocket(websocket.scope, websocket.receive, websocket.send, refusal, code)
        return
    if refusal is not None:
        await websocket.close(refusal)
        return
    await websocket.accept()
    await Session(websocket, layer).run()


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/ws", websocket_endpoint, name="ws")]
