"""A TCP proxy that the fault tests put between petstore and a service (Redis, PostgreSQL).

It runs its own asyncio loop in a daemon thread, so a sync test, an async test (whose loop is
another one) and a server subprocess can all go through it; every control below is called
from any thread and has taken effect, on open and new connections alike, when it returns.

    with TcpProxy("127.0.0.1", redis.port) as proxy:
        url = proxy.url_for(redis.url)      # give this URL to petstore
        proxy.silence()                     # the network goes quiet: no byte, no FIN, no RST
        proxy.resume()

The faults:

- ``silence()``: nothing is forwarded either way, sockets stay open, a closing side's FIN is
  held back too; a new connection is accepted (the kernel answers the handshake on loopback)
  but not connected onward. ``resume()`` forwards everything that was held, in order, as TCP's
  retransmissions would once a partition heals: **bytes sent during a silence are delivered
  late, never dropped** (dropping some would corrupt the byte stream, which no network does).
  So a command a client gave up on during a silence may still reach the server afterwards.
- ``reset()``: every open connection is reset on both sides (``SO_LINGER`` 0, then close: RST).
- ``refuse(True)``: new connections are accepted and reset at once; ``refuse(False)`` ends that.
- ``delay(seconds)``: each chunk waits that long before it is forwarded (0 ends it).
- ``reset_after(n_bytes, direction)`` and ``reset_on(marker, direction, occurrence)``: one-shot
  triggers that reset the first connection whose stream, in that direction, reaches a point
  (``n_bytes`` more bytes, or the ``occurrence``-th ``marker``); the bytes before the point are
  forwarded, the rest never arrive. They return a :class:`Trigger` to wait on.

``accepted`` counts connections accepted; ``open_connections`` says how many are open now.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from tests.services import HOST

Direction = Literal["to_server", "to_client"]
CHUNK = 64 * 1024
CONTROL_TIMEOUT = 10.0

T = TypeVar("T")


@dataclass
class Trigger:
    """A one-shot reset armed on the proxy; ``fired`` is set once it has reset a connection."""

    direction: Direction
    #: Where the stream of a connection is cut, given the stream's state and the next chunk:
    #: the number of bytes of the chunk to forward before the reset, or None to let it all pass.
    cut: Callable[[dict[str, Any], bytes], int | None]
    fired: threading.Event = field(default_factory=threading.Event)
    #: Bytes of the cut chunk forwarded before the reset (0: the cut fell between chunks).
    forwarded: int | None = None

    def wait(self, timeout: float) -> None:
        """Wait until the trigger has fired; TimeoutError after ``timeout`` s."""
        if not self.fired.wait(timeout):
            raise TimeoutError(f"the proxy's reset trigger did not fire within {timeout:g}s")


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close a connection with an RST instead of a FIN: SO_LINGER on, timeout 0, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client's socket, the server's, and a pump each way."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.handler: asyncio.Task[Any] | None = None
        self.pumps: list[asyncio.Task[Any]] = []
        #: Each trigger's view of this connection's stream (bytes counted, markers seen).
        self.streams: dict[int, dict[str, Any]] = {}
        self.closed = False

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.server):
            if writer is not None:
                abort_with_rst(writer)
        current = asyncio.current_task()
        for task in self.pumps:
            if task is not current:
                task.cancel()


class TcpProxy:
    """A TCP proxy on a free loopback port to ``target_host:target_port``, with fault controls."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._triggers: list[Trigger] = []
        self._refusing = False
        self._delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen on a free loopback port (``.port``) and return once connections are accepted."""
        name = f"tcp-proxy-{self.target_port}"
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._call(self._listen())
        return self

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Stop listening, close every connection (with a FIN, as a proxy going away would) and the loop."""
        if self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT)
        self._thread = None
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks: list[asyncio.Task[Any]] = []
        for link in list(self._links):
            link.closed = True
            for writer in (link.client, link.server):
                if writer is not None:
                    writer.close()
            tasks += [*link.pumps, *([link.handler] if link.handler is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def url_for(self, service_url: str) -> str:
        """``service_url`` (``redis://…``, ``postgresql+asyncpg://user@host:port/db``) through this proxy."""
        parts = urllib.parse.urlsplit(service_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{HOST}:{self.port}" if userinfo else f"{HOST}:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    @property
    def open_connections(self) -> int:
        return self._call(self._count_open())

    async def _count_open(self) -> int:
        return sum(not link.closed for link in self._links)

    # -- faults -------------------------------------------------------------------------------

    def silence(self) -> None:
        """Forward nothing either way from now on, and keep every socket open (see the module doc)."""
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        """Forward again; what was held during the silence goes first, in order."""
        self._call(self._set_flowing(True))

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def reset(self) -> None:
        """Reset (RST) every open connection, on both sides."""
        self._call(self._reset_all())

    async def _reset_all(self) -> None:
        for link in list(self._links):
            link.reset()
        self._links.clear()

    def refuse(self, refusing: bool = True) -> None:
        """While True, new connections are accepted and reset at once."""
        self._call(self._set(lambda: setattr(self, "_refusing", refusing)))

    def delay(self, seconds: float) -> None:
        """Latency added to every chunk from now on, each way (0 for none)."""
        self._call(self._set(lambda: setattr(self, "_delay", seconds)))

    def reset_after(self, n_bytes: int, direction: Direction = "to_server") -> Trigger:
        """Reset the first connection on which ``n_bytes`` more bytes (from now) pass in ``direction``."""

        def cut(stream: dict[str, Any], chunk: bytes) -> int | None:
            seen = stream.get("bytes", 0)
            stream["bytes"] = seen + len(chunk)
            return n_bytes - seen if seen + len(chunk) >= n_bytes else None

        return self._arm(Trigger(direction, cut))

    def reset_on(self, marker: bytes, direction: Direction = "to_server", occurrence: int = 1) -> Trigger:
        """Reset the first connection whose stream in ``direction`` carries ``marker`` for the
        ``occurrence``-th time (counted from now), just before that occurrence.

        For instance, cutting a Redis pipeline between its commands: the server runs the first
        command, then meets the reset before the second is whole.
        """

        def cut(stream: dict[str, Any], chunk: bytes) -> int | None:
            carry: bytes = stream.get("carry", b"")
            data = carry + chunk
            start = 0
            while (found := data.find(marker, start)) >= 0:
                stream["count"] = stream.get("count", 0) + 1
                if stream["count"] == occurrence:
                    return max(0, found - len(carry))
                start = found + 1
            stream["carry"] = data[-(len(marker) - 1) :] if len(marker) > 1 else b""
            return None

        return self._arm(Trigger(direction, cut))

    def _arm(self, trigger: Trigger) -> Trigger:
        self._call(self._set(lambda: self._triggers.append(trigger)))
        return trigger

    async def _set(self, change: Callable[[], object]) -> None:
        change()

    # -- the proxy itself ---------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the proxy's loop and wait for it: when a control returns, it holds."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("TcpProxy controls are for other threads than the proxy's own")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CONTROL_TIMEOUT)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            abort_with_rst(writer)
            return
        link = _Link(writer)
        link.handler = asyncio.current_task()
        self._links.add(link)
        try:
            await self._flowing.wait()  # a silent network: the connection goes no further
            if link.closed:
                return
            try:
                server_reader, link.server = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                link.reset()  # the closest a proxy comes to "connection refused"
                return
            if link.closed:  # reset while connecting
                abort_with_rst(link.server)
                return
            link.pumps = [
                asyncio.create_task(self._pump(link, reader, link.server, "to_server")),
                asyncio.create_task(self._pump(link, server_reader, writer, "to_client")),
            ]
            await asyncio.gather(*link.pumps, return_exceptions=True)
            for end in (link.client, link.server):
                end.close()
        finally:
            self._links.discard(link)

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        while True:
            chunk: bytes | None
            try:
                chunk = await reader.read(CHUNK)
            except OSError:
                chunk = None  # this side reset the connection
            # Whatever came (bytes, a FIN, an RST) waits out a silence, as on a quiet network.
            await self._flowing.wait()
            if self._delay:
                await asyncio.sleep(self._delay)  # the fault itself: latency, not a synchronisation
            if chunk is None:
                link.reset()  # the other side learns of the reset the same way
                return
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()  # a half close goes through as one
                return
            cut, trigger = self._cut(link, direction, chunk)
            try:
                writer.write(chunk if trigger is None else chunk[:cut])
                await writer.drain()
            except OSError:
                link.reset()
                return
            if trigger is not None:
                trigger.forwarded = cut
                link.reset()
                trigger.fired.set()
                return

    def _cut(self, link: _Link, direction: Direction, chunk: bytes) -> tuple[int, Trigger | None]:
        """Where an armed trigger cuts this chunk, and which (disarmed now); else (0, None)."""
        for trigger in [t for t in self._triggers if t.direction == direction]:
            cut = trigger.cut(link.streams.setdefault(id(trigger), {}), chunk)
            if cut is not None:
                self._triggers.remove(trigger)
                return cut, trigger
        return 0, None
