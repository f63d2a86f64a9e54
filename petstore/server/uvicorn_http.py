"""The HTTP protocol ``petstore serve`` runs: uvicorn's httptools protocol, taking part in the drain.

On shutdown uvicorn's protocol closes idle keep-alive connections at once and lets a response in
flight finish; an SSE stream never finishes, and a client that stopped reading holds its
connection forever. This one, once the first ``shutdown()`` has started the drain
(:mod:`petstore.server.shutdown`):

- keeps an idle keep-alive connection until the real-time clients are gone, answering what comes
  on it with ``Connection: close`` (a load balancer's health check there sees ``/readyz`` say 503);
- lets the hub end an SSE stream, and aborts it if it is still open after the drain's grace;
- aborts, just before uvicorn stops waiting, a response stuck on a client that does not read
  (uvicorn would cancel its task, which it logs as a traceback).

It also bounds what a client may make the server hold (uvicorn's httptools protocol bounds none
of it), from the app's settings (:class:`petstore.config.Settings`; their defaults without the app):

- the request line and headers: at most ``max_header_bytes`` (16 KiB), else 431 and close. The
  bytes are counted per chunk the socket hands over, an integer sum, so the check costs O(1) per
  chunk and at most one chunk (256 KiB, what asyncio reads at once) is read past the cap; the
  exact size is summed only at the end of headers that may be over it (a chunk larger than the
  cap, or a request that began behind another in one chunk: pipelining, whose requests before
  are never refused for it);
- their time: all of them within ``header_timeout_seconds`` (10 s) of the request's first byte,
  or of the connection for its first request, else 408 and close (slowloris). Bytes between
  requests that begin none (CR/LF) do not hold an idle keep-alive connection open either;
- a body: no ``body_timeout_seconds`` (30 s) without a byte of it while it is incomplete and the
  server is reading it, else 408 (only a close, if the response already began);
- connections: with uvicorn's ``limit_concurrency`` (``petstore serve`` sets it a little under
  the limit on open files), a connection that would reach it closes the one that has waited
  longest for a client, a request's headers not all sent (408) or an idle keep-alive connection,
  so half-sent requests never use up the descriptors. Past the limit with none of those, uvicorn
  answers 503.

One timer per connection checks these deadlines; it is armed again only when it fires (or would
fire too late for a new request), so a keep-alive connection serving request after request arms
it about once per ``header_timeout_seconds``, not per request.

The SSE endpoint says its response is a stream through the ASGI extension ``petstore.http.stream``
(``scope["extensions"]["petstore.http.stream"]["mark"]()``). ``uvicorn --http
petstore.server.uvicorn_http:HttpProtocol`` gives plain uvicorn the same; under any other server the
lifespan shutdown ends the streams.

uvicorn's httptools protocol, its request cycle and its flow control are its implementation, not
its API: what this module reads and overrides of them is in :data:`USES`, checked when it is
imported (:mod:`petstore.internals`), so a release that changed them stops uvicorn from starting
with this protocol, naming what is missing, rather than serving without the bounds above.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from petstore import internals
from petstore.config import Settings
from petstore.realtime import STREAM_EXTENSION
from petstore.server import shutdown
from petstore.state import AppState

#: The import string for uvicorn's ``http`` setting (``--http`` on its command line).
PROTOCOL = "petstore.server.uvicorn_http:HttpProtocol"

#: What :class:`HttpProtocol` relies on of uvicorn's implementation (besides ``STATUS_LINE``, whose
#: import would fail by itself): checked at import.
USES = (
    internals.Uses(
        __name__,
        "uvicorn",
        HttpToolsProtocol,
        (
            # read (and, for app and timeout_keep_alive_task, replaced for a while)
            "app",
            "app_state",
            "config",
            "connections",
            "cycle",
            "flow",
            "headers",
            "limit_concurrency",
            "loop",
            "parser",
            "pipeline",
            "scope",
            "timeout_keep_alive_handler",
            "timeout_keep_alive_task",
            "transport",
            "url",
            # overridden, each calling uvicorn's own
            "connection_made",
            "connection_lost",
            "data_received",
            "handle_websocket_upgrade",
            "on_headers_complete",
            "on_message_begin",
            "on_message_complete",
            "on_response_complete",
            "shutdown",
        ),
    ),
    internals.Uses(
        __name__,
        "uvicorn",
        RequestResponseCycle,
        (
            "disconnected",
            "keep_alive",
            "message_event",
            "response_complete",
            "response_started",
            "scope",
            "waiting_for_100_continue",
        ),
    ),
    internals.Uses(__name__, "uvicorn", FlowControl, ("read_paused", "write_paused")),
)
for _uses in USES:
    _uses.check()

_DEFAULTS = Settings.model_fields
#: Per header line, what ``on_header`` does not hand over: ": " and CRLF; and the request line's
#: method, spaces, version and CRLF (at most "OPTIONS " and " HTTP/1.1\r\n").
_HEADER_OVERHEAD = 4
_REQUEST_LINE_OVERHEAD = 19


def _json_body(status: int, kind: str, message: str) -> bytes:
    return json.dumps({"code": status, "type": kind, "message": message}).encode()


def _raw(status: int, body: bytes) -> bytes:
    """A whole response, written straight to the transport (no app runs for it)."""
    head = b"content-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
    return STATUS_LINE[status] + head + body


_TOO_LARGE_BODY = _json_body(431, "headers_too_large", "the request line and headers are too large")
_TOO_LARGE = _raw(431, _TOO_LARGE_BODY)
_TIMEOUT = _raw(408, _json_body(408, "request_timeout", "the request was not received in time"))


async def _headers_too_large(scope: Any, receive: Any, send: Any) -> None:
    """The app a request whose headers ended past the cap runs instead of petstore's (then close)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_TOO_LARGE_BODY))]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": _TOO_LARGE_BODY})


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the drain's shutdown and read bounds (see the module docstring)."""

    drain: shutdown.Drain | None = None
    #: The cycle whose response the app marked as an event stream.
    stream: RequestResponseCycle | None = None
    lost = False

    # The read bounds' state (the module docstring).
    #: The parser is between two requests, or before the first: the next byte (but CR/LF) begins one.
    between = True
    #: From a request's first byte to the end of its headers.
    in_head = False
    #: Bytes counted for the head being read: every chunk it spans, whole. -1 while the chunk in
    #: which it began after another request's end is parsed (how much of it is this head is unknown).
    head_bytes = 0
    #: The head began in a chunk after another request's end: its exact size is checked at its end.
    pipelined = False
    #: The size of the chunk being parsed, and whether it began between requests and no request has
    #: begun in it yet (then a request that begins in it began at its start).
    chunk = 0
    fresh = False
    #: Since when the connection waits for the client: the head's first byte (the connection's
    #: making, for its first request), or the end of the last response while it is idle.
    waiting_since = 0.0
    #: When a chunk was last read (or the server last started waiting for a body it had not asked for).
    last_read = 0.0
    watchdog: asyncio.TimerHandle | None = None
    #: A WebSocket upgrade whose headers are over the cap: refused instead of upgraded.
    refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        state = self.app_state.get("petstore")
        settings = state.settings if isinstance(state, AppState) else None
        self.max_header_bytes: int = settings.max_header_bytes if settings else _DEFAULTS["max_header_bytes"].default
        self.header_timeout: float = (
            settings.header_timeout_seconds if settings else _DEFAULTS["header_timeout_seconds"].default
        )
        self.body_timeout: float = (
            settings.body_timeout_seconds if settings else _DEFAULTS["body_timeout_seconds"].default
        )
        self.waiting_since = self.last_read = self.loop.time()
        self._arm(self.header_timeout)
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) >= limit:
            self._make_room()

    def _make_room(self) -> None:
        """At the concurrency limit: close the connection that has waited longest for its client.

        A scan of the connections, only at the limit (under attack, or at capacity): nothing is
        kept per request for it."""
        oldest: HttpProtocol | None = None
        for connection in self.connections:
            if (
                isinstance(connection, HttpProtocol)
                and connection is not self
                and connection._waiting_for_client()
                and (oldest is None or connection.waiting_since < oldest.waiting_since)
            ):
                oldest = connection
        if oldest is not None:
            oldest._evict()

    def _waiting_for_client(self) -> bool:
        if self.lost or self.transport.is_closing() or self.drain is not None:
            return False
        if self.in_head:
            return True
        cycle = self.cycle
        return self.between and (cycle is None or (cycle.response_complete and not self.pipeline))

    def _evict(self) -> None:
        # It stops counting now: its transport forgets it only on a later turn of the loop, and the
        # request that made room for itself may be read before that (uvicorn would answer it 503).
        self.connections.discard(self)
        if self.between and self.cycle is not None:
            self.transport.close()  # an idle keep-alive connection: closed as its timeout would
        else:
            self._refuse(_TIMEOUT, head=True)

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        self.chunk = len(data)
        self.fresh = self.between
        if self.in_head:
            self.head_bytes += self.chunk
        keep_alive = self.timeout_keep_alive_task  # uvicorn cancels it on any byte
        super().data_received(data)
        if self.in_head:
            if self.head_bytes < 0:
                self.head_bytes = self._head_size()  # what is known of it: the rest counts from the next chunk
            if self.head_bytes > self.max_header_bytes and not self.transport.is_closing():
                self._refuse(_TOO_LARGE, head=True)
        elif self.refused:
            if not self.transport.is_closing():
                self._refuse(_TOO_LARGE, head=True)
        elif (
            self.fresh
            and keep_alive is not None
            and self.timeout_keep_alive_task is None
            and not self.transport.is_closing()
        ):
            # Only CR/LF, which begin no request: the idle connection's timeout goes on as it was.
            self.timeout_keep_alive_task = self.loop.call_at(keep_alive.when(), self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.between = False
        self.in_head = True
        if self.fresh:
            self.fresh = False
            self.pipelined = False
            self.head_bytes = self.chunk
        else:
            self.pipelined = True
            self.head_bytes = -1
        if self.cycle is not None:  # a later request: its time counts from its first byte
            self.waiting_since = self.last_read
        watchdog = self.watchdog
        if watchdog is None or watchdog.when() > self.waiting_since + self.header_timeout:
            self._arm(self.waiting_since + self.header_timeout - self.loop.time())

    def _head_size(self) -> int:
        return (
            _REQUEST_LINE_OVERHEAD
            + len(self.url)
            + sum([len(name) + len(value) + _HEADER_OVERHEAD for name, value in self.headers])
        )

    def on_headers_complete(self) -> None:
        self.in_head = False
        scope: Any = self.scope
        # head_bytes is an over-estimate (every chunk the head spans, whole) unless the head began
        # behind another request in one chunk; the exact sum only where it may be over the cap.
        estimate = self.chunk if self.head_bytes < 0 else self.head_bytes
        if (self.pipelined or estimate > self.max_header_bytes) and self._head_size() > self.max_header_bytes:
            if self.parser.should_upgrade():
                self.refused = True  # refused in handle_websocket_upgrade, which the parser calls next
                return
            app, self.app = self.app, _headers_too_large
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            if self.cycle is not None and self.cycle.scope is scope:
                self.cycle.keep_alive = False
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle.scope is not scope:
            return  # a WebSocket upgrade: the WebSocket protocol takes over
        scope.setdefault("extensions", {})[STREAM_EXTENSION] = {"mark": lambda: self._mark(cycle)}
        if self.drain is not None:
            cycle.keep_alive = False  # a request during the drain: answered, then the connection closes

    def on_message_complete(self) -> None:
        self.between = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.between:
            self.waiting_since = self.loop.time()  # idle from now on (the keep-alive timeout's watch)

    def _mark(self, cycle: RequestResponseCycle) -> None:
        self.stream = cycle
        if self.drain is not None and self.cycle is cycle:
            self.drain.watch(self)

    def shutdown(self) -> None:
        """The server is stopping (see the module docstring)."""
        drain = shutdown.join(self, super().shutdown)
        if drain is None:
            return
        if self.cycle is None or self.cycle.response_complete:
            drain.after_drain(self._shutdown_now)
        else:
            self._shutdown_now()

    def _shutdown_now(self) -> None:
        if self.lost:
            return
        assert self.drain is not None
        cycle = self.cycle
        in_flight = cycle is not None and not cycle.response_complete
        super().shutdown()
        if in_flight:
            if self.stream is cycle:
                self.drain.watch(self)
            self.drain.before_giving_up(self.abort_if_stuck)

    def handle_websocket_upgrade(self) -> None:
        if self.refused:
            self._refuse(_TOO_LARGE, head=True)
            return
        super().handle_websocket_upgrade()

    def _arm(self, delay: float) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.watchdog = self.loop.call_later(delay, self._check)

    def _check(self) -> None:
        """The one timer: refuse a request whose headers or body are late, else arm for the next deadline."""
        self.watchdog = None
        if self.lost or self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # gone, or upgraded to a WebSocket
        now = self.loop.time()
        cycle = self.cycle
        if self.in_head or (self.between and cycle is None):
            deadline = self.waiting_since + self.header_timeout
            head = True
        elif not self.between and cycle is not None and not cycle.disconnected:
            # A body is incomplete; the client is late only while the server reads it.
            if cycle.waiting_for_100_continue or self.flow.read_paused:
                self.last_read = now  # the app has not asked for it yet, or is not taking it in
            deadline = self.last_read + self.body_timeout
            head = False
        else:
            # Nothing to read: the app is answering, or the connection is idle (uvicorn's keep-alive
            # timeout watches that). Looked at again later, for the next request.
            self._arm(self.header_timeout)
            return
        if now < deadline:
            self._arm(deadline - now)
        else:
            self._refuse(_TIMEOUT, head=head)

    def _refuse(self, response: bytes, *, head: bool) -> None:
        """Answer ``response`` if nothing is being answered on the connection, and close it.

        ``head``: the request refused has no cycle yet (its headers are not all read), so
        ``self.cycle`` is an earlier request's; else it is the refused request's own."""
        cycle = self.cycle
        answering = False
        if cycle is not None and not cycle.response_complete:
            answering = cycle.response_started or head  # an earlier request's response would be cut
            # The app's task gets http.disconnect, and anything it still sends is dropped.
            cycle.disconnected = True
            cycle.keep_alive = False
            cycle.message_event.set()
        elif cycle is not None and not head:
            answering = True  # answered already, and the client is still sending the body
        if not answering:
            self.transport.write(response)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        super().connection_lost(exc)
        if self.drain is not None:
            self.drain.lost(self)

    def abort_if_open(self) -> bool:
        """For the drain: abort an event stream that did not end in time (its client does not read)."""
        if self.lost:
            return False
        self.transport.abort()
        return True

    def abort_if_stuck(self) -> bool:
        """For the drain's last call: abort a response the client does not read, and only that."""
        if self.lost or not (self.flow.write_paused or self.transport.is_closing()):
            return False
        self.transport.abort()
        return True
