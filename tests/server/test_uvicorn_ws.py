"""petstore.server.uvicorn_ws: uvicorn's sans-I/O WebSocket protocol plus the direct-write extension,
driven by a real uvicorn and real clients (the ``websockets`` library and a raw socket); and the
app's message limit, applied by the protocol while it inflates, against the real petstore."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from petstore.config import Settings
from petstore.internals import InternalsChanged
from petstore.realtime import WRITE_EXTENSION as EXTENSION
from petstore.server.uvicorn_ws import PROTOCOL, USES, frame
from tests.realtime.support import DEADLINE, until
from tests.releases import check_all, simulate
from tests.server.test_shutdown import assert_clean_log, running
from tests.services import free_port

PLAIN = "websockets-sansio"


@dataclass
class Framed:
    payload: bytes
    wire: dict[str, bytes] = field(default_factory=dict)


def framed(*texts: str) -> list[Framed]:
    """Messages as the hub hands them over: each with its text, and room for the shared frame."""
    return [Framed(text.encode()) for text in texts]


def test_a_messages_frame_is_built_once_and_shared_by_every_connection_that_writes_it() -> None:
    message = framed("shared é")[0]
    built = frame(message)
    assert built == Frame(Opcode.TEXT, "shared é".encode()).serialize(mask=False)
    assert frame(message) is built


def test_a_uvicorn_whose_protocol_lost_what_write_reads_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to be silent: the extension was not offered, and every event took the slow path."""
    module = "uvicorn.protocols.websockets.websockets_sansio_impl"
    simulate(monkeypatch, "uvicorn", module, "self.writable", "self.ready", "0.99.0")
    with pytest.raises(InternalsChanged) as refused:
        check_all(USES)
    message = str(refused.value)
    assert message.startswith("petstore.server.uvicorn_ws cannot run on uvicorn 0.99.0")
    assert "WebSocketsSansIOProtocol has no attribute 'writable'" in message


def test_a_websockets_without_max_message_size_is_refused_rather_than_run_without_the_apps_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It used to be silent too: the app's message limit was not applied, only uvicorn's 16 MiB."""
    simulate(monkeypatch, "websockets", "websockets.protocol", "self.max_message_size", "self.max_size", "18.0")
    with pytest.raises(InternalsChanged) as refused:
        check_all(USES)
    message = str(refused.value)
    assert message.startswith("petstore.server.uvicorn_ws cannot run on websockets 18.0")
    assert "ServerProtocol has no attribute 'max_message_size'" in message


class Probe:
    """An ASGI app that uses the extension when offered and records what ``write`` answered."""

    def __init__(self) -> None:
        self.answers: dict[str, bool] = {}
        self.offered: bool | None = None
        self.flooded = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        extension = scope.get("extensions", {}).get(EXTENSION)
        self.offered = extension is not None
        await receive()  # websocket.connect
        if extension is None:
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "plain"})
            await send({"type": "websocket.close", "code": 1000})
            return
        write = extension["write"]
        self.answers["before accept"] = write(framed("too early"))
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "through ASGI"})
        self.answers["open"] = write(framed("direct é"))
        self.answers["several"] = write(framed("one", "two", "three"))
        message = await receive()
        if message.get("text") == "flood":
            chunk = framed("x" * 65536)
            for _ in range(4000):  # about 256 MB at most; the socket buffers hold a few MB
                if not write(chunk):
                    self.answers["flood refused"] = True
                    break
            self.flooded.set()
            await receive()
            return
        await send({"type": "websocket.close", "code": 1000})
        self.answers["after close"] = write(framed("too late"))


@contextlib.asynccontextmanager
async def server(app: Probe, ws: str) -> AsyncIterator[int]:
    async with uvicorn_server(app, ws) as instance:
        yield instance.config.port


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any, ws: str) -> AsyncIterator[uvicorn.Server]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws=ws, lifespan="off")
    instance = uvicorn.Server(config)
    task = asyncio.create_task(instance.serve())
    await until(lambda: instance.started or task.done(), "uvicorn to start")
    try:
        yield instance
    finally:
        instance.should_exit = True
        await asyncio.wait_for(task, DEADLINE)


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_write_sends_a_text_message_once_open_and_refuses_before_and_after(compression: str | None) -> None:
    """Without an extension the shared frame goes out as it is; with permessage-deflate the
    protocol compresses the payload itself. Either way the client reads the same text."""
    app = Probe()
    async with server(app, PROTOCOL) as port, connect(f"ws://127.0.0.1:{port}/", compression=compression) as ws:
        assert await ws.recv() == "through ASGI"
        assert [await ws.recv() for _ in range(4)] == ["direct é", "one", "two", "three"]  # one frame each
        await ws.send("done")
        await until(lambda: "after close" in app.answers, "the app to close")
    assert app.offered is True
    assert app.answers == {"before accept": False, "open": True, "several": True, "after close": False}


async def test_an_open_connection_keeps_neither_its_handshake_nor_an_idle_queue() -> None:
    """What an idle socket costs (RSS per connection, docs/benchmarks.md): once the upgrade is
    answered the protocol lets go of websockets' parsed request and response (their headers), and
    its receive queue and writable flag hold nothing while nothing waits; both still work."""
    app = Probe()
    async with uvicorn_server(app, PROTOCOL) as instance, connect(f"ws://127.0.0.1:{instance.config.port}/") as ws:
        assert await ws.recv() == "through ASGI"
        assert [await ws.recv() for _ in range(4)] == ["direct é", "one", "two", "three"]
        (protocol,) = instance.server_state.connections
        assert protocol.request is None and protocol.response is None  # type: ignore[attr-defined]
        assert protocol.writable.is_set() and protocol.writable._waiters is None  # type: ignore[attr-defined]
        assert protocol.queue.empty() and protocol.queue._getter is not None  # type: ignore[attr-defined]  (the app awaits it)
        await ws.send("done")  # the queue hands it to the waiting app, which closes
        await until(lambda: "after close" in app.answers, "the app to close")
    assert app.answers["after close"] is False


async def test_plain_uvicorn_offers_no_extension_and_the_app_uses_asgi() -> None:
    app = Probe()
    async with server(app, PLAIN) as port, connect(f"ws://127.0.0.1:{port}/") as ws:
        assert await ws.recv() == "plain"
    assert app.offered is False


async def test_a_client_that_does_not_read_makes_write_refuse_instead_of_buffering_without_bound() -> None:
    app = Probe()
    async with server(app, PROTOCOL) as port:
        sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            key = base64.b64encode(os.urandom(16)).decode()
            handshake = (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            sock.sendall(handshake.encode())
            response = b""
            while b"\r\n\r\n" not in response:  # a client speaks only once the upgrade is answered
                response += await asyncio.wait_for(asyncio.to_thread(sock.recv, 1), DEADLINE)
            assert response.startswith(b"HTTP/1.1 101")
            flood = b"flood"
            sock.sendall(bytes([0x81, 0x80 | len(flood)]) + b"\0\0\0\0" + flood)  # masked with a zero key
            await asyncio.wait_for(app.flooded.wait(), DEADLINE)  # never reading a byte
        finally:
            sock.close()
    assert app.answers["open"] is True
    assert app.answers.get("flood refused") is True


@pytest.mark.process
def test_a_compressed_message_inflating_past_the_apps_limit_is_refused_while_inflated(tmp_path: Path) -> None:
    """8 MiB of one letter is a few KiB with permessage-deflate. uvicorn's protocol would inflate
    and buffer it whole (its own limit is 16 MiB) before the app's 64 KiB limit applied; this one
    gives websockets the app's limit, which stops inflating past it: close 1009 with its reason."""
    limit = Settings.model_fields["ws_max_message_bytes"].default

    async def clients(ws_url: str) -> None:
        async with connect(f"{ws_url}/ws", compression="deflate", open_timeout=DEADLINE) as ws:
            assert [extension.name for extension in ws.protocol.extensions] == ["permessage-deflate"]
            await asyncio.wait_for(ws.recv(), DEADLINE)  # welcome
            await ws.send("x" * (8 * 1024 * 1024))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), DEADLINE)
        assert ws.close_code == 1009
        assert ws.close_reason == f"frame exceeds limit of {limit} bytes"
        # A message at the limit, compressed just as well, is the app's to read.
        async with connect(f"{ws_url}/ws", compression="deflate", open_timeout=DEADLINE) as ws:
            await asyncio.wait_for(ws.recv(), DEADLINE)
            await ws.send('{"type": "ping", "id": "' + "p" * (limit - 64) + '"}')
            reply = await asyncio.wait_for(ws.recv(), DEADLINE)
            assert '"type":' in str(reply)

    with running(tmp_path) as server:
        asyncio.run(clients(server.ws_url))
        assert_clean_log(server)
