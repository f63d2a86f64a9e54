"""The fault proxy itself, against a local echo server that records what reached it."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.faults.proxy import TcpProxy
from tests.services import HOST, free_port, wait_until

WAIT = 5.0
QUIET = 0.3  # how long "nothing arrives" is watched for


@dataclass
class Seen:
    """What one connection brought to the echo server, and how it ended ("eof" or "reset")."""

    data: bytearray = field(default_factory=bytearray)
    end: str | None = None


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        super().__init__((HOST, 0), EchoHandler)

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port


class EchoHandler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        seen = Seen()
        self.server.seen.append(seen)
        while True:
            try:
                chunk = self.request.recv(65536)
            except ConnectionResetError:
                seen.end = "reset"
                return
            if not chunk:
                seen.end = "eof"
                return
            seen.data += chunk
            try:
                self.request.sendall(chunk)
            except OSError:
                seen.end = "reset"
                return


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(HOST, echo.port) as proxy:
        yield proxy


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection((HOST, proxy.port), timeout=WAIT)
    return sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def nothing_arrives(sock: socket.socket) -> None:
    """No byte and no FIN within QUIET: the recv times out (an empty read would be a FIN)."""
    sock.settimeout(QUIET)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(WAIT)


def test_bytes_go_both_ways_and_connections_are_counted(proxy: TcpProxy, echo: EchoServer) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        a.sendall(b"hello")
        b.sendall(b"world")
        assert read_exactly(a, 5) == b"hello"
        assert read_exactly(b, 5) == b"world"
    assert proxy.accepted == 2
    wait_until(lambda: proxy.open_connections == 0, WAIT, "both connections to end")
    assert [seen.end for seen in echo.seen] == ["eof", "eof"]


def test_url_for_points_a_service_url_at_the_proxy(proxy: TcpProxy) -> None:
    assert proxy.url_for("redis://127.0.0.1:6379/0") == f"redis://127.0.0.1:{proxy.port}/0"
    assert (
        proxy.url_for("postgresql+asyncpg://postgres@127.0.0.1:5432/db")
        == f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/db"
    )


def test_a_silence_holds_bytes_and_fins_without_closing_anything_and_resume_delivers_them(
    proxy: TcpProxy, echo: EchoServer
) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"before")
        assert read_exactly(sock, 6) == b"before"
        proxy.silence()
        sock.sendall(b"during")
        nothing_arrives(sock)
        assert bytes(echo.seen[0].data) == b"before"
        with connect(proxy) as late:  # a new connection is accepted, and goes no further
            late.sendall(b"late")
            nothing_arrives(late)
            sock.shutdown(socket.SHUT_WR)
            nothing_arrives(sock)
            assert echo.seen[0].end is None  # the FIN was held back too
            proxy.resume()
            assert read_exactly(sock, 6) == b"during"
            assert read_exactly(late, 4) == b"late"
            wait_until(lambda: echo.seen[0].end == "eof", WAIT, "the held FIN to reach the server")


def test_reset_sends_an_rst_to_both_sides_of_every_connection(proxy: TcpProxy, echo: EchoServer) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        for sock in (a, b):
            sock.sendall(b"x")
            read_exactly(sock, 1)
        proxy.reset()
        for sock in (a, b):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
    wait_until(lambda: [seen.end for seen in echo.seen] == ["reset", "reset"], WAIT, "the server to see two resets")


def test_refuse_resets_new_connections_until_lifted(proxy: TcpProxy) -> None:
    proxy.refuse(True)
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:  # at connect or at the first read
        sock.sendall(b"x")
        sock.recv(1)
    proxy.refuse(False)
    with connect(proxy) as sock:
        sock.sendall(b"y")
        assert read_exactly(sock, 1) == b"y"
    assert proxy.accepted == 2


def test_delay_adds_latency_to_each_chunk_and_keeps_the_bytes(proxy: TcpProxy) -> None:
    proxy.delay(0.2)
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"slow")
        assert read_exactly(sock, 4) == b"slow"
        # A lower bound only (each way waited 0.2 s at least): never flaky.
        assert time.monotonic() - started >= 0.4
    proxy.delay(0)


def test_reset_after_cuts_a_connection_once_n_bytes_have_passed(proxy: TcpProxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"0123")
        read_exactly(sock, 4)
        trigger = proxy.reset_after(6, "to_server")
        sock.sendall(b"abcd")
        assert read_exactly(sock, 4) == b"abcd"
        sock.sendall(b"efghij")
        trigger.wait(WAIT)
        assert trigger.forwarded == 2
    wait_until(lambda: echo.seen[0].end == "reset", WAIT, "the server to see the reset")
    assert bytes(echo.seen[0].data) == b"0123abcdef"
    with connect(proxy) as sock:  # one shot: the next connection is left alone
        sock.sendall(b"0123456789")
        assert read_exactly(sock, 10) == b"0123456789"


def test_reset_on_a_marker_cuts_just_before_its_nth_occurrence(proxy: TcpProxy, echo: EchoServer) -> None:
    trigger = proxy.reset_on(b"EVALSHA", "to_server", occurrence=2)
    with connect(proxy) as sock:
        sock.sendall(b"*1\r\nEVAL")  # a marker split across chunks is still found
        read_exactly(sock, 8)
        sock.sendall(b"SHA\r\n*1\r\nEVALSHA\r\n")
        trigger.wait(WAIT)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    wait_until(lambda: echo.seen[0].end == "reset", WAIT, "the server to see the reset")
    assert bytes(echo.seen[0].data) == b"*1\r\nEVALSHA\r\n*1\r\n"
    assert trigger.forwarded == len(b"SHA\r\n*1\r\n")


def test_a_connection_to_a_server_that_is_down_is_reset() -> None:
    with TcpProxy(HOST, free_port()) as proxy, pytest.raises(ConnectionResetError), connect(proxy) as sock:
        sock.sendall(b"x")
        sock.recv(1)
