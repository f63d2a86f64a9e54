"""Connection cost: server CPU per connect + subscribe, and RSS per idle connection, up to 20,000.

Run by hand, never by the tests::

    .venv/bin/python bench/connect.py                              # 20,000 connections per server
    .venv/bin/python bench/connect.py --connections 5000 --plot /tmp/connect.png

Each server is a real subprocess on a loopback port, one process:

- ``websockets broadcast()``: the floor, a plain ``websockets`` server (the baseline of
  ``bench/fanout.py``), which only accepts;
- ``petstore (in-process)`` and ``petstore (redis)``: ``petstore serve``'s protocols
  (``DEFAULT_APP_COMMAND``) with every default plugin on (JWT auth, rate limits with budgets the
  run cannot exhaust, metrics), SQLite, and the in-process broker or a real Redis. Each client
  subscribes to ``inventory`` and counts once its ``subscribed`` answer has come.

The clients are bare protocol objects in this process (an upgrade request, one masked
``subscribe`` frame, a byte search for the answer), so they cost the benchmark's process little
and the server's CPU is what is read: user + system time from ``/proc`` over each step of
``--step`` connections opened ``--concurrency`` at a time, divided by the connections of the step;
RSS from ``/proc`` after each step. The table gives the median CPU per connect + subscribe over
the steps, the RSS per idle connection (the slope of RSS over connections, first step left
out), and the RSS at the end; ``--plot`` draws RSS against connections for every server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import secrets
import statistics
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.support import cpu_seconds, prepare, rss_bytes, server_env
from tests.services import DEFAULT_APP_COMMAND, RedisServer, UvicornServer, free_port, wait_until

SUBSCRIBE = b'{"type":"subscribe","room":"inventory"}'
SUBSCRIBED = b'"subscribed"'
UNLIMITED = "100000000/minute"
LIMITS_OFF = {
    "PETSTORE_RATE_LIMIT": UNLIMITED,
    "PETSTORE_RATELIMIT_WS_CONNECT": UNLIMITED,
    "PETSTORE_RATELIMIT_WS_CONNECT_PER_IP": UNLIMITED,
    "PETSTORE_WS_AUTH_TIMEOUT_SECONDS": "3600",  # anonymous clients that never send auth stay
}
COMMAND = [*DEFAULT_APP_COMMAND, "--no-access-log", "--log-level", "warning"]
#: Files a process needs besides its sockets (the database, logs, Redis, the loop's own).
SPARE_FILES = 500
BASELINE = textwrap.dedent(
    """
    import asyncio, sys
    from websockets.asyncio.server import serve

    async def handler(ws):
        await ws.wait_closed()

    async def main():
        async with serve(handler, "127.0.0.1", int(sys.argv[1]), compression=None, max_queue=16):
            await asyncio.Future()

    asyncio.run(main())
    """
)


class Client(asyncio.Protocol):
    """One WebSocket client that upgrades, sends ``subscribe`` (petstore) and waits for its answer."""

    def __init__(self, request: bytes, subscribe: bool) -> None:
        self.request = request
        self.subscribe = subscribe
        self.transport: asyncio.Transport | None = None
        self.received = b""
        self.upgraded = False
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return  # idle from here on: the server sends nothing more to these clients
        self.received += data
        if not self.upgraded:
            if b"\r\n\r\n" not in self.received:
                return
            status, _, self.received = self.received.partition(b"\r\n\r\n")
            if not status.startswith(b"HTTP/1.1 101"):
                self.done.set_exception(RuntimeError(status.split(b"\r\n", 1)[0].decode()))
                return
            self.upgraded = True
            if not self.subscribe:
                self.done.set_result(None)
                return
            assert self.transport is not None  # a client frame is masked; a zero key is a valid one
            self.transport.write(bytes([0x81, 0x80 | len(SUBSCRIBE)]) + b"\0\0\0\0" + SUBSCRIBE)
        if SUBSCRIBED in self.received:
            self.received = b""
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before it was ready: {exc}"))


@dataclass
class Result:
    name: str
    connections: list[int] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # per connect + subscribe, each step

    def rss_kb_per_connection(self) -> float:
        """The slope of RSS over connections, leaving out the first step (caches, pools warming)."""
        xs, ys = self.connections[1:], self.rss_mb[1:]
        if len(xs) < 2:
            return float("nan")
        return statistics.linear_regression(xs, ys).slope * 1024


async def measure(name: str, url: str, pid: int, args: argparse.Namespace, subscribe: bool) -> Result:
    host_port = url.removeprefix("ws://").split("/", 1)[0]
    host, _, port = host_port.partition(":")
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    result = Result(name)
    clients: list[Client] = []
    gate = asyncio.Semaphore(args.concurrency)

    async def open_one() -> Client:
        async with gate:
            _, client = await loop.create_connection(lambda: Client(request, subscribe), host, int(port))
            await asyncio.wait_for(client.done, 60)
            return client

    try:
        while len(clients) < args.connections:
            step = min(args.step, args.connections - len(clients))
            before = sum(cpu_seconds(pid))
            clients += await asyncio.gather(*(open_one() for _ in range(step)))
            used = sum(cpu_seconds(pid)) - before
            result.connections.append(len(clients))
            result.rss_mb.append(rss_bytes(pid) / 2**20)
            result.cpu_us.append(used / step * 1e6)
            print(f"  {name}: {len(clients):,} open, {result.cpu_us[-1]:.0f} µs/connection", file=sys.stderr)
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.abort()
    return result


async def baseline(args: argparse.Namespace) -> Result:
    port = free_port()
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", BASELINE, str(port))
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        await asyncio.to_thread(wait_until, lambda: _accepts(port), 30, "the baseline to listen")
        return await measure("websockets (floor)", url, process.pid, args, subscribe=False)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def petstore(args: argparse.Namespace, workdir: Path, redis_url: str | None) -> Result:
    name = f"petstore ({'redis' if redis_url else 'in-process'}, every plugin)"
    database = f"sqlite+aiosqlite:///{workdir / ('redis.db' if redis_url else 'memory.db')}"
    await prepare(database)
    env = server_env(database, workdir) | LIMITS_OFF
    if redis_url:
        env["PETSTORE_REDIS_URL"] = redis_url
    server = UvicornServer(env=env, command=COMMAND, cwd=workdir)
    await asyncio.to_thread(server.start)
    try:
        assert server.pid is not None
        return await measure(name, server.ws_url + "/ws", server.pid, args, subscribe=True)
    finally:
        await asyncio.to_thread(server.close)


def table(results: list[Result]) -> str:
    floor = results[0]
    floor_cpu = statistics.median(floor.cpu_us)
    lines = [
        "| server | CPU µs per connect + subscribe (median) | x floor | RSS KB per idle conn. | RSS MB at the end |",
        "|---|---:|---:|---:|---:|",
    ]
    for result in results:
        cpu = statistics.median(result.cpu_us)
        lines.append(
            f"| {result.name} | {cpu:,.0f} | {cpu / floor_cpu:.1f} | {result.rss_kb_per_connection():.1f} | "
            f"{result.rss_mb[-1]:,.0f} |"
        )
    return "\n".join(lines)


def plot(results: list[Result], path: Path, connections: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in results:
        label = f"{result.name}: {result.rss_kb_per_connection():.1f} KB per connection"
        ax.plot(result.connections, result.rss_mb, marker="o", markersize=3, label=label)
    ax.set_xlabel("idle connections (subscribed to inventory, for petstore)")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title(f"RSS against connections, one process, up to {connections:,} ({os.cpu_count()} CPUs)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> list[Result]:
    results = [await baseline(args)]
    with tempfile.TemporaryDirectory(prefix="petstore-connect-") as tmp:
        workdir = Path(tmp)
        results.append(await petstore(args, workdir, None))
        with RedisServer() as redis:
            results.append(await petstore(args, workdir, redis.url))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=20_000, help="per server (default 20,000)")
    parser.add_argument("--step", type=int, default=2_000, help="connections per measured step")
    parser.add_argument("--concurrency", type=int, default=100, help="connects in flight at once")
    parser.add_argument("--plot", type=Path, help="a PNG of RSS against connections")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    if args.connections + SPARE_FILES > hard:
        # Each side holds one socket per connection: this process the clients', the server its own.
        args.connections = (hard - SPARE_FILES) // args.step * args.step
        print(f"open-file limit {hard} (ulimit -Hn): {args.connections:,} connections per server", file=sys.stderr)
    results = asyncio.run(main_async(args))
    print(f"\n{args.connections:,} connections per server, {args.concurrency} at once, {os.cpu_count()} CPUs\n")
    print(table(results))
    if args.plot:
        plot(results, args.plot, args.connections)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
