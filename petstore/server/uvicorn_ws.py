"""The WebSocket protocol ``petstore serve`` runs uvicorn with: uvicorn's sans-I/O protocol plus
one ASGI extension, ``petstore.websocket.write``, for the hub's fan-out.

Through plain ASGI, every event to every subscriber costs a task switch and an ``await send()``
through each middleware's wrapper, then a frame built for that one connection. The extension
lets the hub write shared event frames synchronously instead::

    write = scope["extensions"]["petstore.websocket.write"]["write"]
    write(messages)  # True: handed to the socket, in order, in one write; False: use ``send``

Each message has ``payload``, its UTF-8 text, and ``wire``, a dict in which this module keeps
the same text framed as an unmasked, uncompressed text frame (RFC 6455 §5.2, :func:`frame`):
built by the first connection that writes the event and shared by every other one (the messages
are :class:`petstore.realtime.broker.Message`, which never looks inside). A connection that
negotiated ``permessage-deflate`` frames (and compresses) each payload itself. ``write`` refuses,
and the caller queues for its sender task, whenever the plain path must decide: before the
handshake, once closing, and while the transport's buffer is over its high-water mark (flow
control, so a slow client's queue fills and it is closed with 1013).

The app keeps working under any ASGI server; without the extension every send takes the usual
path. ``uvicorn --ws petstore.server.uvicorn_ws:WebSocketProtocol`` gives plain uvicorn the same.

On shutdown (SIGTERM), uvicorn's protocol sends its own 1012 and closes at once, dropping what the
hub was still writing, and waits forever for a client that does not read. This one leaves the
close to the app, which the first ``shutdown()`` tells to drain (:mod:`petstore.server.shutdown`): the
hub closes every connection with 1012, one close frame each, and a connection still open after
the drain's grace is aborted.

Neither uvicorn's protocol class nor the websockets protocol inside it is uvicorn's API: what this
module reads and overrides of them is in :data:`USES`, checked when it is imported, so a release
that changed them stops uvicorn from starting with this protocol, with a message that names what
is missing (:mod:`petstore.internals`), rather than running without the fast path or the limit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from petstore import internals
from petstore.realtime import WRITE_EXTENSION
from petstore.server import shutdown
from petstore.state import AppState

#: The import string for uvicorn's ``ws`` setting (``--ws`` on its command line).
PROTOCOL = "petstore.server.uvicorn_ws:WebSocketProtocol"

#: What this module relies on past the two projects' APIs: the state :meth:`WebSocketProtocol.write`
#: and the drain read of uvicorn's protocol and the methods they override or call; and what
#: ``write`` and ``__init__`` use of the websockets protocol in ``conn`` (its sans-I/O API, but for
#: ``max_message_size``, the app's message limit). Checked at import.
USES = (
    internals.Uses(
        __name__,
        "uvicorn",
        WebSocketsSansIOProtocol,
        (
            # what write() reads: the direct path depends on these seven
            "handshake_complete",
            "close_sent",
            "disconnected",
            "initial_response",
            "writable",
            "conn",
            "transport",
            # what __init__, handle_connect, send and the drain read or replace
            "app_state",
            "config",
            "scope",
            "queue",
            "request",
            "response",
            # overridden or called
            "handle_connect",
            "send",
            "connection_lost",
            "shutdown",
            "stop_keepalive",
        ),
    ),
    internals.Uses(
        __name__,
        "websockets",
        ServerProtocol,
        ("state", "extensions", "send_text", "data_to_send", "max_message_size"),
    ),
)
for _uses in USES:
    _uses.check()

#: The key of this module's encoding in a message's ``wire``.
_WIRE = __name__


class Framed(Protocol):
    """A text message as the hub hands it over (see the module docstring)."""

    @property
    def payload(self) -> bytes: ...

    @property
    def wire(self) -> dict[str, bytes]: ...


def frame(message: Framed) -> bytes:
    """``message`` as one unmasked, uncompressed WebSocket text frame, built once per event: by the
    first connection that writes it, then taken from its ``wire`` by every other one."""
    try:
        return message.wire[_WIRE]
    except KeyError:
        data = message.wire[_WIRE] = Frame(Opcode.TEXT, message.payload).serialize(mask=False)
        return data


class _Inbox:
    """What uvicorn's protocol uses of its ``asyncio.Queue`` of ASGI receive events (``put_nowait``,
    ``get``, ``empty``; unbounded, one reader), without the three deques a Queue allocates up front:
    about 2.3 KB of every idle connection. uvicorn pauses reading while a message waits, so it
    holds a message or two."""

    __slots__ = ("_getter", "_items")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        item = self._items.popleft()
        if not self._items:
            self._items = None  # an idle connection holds no deque (its block is ~0.7 KB)
        return item


class _Flag:
    """``asyncio.Event`` as uvicorn's protocol uses it for ``writable`` (``set``, ``clear``, ``wait``,
    ``is_set``), its waiters made only while one waits: an Event's deque is ~0.8 KB a connection."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if self._waiters is not None and waiter in self._waiters:
                    self._waiters.remove(waiter)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol that offers :meth:`write` as an ASGI extension."""

    drain: shutdown.Drain | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What lives as long as the socket, made lighter (see _Inbox and _Flag).
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
        state = self.app_state.get("petstore")
        if isinstance(state, AppState):
            # The app's own limit, enforced by websockets as it reads: on the inflated size of a
            # permessage-deflate message, so nothing past it is ever decompressed or buffered
            # (uvicorn's ws_max_size, 16 MiB by default, is all it would otherwise stop at).
            self.conn.max_message_size = state.settings.ws_max_message_bytes

    def shutdown(self) -> None:
        """The server is stopping: let the app close with 1012 (see the module docstring)."""
        drain = shutdown.join(self, super().shutdown)
        if drain is None:
            return
        drain.watch(self)
        if not self.handshake_complete or self.close_sent or self.initial_response is not None:
            super().shutdown()  # not an open WebSocket (yet, or any more): uvicorn's own way
        else:
            self.stop_keepalive()  # a ping now would only delay the close

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.drain is not None:
            self.drain.lost(self)

    def abort_if_open(self) -> bool:
        """For the drain: abort a connection that did not close in time (its client does not read)."""
        if self.disconnected or self.transport is None:
            return False
        self.transport.abort()
        return True

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)  # None: the upgrade was refused before the app ran
        if scope is not None:
            scope["extensions"][WRITE_EXTENSION] = {"write": self.write}

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's parsed request and response (their headers: ~2.5 KB) are not read
            # again once the upgrade is answered; the scope keeps what the app reads.
            self.request = self.response = None  # type: ignore[assignment]

    def write(self, messages: Sequence[Framed]) -> bool:
        """Send text messages now, in one write, if nothing stands in the way (module docstring)."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False
        if self.conn.extensions:
            for message in messages:
                self.conn.send_text(message.payload)
            self.transport.write(b"".join(self.conn.data_to_send()))
        elif len(messages) == 1:
            message = messages[0]
            try:
                data = message.wire[_WIRE]  # frame(message), inlined: once per subscriber per event
            except KeyError:
                data = frame(message)
            self.transport.write(data)
        else:
            self.transport.write(b"".join([frame(message) for message in messages]))
        return True
