"""SIGTERM ends a real server within its bound whatever its clients do (SPEC §6, petstore.server.shutdown).

Each test runs the server as a subprocess, the way it is deployed: the tests' uvicorn command
(``tests.services.DEFAULT_APP_COMMAND``, the protocols ``petstore serve`` runs) or ``petstore
serve`` itself. Clients are raw sockets where the test needs a client that stops reading (its
receive buffer is made small, then filled with large events) or must see every byte the server
sends (exactly one close frame). "Exits within the bound" is a wait with a deadline of the bound
plus a margin, never a measured time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from petstore.cli import build_parser
from petstore.plugin import PluginBase
from petstore.realtime.hub import Hub
from petstore.state import AppState
from tests.fakes import REPO_ROOT, prepare_database, uvicorn_env
from tests.realtime.support import DEADLINE, Client, ws_client
from tests.services import HOST, UvicornServer, wait_until

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process

BOUND = 4.0
#: Start-up of the interpreter aside, what a loaded test machine may add to the bound.
MARGIN = 4.0
STAFF = {"X-Test-User": "the-staff:1:staff"}
#: A pet event of about 200 KB: a few of them fill any loopback socket's buffers.
BIG_URLS = ["https://example.test/" + "x" * 1990 for _ in range(100)]
PETSTORE = Path(sys.executable).with_name("petstore")
CLOSE = 0x8


# ------------------------------------------------------------------------------------ servers


class StuckPlugin(PluginBase):
    """A plugin whose shutdown never finishes by itself."""

    name = "test-stuck"

    async def shutdown(self, state: AppState) -> None:
        await asyncio.Event().wait()


def stuck(settings: Any) -> StuckPlugin:
    return StuckPlugin()


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}"
    prepare_database(database_url)
    env = uvicorn_env(database_url, tmp_path / "media")
    env.update({"PETSTORE_SHUTDOWN_TIMEOUT": str(BOUND), **{f"PETSTORE_{k.upper()}": v for k, v in extra.items()}})
    return env


@contextlib.contextmanager
def running(tmp_path: Path, command: list[str] | None = None, **extra: str) -> Iterator[UvicornServer]:
    env = server_env(tmp_path, **extra)
    options: dict[str, Any] = {}
    if command:
        options["command"] = command
        env["PYTHONPATH"] = str(REPO_ROOT)  # a console script has no working directory on its path
    server = UvicornServer(env=env, cwd=REPO_ROOT, **options)
    with server:
        yield server


def terminate(server: UvicornServer) -> int:
    pid = server.pid
    assert pid is not None, server.logtail()
    os.kill(pid, signal.SIGTERM)
    return pid


def assert_exits_within_bound(server: UvicornServer, bound: float = BOUND) -> None:
    try:
        wait_until(lambda: not server.running, bound + MARGIN, "the server to exit after SIGTERM")
    except TimeoutError:
        pytest.fail(f"still running {bound + MARGIN}s after SIGTERM; log:\n{server.logtail()}")


def assert_clean_log(server: UvicornServer) -> str:
    log = server.log_path.read_text()
    for sign in ("Traceback", "Application shutdown failed", "Exception in ASGI application", "Cancel "):
        assert sign not in log, log
    return log


def add_big_pets(server: UvicornServer, count: int) -> None:
    with httpx.Client(base_url=f"{server.url}/api/v3", timeout=DEADLINE) as http:
        for i in range(count):
            response = http.post("/pet", json={"name": f"big-{i}", "photoUrls": BIG_URLS}, headers=STAFF)
            assert response.status_code == 200, response.text


# ------------------------------------------------------------------------ a raw WebSocket client


class RawWebSocket:
    """A WebSocket client on a plain socket: it reads only when told to, and sees every frame."""

    def __init__(self, port: int, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(DEADLINE)
        self.sock.connect((HOST, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.data = b""
        while b"\r\n\r\n" not in self.data:
            self._read()
        head, self.data = self.data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _read(self) -> bool:
        chunk = self.sock.recv(65536)
        self.data += chunk
        return bool(chunk)

    def send(self, message: dict[str, Any]) -> None:
        self._send_frame(0x1, json.dumps(message).encode())

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """The complete frames received so far (opcode, payload), consumed."""
        while len(self.data) >= 2:
            opcode, length, start = self.data[0] & 0x0F, self.data[1] & 0x7F, 2
            if length == 126:
                (length,), start = struct.unpack("!H", self.data[2:4]), 4
            elif length == 127:
                (length,), start = struct.unpack("!Q", self.data[2:10]), 10
            if len(self.data) < start + length:
                return
            payload, self.data = self.data[start : start + length], self.data[start + length :]
            yield opcode, payload

    def read_until(self, kind: str) -> None:
        """Read until a message of type ``kind`` arrives."""
        while True:
            for opcode, payload in self.frames():
                if opcode == 0x1:
                    body = json.loads(payload)
                    if any(item["type"] == kind for item in (body if isinstance(body, list) else [body])):
                        return
            assert self._read(), "the server closed the connection"

    def read_to_end(self) -> list[int]:
        """Read until the server closes the TCP connection; the close codes of every close frame
        (the first one answered, as a client does)."""
        codes = []
        while True:
            for opcode, payload in self.frames():
                if opcode == CLOSE:
                    codes.append(struct.unpack("!H", payload[:2])[0])
                    if len(codes) == 1:
                        self._send_frame(CLOSE, payload[:2])
            try:
                if not self._read():
                    return codes
            except ConnectionResetError:
                return codes

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------------------- tests


def test_sigterm_ends_event_streams_and_exits_within_the_bound(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        with socket.create_connection((HOST, server.port), timeout=DEADLINE) as stream:
            stream.sendall(f"GET /api/v3/events?room=inventory HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            received = b""
            while b"event: subscribed" not in received:
                received += stream.recv(65536)
            assert received.startswith(b"HTTP/1.1 200"), received
            terminate(server)
            while chunk := stream.recv(65536):  # the stream ends: the chunked body's last chunk, then EOF
                received += chunk
        assert received.endswith(b"0\r\n\r\n"), received[-200:]
        assert_exits_within_bound(server)
        log = assert_clean_log(server)
    assert "aborted" not in log  # a client that reads was not cut off


def open_stream(port: int, room: str, receive_buffer: int | None = None) -> socket.socket:
    """An SSE request on a plain socket, read until its ``subscribed`` event."""
    stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    stream.settimeout(DEADLINE)
    stream.connect((HOST, port))
    stream.sendall(f"GET /api/v3/events?room={room} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    received = b""
    while b"event: subscribed" not in received:
        received += stream.recv(65536)
    return stream


def test_sigterm_aborts_an_event_stream_whose_client_does_not_read(tmp_path: Path) -> None:
    with running(tmp_path, ws_queue_size="100000") as server:
        stalled = open_stream(server.port, "pets", receive_buffer=4096)  # from here on it never reads
        pets = 40
        with open_stream(server.port, "pets") as reading:
            add_big_pets(server, pets)
            received = b""
            while received.count(b"event: pet.created") < pets:  # so every event reached the hub
                received += reading.recv(1 << 20)
            terminate(server)
            while reading.recv(1 << 20):
                pass
        assert_exits_within_bound(server)
        stalled.close()
        log = assert_clean_log(server)
    assert log.count("shutdown: 1 WebSocket/SSE connections were still open") == 1, log


def test_sigterm_closes_websockets_with_1012_even_beside_a_client_that_does_not_read(tmp_path: Path) -> None:
    async def scenario(server: UvicornServer) -> RawWebSocket:
        async with contextlib.AsyncExitStack() as stack:
            clients: list[Client] = []
            for _ in range(3):
                client = await stack.enter_async_context(ws_client(server.ws_url, max_size=None))
                await client.request({"type": "subscribe", "room": "pets", "id": 1}, "subscribed")
                clients.append(client)
            counted = RawWebSocket(server.port)  # sees every frame: exactly one close
            counted.read_until("welcome")
            counted.send({"type": "subscribe", "room": "pets"})
            counted.read_until("subscribed")
            stalled = RawWebSocket(server.port, receive_buffer=4096)
            stalled.read_until("welcome")
            stalled.send({"type": "subscribe", "room": "pets"})
            stalled.read_until("subscribed")  # from here on it never reads again
            pets = 40  # about 8 MB: more than the kernel and the transport buffer on the way to it
            await asyncio.to_thread(add_big_pets, server, pets)
            for client in clients:  # every event reached the hub, so the stalled socket's buffers are full
                await client.events(pets, within=30.0)
            counted_codes = asyncio.create_task(asyncio.to_thread(counted.read_to_end))
            terminate(server)
            for client in clients:
                assert await client.closed() == 1012
            assert await asyncio.wait_for(counted_codes, DEADLINE) == [1012]
            counted.close()
            return stalled

    with running(tmp_path, ws_queue_size="100000") as server:
        stalled = asyncio.run(scenario(server))
        assert_exits_within_bound(server)  # the stalled client still has not read a byte
        stalled.close()
        log = assert_clean_log(server)
    assert log.count("shutdown: 1 WebSocket/SSE connections were still open") == 1, log


def test_sigterm_refuses_new_connections_and_says_not_ready_on_open_ones(tmp_path: Path) -> None:
    bound = 10.0  # the default: its drain grace, 2 s, is the window in which the test asks
    with running(tmp_path, shutdown_timeout=str(bound)) as server:
        # A client that does not read keeps the drain busy for its grace.
        stalled = RawWebSocket(server.port, receive_buffer=4096)
        stalled.read_until("welcome")
        stalled.send({"type": "subscribe", "room": "pets"})
        stalled.read_until("subscribed")
        add_big_pets(server, 40)
        balancer = http.client.HTTPConnection(HOST, server.port, timeout=DEADLINE)  # keep-alive
        balancer.request("GET", "/readyz")
        ready = balancer.getresponse()
        assert ready.status == 200, ready.read()
        ready.read()
        terminate(server)

        def refused() -> bool:
            try:
                socket.create_connection((HOST, server.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_until(refused, DEADLINE, "new connections to be refused")

        def not_ready() -> dict[str, Any] | None:
            balancer.request("GET", "/readyz")
            response = balancer.getresponse()
            body: dict[str, Any] = json.loads(response.read())
            return body if response.status == 503 else None

        body = wait_until(not_ready, DEADLINE, "/readyz to answer 503 on the open connection")
        assert body["checks"]["shutdown"] == "draining"
        assert body["checks"]["database"] == "ok"
        stalled.close()
        balancer.close()
        assert_exits_within_bound(server, bound)
        assert_clean_log(server)


def test_a_shutdown_step_that_cannot_finish_is_named_and_the_exit_stays_bounded(tmp_path: Path) -> None:
    with running(tmp_path, plugins="tests.fakes,tests.server.test_shutdown:stuck") as server:
        terminate(server)
        assert_exits_within_bound(server)
        log = assert_clean_log(server)
    lines = [line for line in log.splitlines() if "did not finish" in line]
    assert len(lines) == 1, log
    assert "plugin 'test-stuck' shutdown" in lines[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_petstore_serve_stops_within_its_shutdown_timeout(tmp_path: Path, workers: int) -> None:
    command = [str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}", "--workers", str(workers)]
    command += ["--shutdown-timeout", str(BOUND)]
    with running(tmp_path, command) as server:
        streams = []
        for _ in range(2 * workers):  # some of them reach each worker, most likely
            stream = socket.create_connection((HOST, server.port), timeout=DEADLINE)
            stream.sendall(f"GET /api/v3/events?room=pets HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            received = b""
            while b"event: subscribed" not in received:
                received += stream.recv(65536)
            streams.append(stream)
        terminate(server)
        for stream in streams:
            while stream.recv(65536):
                pass
            stream.close()
        assert_exits_within_bound(server)
        assert_clean_log(server)


async def test_a_stopping_hub_closes_at_once_a_connection_made_after_it_began() -> None:
    hub = Hub(lambda *args, **labels: None)
    early = hub.connection("early", 4)
    hub.close_every(1012, also_new=True)
    late = hub.connection("late", 4)
    assert (early.close_code, late.close_code) == (1012, 1012)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_serve_refuses_a_shutdown_timeout_that_is_not_a_positive_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--shutdown-timeout", value])
    assert exited.value.code == 2
    assert "--shutdown-timeout" in capsys.readouterr().err
