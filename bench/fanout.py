"""Fan-out benchmark: one room, N WebSocket subscribers, M events; petstore beside a plain
``websockets`` server that uses ``broadcast()``, in the same run, on the same machine.

Run by hand, not by the tests::

    .venv/bin/python bench/fanout.py                       # 1,000 subscribers, 300 events at 100/s
    .venv/bin/python bench/fanout.py --subscribers 500 --events 200 --idle 5000 --brokers memory

Each server is a real subprocess on a free loopback port (``tests.services``), one process,
no compression (clients ask for none, so every server sends plain frames). For every target:

1. N clients connect and join the room (petstore: ``inventory``; baseline: its only room).
2. M events are produced at ``--rate`` per second, an open loop (the producer does not wait
   for one to be answered before the next). Petstore: ``POST /api/v3/pet`` (a committed
   change; its ``inventory.changed`` event carries the commit time as ``ts``). Baseline: a
   publisher connection sends a message stamped with the send time, and the server
   ``broadcast()``s it to everyone else.
3. Measured: delivered events/s (N x M over the time from first send to last receipt), latency
   from commit (or send) to receipt, p50/p99, over a sample of clients that parse every event
   (spread evenly through the subscription order),
   and the server's CPU time (user+system from /proc) divided by the events delivered.
4. Idle memory: the server's RSS after opening ``--idle`` more idle connections (subscribed, for
   petstore) minus before, per connection.

The client runs in this process; on a small machine it competes with the server for CPU, which
raises the latencies of both targets alike.

``--workers 1,2`` runs the Redis target through the project's CLI instead, ``petstore serve
--workers N`` (uvicorn's supervisor and N worker processes; several workers need the Redis
broker), once per count, to check the scaling target: with 2 workers, the server CPU per
delivered event within 1.1x of one worker's. On 2 cores with the clients on the same machine,
capacity itself cannot be shown to double; an unchanged cost per event shows it would with
cores. The server's CPU is then the sum over the supervisor and its workers (its children in
/proc, read when the measurement starts and when it ends). The kernel spreads the subscribers
over the workers as they accept; each event is delivered once per subscriber, by whichever
worker holds that subscriber, and every worker also pays for hearing each event from Redis
once. So total CPU over delivered events is the figure per worker as well as per server (it is
already normalised per event: each worker's own CPU over the events it delivered, weighted by
its share of them, plus the supervisor's little), and its ratio to the 1-worker run is what the
target bounds. How the subscribers were spread is read from /proc too (each worker's established
connections on the server's port); each worker's own figure is shown beside it, higher for the
worker that holds fewer subscribers, since its share of the per-event Redis and POST work is
spread over fewer deliveries. Idle RSS is summed over the processes likewise.

    .venv/bin/python bench/fanout.py --brokers redis --workers 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.support import REPO, cpu_seconds, pace, rss_bytes
from tests.services import DEFAULT_APP_COMMAND, RedisServer, UvicornServer

SAMPLE = 25  # websockets clients that parse every frame to measure latency; the others only count events
PETSTORE = Path(sys.executable).with_name("petstore")  # the project's CLI, as the venv installs it
TARGET_RATIO = 1.1  # the bound on CPU per delivered event, N workers against one

BASELINE = textwrap.dedent(
    """
    import asyncio, sys
    from websockets.asyncio.server import broadcast, serve

    clients = set()

    async def handler(ws):
        clients.add(ws)
        try:
            async for message in ws:  # a publisher's message goes to everyone else
                broadcast(clients - {ws}, message)
        finally:
            clients.discard(ws)

    async def main():
        async with serve(handler, "127.0.0.1", int(sys.argv[1]), compression=None, max_queue=16):
            await asyncio.Future()

    asyncio.run(main())
    """
)


@dataclass
class Result:
    name: str
    delivered_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_event: float
    sys_share: float
    rss_kb_per_idle: float
    workers: int | None = None  # run by `petstore serve --workers N`; None: one process, as uvicorn runs it
    spread: tuple[int, ...] = ()  # subscribers held by each worker
    worker_cpu_us: tuple[float, ...] = ()  # each worker's CPU over the events it delivered


class Target:
    name = ""
    ws_url = ""
    port = 0
    pid = 0
    workers: int | None = None

    async def subscribe(self, ws: ClientConnection) -> None:
        raise NotImplementedError

    async def produce(self, count: int, rate: float) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Petstore(Target):
    def __init__(self, workdir: Path, redis_url: str | None, ws: str = "petstore", workers: int | None = None) -> None:
        broker = "redis" if redis_url else "in-process"
        self.name = f"petstore ({broker})" if ws == "petstore" else f"petstore ({broker}, ws={ws})"
        if workers is not None:
            assert redis_url and ws == "petstore", "`petstore serve` runs petstore's protocol; its workers share Redis"
            self.name = f"petstore (redis, serve --workers {workers})"
            self.workers = workers
        database = f"sqlite+aiosqlite:///{workdir}/{'redis' if redis_url else 'memory'}.db"
        env = {
            "PETSTORE_DATABASE_URL": database,
            "PETSTORE_PLUGINS": "tests.fakes",
            "PETSTORE_ENV": "test",
            "PETSTORE_MEDIA_DIR": str(workdir / "media"),
            "PETSTORE_WS_AUTH_TIMEOUT_SECONDS": "600",
            "PETSTORE_WS_QUEUE_SIZE": "4096",
        }
        if redis_url:
            env["PETSTORE_REDIS_URL"] = redis_url
        asyncio.run(self._tables(database))
        command = [*DEFAULT_APP_COMMAND, "--no-access-log", "--log-level", "warning"]
        if ws != "petstore":  # the default command runs petstore's own protocol (as `petstore serve` does)
            command += ["--ws", ws]
        if workers is not None:
            command = [str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}", "--workers", str(workers)]
            command += ["--log-level", "warning"]
            env["PYTHONPATH"] = str(REPO)  # for tests.fakes: the CLI's script puts only its own directory on the path
        self.server = UvicornServer(env=env, command=command, cwd=REPO).start()
        self.ws_url = self.server.ws_url + "/ws"
        self.port = self.server.port
        assert self.server.pid is not None
        self.pid = self.server.pid

    @staticmethod
    async def _tables(database: str) -> None:
        from petstore import db
        from petstore.config import Settings

        engine = db.create_engine(Settings(database_url=database))
        await db.create_all(engine)
        await engine.dispose()

    async def subscribe(self, ws: ClientConnection) -> None:
        await ws.recv()  # welcome
        await ws.send('{"type":"subscribe","room":"inventory"}')
        while '"subscribed"' not in str(await ws.recv()):
            pass

    async def produce(self, count: int, rate: float) -> None:
        """POSTs at ``rate`` whether or not earlier ones are answered yet (an open loop, as many
        REST clients would be): a server that falls behind has a backlog to deal with, instead
        of a producer that politely slows down to its pace."""
        headers = {"X-Test-User": "bench:1:staff"}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=60, limits=limits) as http:

            async def post(n: int) -> None:
                response = await http.post("/api/v3/pet", json={"name": f"b{n}", "photoUrls": []}, headers=headers)
                response.raise_for_status()

            start = time.monotonic()
            posts = []
            for n in range(count):
                await pace(start, n, rate)
                posts.append(asyncio.create_task(post(n)))
            await asyncio.gather(*posts)

    def stop(self) -> None:
        self.server.close()


class Baseline(Target):
    name = "websockets broadcast() (baseline)"

    def __init__(self, workdir: Path) -> None:
        script = workdir / "baseline.py"  # a file: the command's items are str.format()ted with the port
        script.write_text(BASELINE)
        self.server = UvicornServer(command=[sys.executable, str(script), "{port}"], health_path="/")
        # The baseline has no HTTP endpoint; "healthy" means the port answers the handshake attempt.
        self.server._healthy = self._accepts  # type: ignore[method-assign]
        self.server.start()
        self.ws_url = self.server.ws_url
        self.port = self.server.port
        assert self.server.pid is not None
        self.pid = self.server.pid
        self.publisher: ClientConnection | None = None

    def _accepts(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.server.port), timeout=0.5):
                return True
        except OSError:
            return False

    async def subscribe(self, ws: ClientConnection) -> None:
        return None

    async def produce(self, count: int, rate: float) -> None:
        async with connect(self.ws_url, compression=None) as publisher:
            start = time.monotonic()
            for n in range(count):
                await pace(start, n, rate)
                ts = time.time()
                # About the size of petstore's inventory.changed frame.
                await publisher.send(
                    json.dumps(
                        {
                            "type": "event",
                            "room": "inventory",
                            "offset": n + 1,
                            "epoch": "0" * 32,
                            "event": "inventory.changed",
                            "data": {"available": n, "pending": 0, "sold": 0},
                            "ts": ts,
                        },
                        separators=(",", ":"),
                    )
                )

    def stop(self) -> None:
        self.server.close()


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that are running now (uvicorn's workers, for its supervisor)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def workers_of(pid: int) -> list[int]:
    """uvicorn's workers under its supervisor ``pid``: its children but multiprocessing's resource tracker."""
    return [
        child
        for child in children(pid)
        if b"multiprocessing.resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def cpu_by_process(pid: int) -> dict[int, tuple[float, float]]:
    """User and system CPU so far of ``pid`` and of each of its children (a resource tracker's too, next to nothing)."""
    return {process: cpu_seconds(process) for process in [pid, *children(pid)]}


def connections(pid: int, port: int) -> int:
    """Established TCP connections to ``port`` that process ``pid`` holds: the clients it serves.

    /proc/net/tcp lists both ends of a loopback connection; the server's end is the one whose
    local port is the server's, and its socket inode is among the process's open files. The file
    is not read atomically: while other connections come and go, a line can appear twice (hence
    the set) or be missed (the caller compares the sum with the subscribers).
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    held = set()
    for table_ in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table_}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
                held.add(fields[9])  # 01: ESTABLISHED
    return len(held)


def event_times(frame: str | bytes) -> list[float]:
    """Commit (or send) times of the events in one frame (petstore batches several in an array)."""
    body = json.loads(frame)
    items = body if isinstance(body, list) else [body]
    times = []
    for item in items:
        if item.get("type") != "event":
            continue
        ts = item["ts"]
        if isinstance(ts, str):
            from datetime import datetime

            ts = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        times.append(float(ts))
    return times


async def receive(ws: ClientConnection, count: int, sample: bool, latencies: list[float], done: list[float]) -> None:
    seen = 0
    while seen < count:
        frame = await ws.recv()
        if sample:
            now = time.time()
            times = event_times(frame)
            latencies.extend(now - ts for ts in times)
            seen += len(times)
        else:
            seen += str(frame).count('"type":"event"')
    done.append(time.monotonic())


EVENT_MARK = b'"type":"event"'
SUBSCRIBE = b'{"type":"subscribe","room":"inventory"}'


class CountingClient(asyncio.Protocol):
    """A bare WebSocket client that only counts events in the byte stream.

    A Python client parsing 100,000 frames a second would be the bottleneck of the benchmark
    instead of the server; counting a marker in what arrives costs almost nothing. Server
    frames are unmasked and uncompressed (no extension is offered), so the marker appears as
    sent, and a marker split between two reads is found in the carried-over tail.
    """

    def __init__(self, subscribe: bool) -> None:
        self.subscribe = subscribe
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.tail = b""
        self.events = 0
        self.target = 0
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.finished = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.ready.is_set() and self.transport is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            status, _, data = self.head.partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 101"), status
            if self.subscribe:  # a client frame must be masked; a zero mask key is a valid one
                self.transport.write(bytes([0x81, 0x80 | len(SUBSCRIBE)]) + b"\0\0\0\0" + SUBSCRIBE)
            self.ready.set()
        chunk = self.tail + data
        self.events += chunk.count(EVENT_MARK)
        self.tail = chunk[-(len(EVENT_MARK) - 1) :]
        if self.target and self.events >= self.target and not self.done.is_set():
            self.finished = time.monotonic()
            self.done.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_counting(url: str, count: int, subscribe: bool) -> list[CountingClient]:
    host_port, _, path = url.removeprefix("ws://").partition("/")
    host, _, port = host_port.partition(":")
    request = (
        f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    clients: list[CountingClient] = []
    for start in range(0, count, 200):
        batch = []
        for _ in range(min(200, count - start)):
            _, client = await loop.create_connection(lambda: CountingClient(subscribe), host, int(port))
            assert client.transport is not None
            client.transport.write(request)
            batch.append(client)
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in batch)), 60)
        clients.extend(batch)
    return clients


async def open_clients(url: str, count: int, target: Target) -> list[ClientConnection]:
    clients: list[ClientConnection] = []
    for start in range(0, count, 200):
        batch = await asyncio.gather(
            *(connect(url, compression=None, open_timeout=60, max_queue=None) for _ in range(min(200, count - start)))
        )
        await asyncio.gather(*(target.subscribe(ws) for ws in batch))
        clients.extend(batch)
    return clients


async def measure(target: Target, subscribers: int, events: int, rate: float, idle: int) -> Result:
    subscribe = isinstance(target, Petstore)
    # The sampled clients are spread through the subscription order, so the latencies cover the
    # first subscribers served and the last alike (fan-out goes through them in that order).
    samples = min(SAMPLE, subscribers)
    between = (subscribers - samples) // samples
    sampled: list[ClientConnection] = []
    counting: list[CountingClient] = []
    for _ in range(samples):
        counting += await open_counting(target.ws_url, between, subscribe)
        sampled += await open_clients(target.ws_url, 1, target)
    counting += await open_counting(target.ws_url, subscribers - samples - len(counting), subscribe)
    await asyncio.sleep(1.0)  # let the subscriptions settle (a benchmark, not a test)
    latencies: list[float] = []
    done: list[float] = []
    receivers = [asyncio.create_task(receive(ws, events, True, latencies, done)) for ws in sampled]
    for client in counting:
        client.target = client.events + events
    cpu_before = cpu_by_process(target.pid)
    workers = workers_of(target.pid) if target.workers and target.workers > 1 else [target.pid]
    spread = tuple(connections(worker, target.port) for worker in workers)
    started = time.monotonic()
    await target.produce(events, rate)
    await asyncio.wait_for(asyncio.gather(*receivers, *(c.done.wait() for c in counting)), 300)
    cpu_after = cpu_by_process(target.pid)
    if gone := cpu_before.keys() - cpu_after.keys():
        raise RuntimeError(f"{target.name}: processes {sorted(gone)} exited while measured; their CPU is unknown")
    # A worker started meanwhile (a replacement) counts from zero.
    used = {
        process: tuple(a - b for a, b in zip(after, cpu_before.get(process, (0.0, 0.0)), strict=True))
        for process, after in cpu_after.items()
    }
    user, system = (sum(times) for times in zip(*used.values(), strict=True))
    cpu = user + system
    elapsed = max([*done, *(c.finished for c in counting)]) - started
    for ws in sampled:
        await ws.close()
    for client in counting:
        client.close()
    delivered = subscribers * events
    latencies.sort()
    if target.workers is not None:
        if sum(spread) != subscribers:  # the spread is only as good as its count; say so rather than hide it
            print(f"  {target.name}: {sum(spread)} connections found for {subscribers} subscribers", file=sys.stderr)
        print(f"  subscribers per worker: {' / '.join(map(str, spread))}", file=sys.stderr)

    await asyncio.sleep(1.0)
    rss_before = sum(rss_bytes(process) for process in cpu_after)
    idle_clients = await open_counting(target.ws_url, idle, subscribe)
    await asyncio.sleep(1.0)
    rss_per_idle = (sum(rss_bytes(process) for process in cpu_after) - rss_before) / idle
    for client in idle_clients:
        client.close()
    return Result(
        name=target.name,
        delivered_per_s=delivered / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99) - 1] * 1000,
        cpu_us_per_event=cpu / delivered * 1e6,
        sys_share=system / cpu if cpu else 0.0,
        rss_kb_per_idle=rss_per_idle / 1024,
        workers=target.workers,
        spread=spread,
        worker_cpu_us=tuple(
            sum(used[worker]) / (held * events) * 1e6 if held else float("nan")
            for worker, held in zip(workers, spread, strict=True)
        ),
    )


def median_runs(runs: list[Result]) -> tuple[Result, float, float]:
    """The run with the median CPU per event, and the lowest and highest CPU per event seen."""
    ordered = sorted(runs, key=lambda r: r.cpu_us_per_event)
    return ordered[len(ordered) // 2], ordered[0].cpu_us_per_event, ordered[-1].cpu_us_per_event


def table(runs: dict[str, list[Result]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.subscribers} subscribers, {args.events} events at {args.rate:g}/s, idle RSS at {args.idle} "
        f"connections; each server run {args.repeat} times, interleaved: the run with the median CPU is shown",
        "",
        "| server | delivered events/s | p50 ms | p99 ms | server CPU µs / delivered event (range) "
        "| of it in the kernel | CPU x baseline | RSS KB / idle conn. |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = median_runs(runs[Baseline.name])[0]
    for name, results in runs.items():
        r, low, high = median_runs(results)
        lines.append(
            f"| {name} | {r.delivered_per_s:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
            f"{r.cpu_us_per_event:.2f} ({low:.2f} to {high:.2f}) | {r.sys_share:.0%} | "
            f"{r.cpu_us_per_event / baseline.cpu_us_per_event:.2f} | {r.rss_kb_per_idle:.1f} |"
        )
    scaled = [median_runs(results)[0] for results in runs.values() if results[0].workers is not None]
    if scaled:
        lines += ["", workers_table(scaled)]
    return "\n".join(lines)


def workers_table(results: list[Result]) -> str:
    """`petstore serve --workers N` beside one worker: CPU per delivered event, which the target bounds."""
    one = next((r for r in results if r.workers == 1), None)
    lines = [
        f"`petstore serve --workers N`, Redis broker; target: CPU per delivered event within {TARGET_RATIO}x of "
        "one worker's",
        "",
        "| workers | server CPU µs / delivered event (supervisor + workers) | per worker | x 1 worker "
        "| subscribers per worker | each worker's CPU µs / event it delivered |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        own = " / ".join("-" if math.isnan(us) else f"{us:.2f}" for us in r.worker_cpu_us)  # "-": no subscribers
        ratio = f"{r.cpu_us_per_event / one.cpu_us_per_event:.2f}" if one else "-"
        if one and r.workers != 1:
            ratio += " (within)" if r.cpu_us_per_event <= TARGET_RATIO * one.cpu_us_per_event else " (over)"
        lines.append(
            f"| {r.workers} | {r.cpu_us_per_event:.2f} | {r.cpu_us_per_event:.2f} | {ratio} | "
            f"{' / '.join(map(str, r.spread))} | {own} |"
        )
    return "\n".join(lines)


def worker_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip().isdigit()]
    if len(counts) != len(text.split(",")) or not all(counts):
        raise argparse.ArgumentTypeError(f"not a comma-separated list of positive worker counts: {text}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--idle", type=int, default=5000, help="idle connections for the RSS measure")
    parser.add_argument("--brokers", default="memory,redis", help="petstore brokers to run: memory, redis or both")
    parser.add_argument(
        "--ws",
        default="petstore",
        help="uvicorn WebSocket protocols to run petstore with, e.g. petstore,websockets-sansio "
        "(petstore: petstore.server.uvicorn_ws, what `petstore serve` runs; the others: plain ASGI sends)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each server (CPU figures vary run to run)")
    parser.add_argument(
        "--workers",
        type=worker_counts,
        help="run the Redis target as `petstore serve --workers N` instead, once per count, e.g. 1,2 "
        "(default: 1 process, run by uvicorn itself as before); the ratio to 1 worker's CPU per event is printed",
    )
    args = parser.parse_args()
    if args.workers and "redis" not in args.brokers.split(","):
        parser.error("--workers runs the Redis target (several workers need the Redis broker): add redis to --brokers")

    runs: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="petstore-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        targets: list[tuple[str, str | None, str, int | None]] = [("baseline", None, "", None)]
        for broker in args.brokers.split(","):
            redis_url = stack.enter_context(RedisServer()).url if broker == "redis" else None
            for ws in args.ws.split(","):
                if redis_url and ws == "petstore" and args.workers:  # what `petstore serve` runs
                    targets.extend(("petstore", redis_url, ws, workers) for workers in args.workers)
                else:
                    targets.append(("petstore", redis_url, ws, None))
        for round_ in range(1, args.repeat + 1):
            for kind, redis_url, ws, workers in targets:
                target: Target = Baseline(workdir) if kind == "baseline" else Petstore(workdir, redis_url, ws, workers)
                try:
                    print(f"run {round_}/{args.repeat}: {target.name} ...", file=sys.stderr)
                    result = asyncio.run(measure(target, args.subscribers, args.events, args.rate, args.idle))
                    runs.setdefault(target.name, []).append(result)
                finally:
                    target.stop()
    print(table(runs, args))


if __name__ == "__main__":
    main()
