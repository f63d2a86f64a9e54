"""The WebSocket protocol ``petstore serve`` runs uvicorn with: uvicorn's sans-I/O protocol plus
one ASGI extension, ``petstore.websocket.write``, for the hub's fan-out.

Through plain ASGI, every event to every subscriber costs a task switch and an ``await send()``
through each middleware's wrapper, then a frame built for that one connection. The extension
lets the hub write shared event frames synchronously instead::

    write = scope["extensions"]["petstore.websocket.write"]["write"]
    write(messages)  # True: handed to the socket, in order, in one write; False: use ``send``

Each message has ``payload``, its UTF-8 text, and ``ws_frame``, the same text already framed as
an unmasked, uncompressed text frame (RFC 6455 §5.2), built once per event and shared by every
connection (:class:`petstore.realtime.broker.Message`). A connection that negotiated
``permessage-deflate`` frames (and compresses) each payload itself. ``write`` refuses, and the
caller queues for its sender task, whenever the plain path must decide: before the handshake,
once closing, and while the transport's buffer is over its high-water mark (flow control, so a
slow client's queue fills and it is closed with 1013).

The app keeps working under any ASGI server; without the extension every send takes the usual
path. ``uvicorn --ws petstore.server.uvicorn_ws:WebSocketProtocol`` gives plain uvicorn the same.

On shutdown (SIGTERM), uvicorn's protocol sends its own 1012 and closes at once, dropping what the
hub was still writing, and waits forever for a client that does not read. This one leaves the
close to the app, which the first ``shutdown()`` tells to drain (:mod:`petstore.server.shutdown`): the
hub closes every connection with 1012, one close frame each, and a connection still open after
the drain's grace is aborted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from petstore.realtime import WRITE_EXTENSION
from petstore.server import shutdown
from petstore.state import AppState

#: The import string for uvicorn's ``ws`` setting (``--ws`` on its command line).
PROTOCOL = "petstore.server.uvicorn_ws:WebSocketProtocol"
#: What :meth:`WebSocketProtocol.write` reads of uvicorn's protocol; a uvicorn without one of
#: them gets no extension (the plain path still works) rather than a broken one.
_USES = ("handshake_complete", "close_sent", "disconnected", "initial_response", "writable", "conn", "transport")


class Framed(Protocol):
    """A text message with its shared frame (see the module docstring)."""

    @property
    def payload(self) -> bytes: ...

    @property
    def ws_frame(self) -> bytes: ...


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol that offers :meth:`write` as an ASGI extension."""

    drain: shutdown.Drain | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        state = self.app_state.get("petstore")
        if isinstance(state, AppState) and hasattr(self.conn, "max_message_size"):
            # The app's own limit, enforced by websockets as it reads: on the inflated size of a
            # permessage-deflate message, so nothing past it is ever decompressed or buffered
            # (uvicorn's ws_max_size, 16 MiB by default, is all it would otherwise stop at).
            self.conn.max_message_size = state.settings.ws_max_message_bytes

    def shutdown(self) -> None:
        """The server is stopping: let the app close with 1012 (see the module docstring)."""
        drain = shutdown.begin(self.app_state, self.config)
        if drain is None:
            super().shutdown()
            return
        self.drain = drain
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
        if scope is not None and all(hasattr(self, name) for name in _USES):
            scope["extensions"][WRITE_EXTENSION] = {"write": self.write}

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
            self.transport.write(messages[0].ws_frame)
        else:
            self.transport.write(b"".join([message.ws_frame for message in messages]))
        return True
