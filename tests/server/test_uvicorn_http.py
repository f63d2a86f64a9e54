"""petstore.server.uvicorn_http's read bounds, against a real uvicorn running the protocol ``petstore
serve`` runs (tests.services.uvicorn.DEFAULT_APP_COMMAND, or ``petstore serve`` itself), with raw
sockets for what no client library would send: a header cap (431), a header timeout and a body
idle timeout (408), idle connections that CR/LF does not keep open, and half-sent requests that
do not use up the server's file descriptors. One test drives the protocol in-process, to count
what the cap costs per chunk."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from petstore.config import Settings
from petstore.internals import InternalsChanged
from petstore.server.uvicorn_http import USES, HttpProtocol
from tests.realtime.support import DEADLINE, until
from tests.releases import check_all, simulate
from tests.server.test_shutdown import PETSTORE, assert_clean_log, running
from tests.services import DEFAULT_APP_COMMAND, HOST, UvicornServer

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process

#: What a test sends at most of a header that never ends: far past any cap, short of a long test.
HUGE = 32 * 1024 * 1024
PIECE = 64 * 1024
#: The server's limit on open files in the descriptor test (its limit_concurrency: 64 fewer).
NOFILE = 256


@pytest.fixture
def server(tmp_path: Path) -> Iterator[UvicornServer]:
    with running(tmp_path, max_header_bytes="4096", header_timeout_seconds="1", body_timeout_seconds="1") as instance:
        yield instance


def connect(server: UvicornServer) -> socket.socket:
    return socket.create_connection((HOST, server.port), timeout=DEADLINE)


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any], bool]:
    """Status, JSON body and whether the server closed the connection after it (all within DEADLINE)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without a response after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of the body"
        body += chunk
    closed = sock.recv(65536) == b""
    return int(lines[0].split()[1]), json.loads(body[:length]), closed


def read_response_keep_alive(sock: socket.socket) -> tuple[int, bytes]:
    """One response of several on a keep-alive connection (reads exactly its bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, f"closed without a response after {data!r}"
        data += chunk
    head = data.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
    body = b""
    while len(body) < int(headers["content-length"]):
        body += sock.recv(int(headers["content-length"]) - len(body))
    return int(head[0].split()[1]), body


# ------------------------------------------------------------------------------ header size


def test_headers_past_the_cap_get_431_and_the_connection_closes(server: UvicornServer) -> None:
    padding = b"x" * 8192
    # Headers that never end: refused once past the cap, not read on.
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: petstore\r\nX-Pad: " + padding)
        status, body, closed = read_response(sock)
    assert (status, body["code"], body["type"], closed) == (431, 431, "headers_too_large", True)
    # Headers that end, past the cap, all in one read: refused too, before the app runs.
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: petstore\r\nX-Pad: " + padding + b"\r\n\r\n")
        status, body, closed = read_response(sock)
    assert (status, body["type"], closed) == (431, "headers_too_large", True)
    # A WebSocket upgrade past the cap: refused, not upgraded.
    with connect(server) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: petstore\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Pad: "
            + padding
            + b"\r\n\r\n"
        )
        status, body, closed = read_response(sock)
    assert (status, body["type"], closed) == (431, "headers_too_large", True)
    # Under the cap, pipelined behind requests whose ends came in the same read: served.
    with connect(server) as sock:
        small = b"GET /healthz HTTP/1.1\r\nHost: petstore\r\nX-Pad: " + b"y" * 3000 + b"\r\n\r\n"
        sock.sendall(small * 3)
        for _ in range(3):
            status, raw = read_response_keep_alive(sock)
            assert status == 200, raw
    # Over it, pipelined behind one under it: the first is served, the second refused.
    with connect(server) as sock:
        sock.sendall(small + b"GET /healthz HTTP/1.1\r\nHost: petstore\r\nX-Pad: " + padding + b"\r\n\r\n")
        status, raw = read_response_keep_alive(sock)
        assert status == 200, raw
        status, body, closed = read_response(sock)
    assert (status, body["type"], closed) == (431, "headers_too_large", True)
    assert_clean_log(server)


def test_a_huge_header_is_refused_early_and_the_server_answers_meanwhile(tmp_path: Path) -> None:
    """The issue's case: a header of hundreds of MB was read whole, slower and slower, while
    /healthz waited. Now the default cap (16 KiB) ends it at once; another connection is answered
    while the client is still sending."""
    with running(tmp_path) as server:
        outcome: dict[str, int] = {}
        streaming = threading.Event()

        def stream() -> None:
            with connect(server) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: petstore\r\nX-Huge: ")
                sent = 0
                piece = b"z" * PIECE
                try:
                    while sent < HUGE:
                        sock.sendall(piece)
                        sent += PIECE
                        streaming.set()
                except (BrokenPipeError, ConnectionResetError):
                    outcome["refused after"] = sent
                else:
                    outcome["all sent"] = sent
                finally:
                    streaming.set()

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        try:
            assert streaming.wait(DEADLINE)
            response = httpx.get(f"{server.url}/healthz", timeout=DEADLINE)
        finally:
            thread.join(DEADLINE)
        assert response.status_code == 200
        # Refused: what the sender got out is what the loopback's buffers hold, not the header.
        assert "all sent" not in outcome and outcome["refused after"] < HUGE, outcome
        assert_clean_log(server)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def test_the_cap_costs_a_sum_per_chunk_not_a_pass_over_the_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fed a byte at a time, the protocol sums sizes; it adds up the headers themselves only for a
    head that may be over the cap, at its end, or once where a pipelined request began."""
    scans = 0
    size_of = HttpProtocol._head_size

    def counted(self: HttpProtocol) -> int:
        nonlocal scans
        scans += 1
        return size_of(self)

    monkeypatch.setattr(HttpProtocol, "_head_size", counted)
    config = Config(app=ok_app, lifespan="off", log_level="warning")
    cap: int = Settings.model_fields["max_header_bytes"].default  # the protocol's, without the app

    def open_connection() -> tuple[HttpProtocol, FakeTransport]:
        protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={})
        transport = FakeTransport()
        transport.protocol = protocol
        protocol.connection_made(transport)
        return protocol, transport

    def feed_bytes(protocol: HttpProtocol, transport: FakeTransport, count: int) -> int:
        """Feed ``count`` header bytes one at a time; how many went in before the connection closed."""
        for fed in range(count):
            if transport.closed:
                return fed
            protocol.data_received(b"a")
        return count

    async def answered(transport: FakeTransport, count: int) -> None:
        """Wait until the app's task has answered the ``count`` requests that came complete."""
        await until(lambda: transport.written.count(b"HTTP/1.1 200") >= count, f"{count} answers")

    start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "
    for first in (b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):  # alone, then pipelined behind a request
        scans = 0
        protocol, transport = open_connection()
        protocol.data_received(first + start)
        await answered(transport, 1 if first else 0)
        assert feed_bytes(protocol, transport, cap - 200) == cap - 200
        protocol.data_received(b"\r\n\r\n")
        await answered(transport, 2 if first else 1)
        assert not transport.closed and transport.written.count(b"HTTP/1.1 200") == (2 if first else 1)
        assert scans <= (2 if first else 0), scans
        protocol.connection_lost(None)

        protocol, transport = open_connection()
        protocol.data_received(first + start)
        await answered(transport, 1 if first else 0)
        fed = feed_bytes(protocol, transport, 2 * cap)
        assert transport.closed and b"HTTP/1.1 431" in transport.written
        assert cap - len(start) - 50 < fed <= cap, fed  # refused at the cap, not some way past it
        protocol.connection_lost(None)


# ----------------------------------------------------------------------------- slow clients


def test_headers_not_complete_in_time_get_408_and_the_connection_closes(server: UvicornServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: petstore\r\n")  # and nothing more
        status, body, closed = read_response(sock)
    assert (status, body["code"], body["type"], closed) == (408, 408, "request_timeout", True)
    with connect(server) as sock:  # a connection that never sends a byte is timed out alike
        status, body, closed = read_response(sock)
    assert (status, body["type"], closed) == (408, "request_timeout", True)
    with connect(server) as sock:  # and one that sends only what begins no request
        sock.sendall(b"\r\n")
        status, body, closed = read_response(sock)
    assert (status, body["type"], closed) == (408, "request_timeout", True)
    # A later request on a keep-alive connection has the same time, from its first byte.
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: petstore\r\n\r\n")
        assert read_response_keep_alive(sock)[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        status, body, closed = read_response(sock)
    assert (status, body["type"], closed) == (408, "request_timeout", True)
    assert_clean_log(server)


def test_an_idle_keep_alive_connection_is_not_kept_open_by_bytes_that_begin_no_request(tmp_path: Path) -> None:
    """uvicorn cancels its keep-alive timeout on any byte, and the parser skips CR/LF between
    requests: a client sending one now and then would hold the connection (and a descriptor)."""
    command = [*DEFAULT_APP_COMMAND, "--timeout-keep-alive", "1"]
    with running(tmp_path, command) as server, connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: petstore\r\n\r\n")
        assert read_response_keep_alive(sock)[0] == 200
        sock.settimeout(0.2)
        deadline = time.monotonic() + DEADLINE
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"\r\n")
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed, f"still open {DEADLINE} s after its last request, past the keep-alive timeout of 1 s"


def test_a_body_that_stops_coming_gets_408_and_the_connection_closes(server: UvicornServer) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/v3/pet HTTP/1.1\r\nHost: petstore\r\nX-Test-User: the-staff:1:staff\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name": '
        )
        status, body, closed = read_response(sock)
    assert (status, body["type"], closed) == (408, "request_timeout", True)
    # Nothing was stored, the server is fine, and a keep-alive connection that serves requests
    # for longer than either timeout is not timed out.
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as http:
        assert http.get("/api/v3/pet/findByStatus", params={"status": "available"}).json() == []
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            assert http.get("/healthz").status_code == 200
            # The pace of a client keeping its connection busy past both timeouts: what is tested is
            # that time passes, so this is not a synchronisation (there is no condition to wait on).
            time.sleep(0.2)
    assert_clean_log(server)


def test_half_sent_requests_do_not_use_up_the_servers_descriptors(tmp_path: Path) -> None:
    """``petstore serve`` under a limit of 256 open files, with a header timeout too long to
    help: more half-sent requests than it has descriptors, then a new request is still answered
    (before, accept() failed with EMFILE and new clients waited in the kernel's queue)."""
    limit_files = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    command = [sys.executable, "-c", limit_files, str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}"]
    with running(tmp_path, command, header_timeout_seconds="300") as server:
        sockets: list[socket.socket] = []
        try:
            for _ in range(NOFILE + 100):
                sock = connect(server)
                sockets.append(sock)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: petstore\r\nX-Half: sent")
            response = httpx.get(f"{server.url}/healthz", timeout=DEADLINE)
            assert response.status_code == 200, server.logtail()
            # The longest waiting made room: told 408, and closed.
            status, body, closed = read_response(sockets[0])
            assert (status, body["type"], closed) == (408, "request_timeout", True)
        finally:
            for sock in sockets:
                sock.close()
        log = assert_clean_log(server)
        assert "out of system resource" not in log, log


def test_a_uvicorn_whose_protocol_lost_what_the_read_bounds_use_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rather than serving without the bounds (or failing on the first request)."""
    module = "uvicorn.protocols.http.httptools_impl"
    simulate(monkeypatch, "uvicorn", module, "self.flow", "self.flow_control", "0.99.0")
    with pytest.raises(InternalsChanged) as refused:
        check_all(USES)
    message = str(refused.value)
    assert message.startswith("petstore.server.uvicorn_http cannot run on uvicorn 0.99.0")
    assert "HttpToolsProtocol has no attribute 'flow'" in message
