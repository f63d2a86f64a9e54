"""The HTTP protocol ``petstore serve`` runs: uvicorn's httptools protocol, taking part in the drain.

On shutdown uvicorn's protocol closes idle keep-alive connections at once and lets a response in
flight finish; an SSE stream never finishes, and a client that stopped reading holds its
connection forever. This one, once the first ``shutdown()`` has started the drain
(:mod:`petstore.shutdown`):

- keeps an idle keep-alive connection until the real-time clients are gone, answering what comes
  on it with ``Connection: close`` (a load balancer's health check there sees ``/readyz`` say 503);
- lets the hub end an SSE stream, and aborts it if it is still open after the drain's grace;
- aborts, just before uvicorn stops waiting, a response stuck on a client that does not read
  (uvicorn would cancel its task, which it logs as a traceback).

The SSE endpoint says its response is a stream through the ASGI extension ``petstore.http.stream``
(``scope["extensions"]["petstore.http.stream"]["mark"]()``). ``uvicorn --http
petstore.uvicorn_http:HttpProtocol`` gives plain uvicorn the same; under any other server the
lifespan shutdown ends the streams.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from petstore import shutdown

#: The import string for uvicorn's ``http`` setting (``--http`` on its command line).
PROTOCOL = "petstore.uvicorn_http:HttpProtocol"


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the drain's shutdown (see the module docstring)."""

    drain: shutdown.Drain | None = None
    #: The cycle whose response the app marked as an event stream.
    stream: RequestResponseCycle | None = None
    lost = False

    def on_headers_complete(self) -> None:
        scope: Any = self.scope
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle.scope is not scope:
            return  # a WebSocket upgrade: the WebSocket protocol takes over
        scope.setdefault("extensions", {})[shutdown.STREAM_EXTENSION] = {"mark": lambda: self._mark(cycle)}
        if self.drain is not None:
            cycle.keep_alive = False  # a request during the drain: answered, then the connection closes

    def _mark(self, cycle: RequestResponseCycle) -> None:
        self.stream = cycle
        if self.drain is not None and self.cycle is cycle:
            self.drain.watch(self)

    def shutdown(self) -> None:
        """The server is stopping (see the module docstring)."""
        drain = shutdown.begin(self.app_state, self.config)
        if drain is None:
            super().shutdown()
            return
        self.drain = drain
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
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
