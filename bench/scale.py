"""Scale-out benchmark: 1, 2 and 3 petstore instances on one Redis and on a 3-shard Redis Cluster,
a fixed population of WebSocket subscribers spread over them, events at a fixed rate.

Run by hand, not by the tests::

    .venv/bin/python bench/scale.py                  # 1,500 subscribers, 15 rooms, 3,000 events at 200/s
    .venv/bin/python bench/scale.py --subscribers 600 --events 900 --instances 1,3 --brokers cluster

What runs (real subprocesses from ``tests.services``, as in ``bench/fanout.py``):

- One SQLite file prepared by ``bench.support.prepare`` (100 pets, a staff user), shared by every
  instance; ``redis-server`` alone, and a 3-primary ``RedisClusterSet`` (no replicas). Both stay up
  for the whole run; each configuration starts its own instances (``UvicornServer``, the
  ``petstore serve`` protocols, the default plugins of ``bench.support.server_env``) and stops them.
- Subscriber ``i`` joins ``inventory`` and ``pet:{id}`` for the ``i mod K``-th of K pets chosen so
  that their rooms' slots fall evenly on the cluster's three shards (so every shard carries rooms),
  on instance ``(i div K) mod N``: every room has subscribers on every instance, and every instance
  the same number of subscribers (to within one row of K).
- Events are ``pet.updated`` publications to the K pet rooms in turn, made by a publisher process
  (this script with ``--publish``) through petstore's own ``RedisBroker.publish_all``: the same Lua
  script, pipeline and, on the cluster, room-by-room ``SPUBLISH`` as the outbox relay's, at
  ``--rate`` per second in an open loop (``bench.support.pace``). Not REST: an update through one
  instance would put the HTTP request, the SQLite commit and the relay's pass on that instance
  alone (and SQLite's one writer would bound the rate), so the instances would no longer be alike
  and their CPU per delivered event would not be the fan-out's. With direct publishes every instance
  does only what fan-out costs (hear the room's message from Redis, write the frame to each local
  subscriber), and Redis only what publishing costs. ``inventory`` carries no events here: it
  lives on one shard and would load that one alone; it is there so every connection holds the
  two subscriptions a typical page holds.
- Measured per instance, over the time from the first publish to the last receipt: CPU (every
  thread's run time from ``/proc/PID/task/*/schedstat``, ns resolution) divided by the events it
  delivered; delivered events/s; p50/p99 from the frame's ``ts`` (the publisher's clock just before
  the script runs: the commit time of a real change) to receipt, over the sampled clients on that
  instance (``ts`` has millisecond resolution: read the figures to the ms); RSS per connection
  (RSS after its clients subscribed minus before, divided by its connections). Per configuration:
  Redis CPU per published event (redis-server's run time, summed over the cluster's primaries,
  less what the same processes spend idle, measured over ``IDLE_SECONDS`` just before: the
  cluster's bus and cron cost CPU with no traffic at all), and of it what Redis counts in its
  commands (``INFO commandstats``); the instances' idle CPU is measured over the same seconds.
  A least-squares fit splits an instance's CPU into a cost per message heard from Redis and a
  cost per delivery.
- Before its subscribers connect, each instance gets every room from one connection at a time,
  each confirmed before the next, and those connections close once the subscribers are in: on a
  cluster, a pub/sub link that connects with several rooms already added to it sends them in one
  ``SSUBSCRIBE``, which Redis refuses with CROSSSLOT when their slots differ (seen while writing
  this benchmark: the link then reconnects with the same rooms, again and again, and subscribes
  time out). Rooms added to a link already connected go one ``SSUBSCRIBE`` each.
- Every client counts its events; a sample (whole rows of K, one in ``SAMPLE_EVERY``) parses each
  one and checks that offsets are contiguous per room. Missing or extra deliveries are reported.

The clients run in this process (uvloop, a bare protocol that counts markers in the frames), on
the same machine as everything else, so wall-clock latencies here are upper bounds; the CPU per
event figures are what to compare across configurations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.support import PETS, new_loop, pace, prepare, rss_bytes, server_env
from tests.services import DEFAULT_APP_COMMAND, RedisServer, UvicornServer
from tests.services.cluster import RedisClusterSet, keyslot, shard_channels

REPO = Path(__file__).resolve().parents[1]
#: Slot ranges of a 3-primary cluster as ``redis-cli --cluster create`` splits it (0-5460,
#: 5461-10922, 10923-16383): the rooms are chosen so each range gets as many. Checked against the
#: running cluster at each cluster configuration.
SHARD_FIRST_SLOTS = (0, 5461, 10923)
#: One row of K subscribers in this many parses every event (latency, offsets); the others count.
#: Prime to 2 and 3, so the sampled rows fall on every instance.
SAMPLE_EVERY = 5
EVENT_MARK = b'"type":"event"'
SUBSCRIBED_MARK = b'"type":"subscribed"'
#: Redis's idle CPU is measured this long before each run, and taken off its busy CPU.
IDLE_SECONDS = 5.0
#: What the publish script calls inside it (counted in the script's own time as well).
SCRIPTED = re.compile(
    r"^cmdstat_(config\|resetstat|info|hget|hset|hincrby|del|zscore|zadd|zremrangebyrank|xadd|expire|publish|spublish):"
)
BATCH = 200  # connections opened at once


def shard_of(room: str) -> int:
    slot = keyslot(f"petstore:{{{room}}}:events")
    return sum(1 for first in SHARD_FIRST_SLOTS[1:] if slot >= first)


def balanced_pets(rooms: int) -> list[int]:
    """``rooms`` pet ids (of the prepared 1..PETS) whose rooms fall evenly on the three shards."""
    by_shard: list[list[int]] = [[], [], []]
    for pet in range(1, PETS + 1):
        by_shard[shard_of(f"pet:{pet}")].append(pet)
    chosen = [by_shard[n % 3][n // 3] for n in range(rooms)]
    return chosen


class RedisNode(Protocol):
    """A redis-server of tests.services (alone, or a cluster's primary)."""

    @property
    def pid(self) -> int | None: ...

    def command(self, *args: str) -> object: ...


def commands_usec(node: RedisNode) -> int:
    """What Redis itself counts in its commands since ``CONFIG RESETSTAT`` (``INFO commandstats``):
    the script and the commands it calls, without reading, parsing and writing the connections."""
    reply = node.command("INFO", "commandstats")
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    # Commands a script calls are counted on their own too: the script's own total covers them.
    return sum(
        int(line.split("usec=")[1].split(",")[0])
        for line in text.splitlines()
        if line.startswith("cmdstat_") and "usec=" in line and not SCRIPTED.match(line)
    )


def run_ns(pid: int) -> int:
    """Time on CPU so far of every thread of a process, in ns (``schedstat``: finer than ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


# ------------------------------------------------------------------------------ the publisher


def pet_data(pet: int) -> str:
    """About what ``pet.updated`` carries for a prepared pet (PetPublic as JSON)."""
    return json.dumps(
        {
            "id": pet,
            "category": {"id": pet % 3 + 1, "name": ("Dogs", "Cats", "Birds")[pet % 3]},
            "name": f"Pet {pet}",
            "photoUrls": [f"/media/pets/{pet}.png"],
            "tags": [{"id": 1, "name": "friendly"}, {"id": pet % 5 + 2, "name": f"litter-{pet % 5}"}],
            "status": "available",
        },
        separators=(",", ":"),
    )


async def publisher(redis_url: str, pets: list[int], warm: list[int], rate: float, events: int, source: int) -> None:
    """``--publish``: say ``ready``, wait for a line on stdin, publish, print what it saw as JSON."""
    from petstore.config import Settings
    from petstore.realtime.broker import BrokerUnavailable, Publication, format_ts
    from petstore.realtime.broker.redis import RedisBroker

    broker = RedisBroker(Settings(redis_url=redis_url, plugins=()), lambda message: None, lambda *args: None)
    data = {pet: pet_data(pet) for pet in pets}
    # Warm up: connections to every shard and the script loaded there, on rooms nobody watches.
    for n, pet in enumerate(warm):
        await broker.publish_all([Publication([f"pet:{pet}"], "pet.updated", pet_data(pet), "", source - 1 - n)])
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    late: list[float] = []
    # At most this many in flight: on a cluster the client's pool (64 per node) does not wait for a
    # free connection, it fails (MaxConnectionsError). A publish that fails is tried again, as the
    # relay would (the outbox id makes a repeat a no-op).
    in_flight = asyncio.Semaphore(32)
    retries = 0

    async def one(n: int) -> None:
        nonlocal retries
        pet = pets[n % len(pets)]
        async with in_flight:
            for _ in range(100):
                ts = format_ts(datetime.now(UTC))
                try:
                    await broker.publish_all([Publication([f"pet:{pet}"], "pet.updated", data[pet], ts, source + n)])
                    return
                except BrokerUnavailable:
                    retries += 1
                    await asyncio.sleep(0.05)

    start = time.monotonic()
    tasks = []
    for n in range(events):
        await pace(start, n, rate)
        late.append(time.monotonic() - (start + n / rate))
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    await broker.stop()
    print(json.dumps({"elapsed": elapsed, "late_max_ms": max(late) * 1000, "retries": retries}), flush=True)


# ------------------------------------------------------------------------------ the clients


class Client(asyncio.Protocol):
    """A bare WebSocket client: subscribes to its rooms, answers pings, counts events; a sampled
    one also parses each event for its latency and checks its offsets."""

    def __init__(self, rooms: Sequence[str], sampled: bool) -> None:
        self.rooms = rooms
        self.sampled = sampled
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.subscribed = 0
        self.events = 0
        self.target = 0
        self.latencies: list[float] = []
        self.offsets: dict[str, int] = {}
        self.gaps = 0
        self.repeats = 0
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.finished = 0.0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def send(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None and len(payload) < 126
        # A client frame must be masked; a zero mask key is a valid one.
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            assert buf.startswith(b"HTTP/1.1 101"), bytes(buf[:200])
            del buf[: end + 4]
            self.upgraded = True
            for room in self.rooms:
                self.send(0x1, json.dumps({"type": "subscribe", "room": room}, separators=(",", ":")).encode())
        now = time.time()
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode, length, head = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            self.frame(opcode, bytes(buf[pos + head : pos + head + length]), now)
            pos += head + length
        del buf[:pos]

    def frame(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 0x9:  # uvicorn's keep-alive ping
            self.send(0xA, payload)
            return
        if opcode != 0x1:
            return
        if not self.ready.is_set():
            self.subscribed += payload.count(SUBSCRIBED_MARK)
            if self.subscribed >= len(self.rooms):
                self.ready.set()
        events = payload.count(EVENT_MARK)
        if not events:
            return
        if self.sampled:
            self.parse(payload, now)
        self.events += events
        if self.target and self.events >= self.target and not self.done.is_set():
            self.finished = time.monotonic()
            self.done.set()

    def parse(self, payload: bytes, now: float) -> None:
        from petstore.realtime.broker import parse_ts

        body = json.loads(payload)
        for item in body if isinstance(body, list) else [body]:
            if item.get("type") != "event":
                continue
            self.latencies.append(now - parse_ts(item["ts"]))
            room, offset = item["room"], item["offset"]
            last = self.offsets.get(room)
            if last is not None and offset != last + 1:
                if offset <= last:
                    self.repeats += 1
                else:
                    self.gaps += 1
            self.offsets[room] = offset

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_clients(port: int, plan: Sequence[tuple[tuple[str, ...], bool]]) -> list[Client]:
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    for start in range(0, len(plan), BATCH):
        batch = []
        for rooms, sampled in plan[start : start + BATCH]:
            _, client = await loop.create_connection(lambda r=rooms, s=sampled: Client(r, s), "127.0.0.1", port)
            assert client.transport is not None
            client.transport.write(request)
            batch.append(client)
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in batch)), 120)
        clients.extend(batch)
    return clients


# ------------------------------------------------------------------------------ one configuration


@dataclass
class InstanceResult:
    connections: int
    delivered: int
    delivered_per_s: float
    cpu_us_per_event: float
    p50_ms: float
    p99_ms: float
    rss_kb_per_conn: float
    idle_ms_per_s: float


@dataclass
class Result:
    broker: str
    instances: int
    elapsed: float
    delivered: int
    expected: int
    missing: int
    extra: int
    gaps: int
    repeats: int
    lost: int
    published: int
    redis_us_per_event: float
    redis_idle_us_per_event: float
    redis_shares: list[float]
    redis_commands_us_per_event: float
    late_max_ms: float
    publish_retries: int
    shards_ok: str
    per_instance: list[InstanceResult] = field(default_factory=list)

    @property
    def delivered_per_s(self) -> float:
        return self.delivered / self.elapsed

    @property
    def cpu_us_per_event(self) -> float:
        """All instances' CPU over all deliveries (what one delivery costs, whichever instance)."""
        total = sum(i.cpu_us_per_event * i.delivered for i in self.per_instance)
        return total / self.delivered if self.delivered else float("nan")


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * share) - 1))]


async def measure(
    broker: str,
    redis_url: str,
    nodes: list[RedisNode],
    cluster: RedisClusterSet | None,
    env: dict[str, str],
    instances: int,
    args: argparse.Namespace,
    source: int,
) -> Result:
    redis_pids = [node.pid for node in nodes if node.pid]
    pets = balanced_pets(args.rooms)
    rooms = [f"pet:{pet}" for pet in pets]
    command = [*DEFAULT_APP_COMMAND, "--no-access-log", "--log-level", "warning"]
    servers = [UvicornServer(env={**env, "PETSTORE_REDIS_URL": redis_url}, command=command, cwd=REPO)
               for _ in range(instances)]  # fmt: skip
    await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
    pids = [server.pid for server in servers]
    assert all(pids)
    clients_of: list[list[Client]] = [[] for _ in servers]
    publisher_proc: asyncio.subprocess.Process | None = None
    try:
        await asyncio.sleep(1.0)
        rss_before = [rss_bytes(pid) for pid in pids if pid]
        plans: list[list[tuple[tuple[str, ...], bool]]] = [[] for _ in servers]
        for i in range(args.subscribers):
            row = i // len(rooms)
            plans[row % instances].append((("inventory", rooms[i % len(rooms)]), row % SAMPLE_EVERY == 0))
        for n, server in enumerate(servers):
            # One room at a time first, each confirmed before the next (see prime_rooms).
            primers = [
                client
                for room in ["inventory", *rooms]
                for client in await open_clients(server.port, [((room,), False)])
            ]
            clients_of[n] = await open_clients(server.port, plans[n])
            for client in primers:
                client.close()
        await asyncio.sleep(1.0)  # let the subscriptions settle (a benchmark, not a test)
        rss_after = [rss_bytes(pid) for pid in pids if pid]

        shards_ok = "-"
        if cluster is not None:  # each primary carries rooms, and hears only its own
            channels = shard_channels(cluster.primaries)
            owners = {
                room: cluster.primary_for_key(f"petstore:{{{room}}}:events").port for room in [*rooms, "inventory"]
            }
            wrong = [
                name for port, names in channels.items() for name in names if owners.get(name[10:-8], port) != port
            ]
            counts = [sum(1 for room in rooms if owners[room] == p.port) for p in cluster.primaries]
            shards_ok = f"pet rooms per shard {'/'.join(map(str, counts))}" + (f", MISPLACED {wrong}" if wrong else "")

        warm = [next(p for p in range(PETS + 1, PETS + 1000) if shard_of(f"pet:{p}") == s) for s in range(3)]
        publisher_proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--publish", redis_url, "--pets", ",".join(map(str, pets)),
            "--warm", ",".join(map(str, warm)), "--rate", str(args.rate), "--events", str(args.events),
            "--source", str(source), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert publisher_proc.stdin is not None and publisher_proc.stdout is not None
        line = await asyncio.wait_for(publisher_proc.stdout.readline(), 60)
        assert line.strip() == b"ready", line

        # Redis's idle CPU (cron, and on a cluster the bus) over as long as the run should take.
        window = args.events / args.rate
        idle_before = [run_ns(pid) for pid in redis_pids]
        instance_idle_before = [run_ns(pid) for pid in pids if pid]
        await asyncio.sleep(IDLE_SECONDS)
        instance_idle = [
            (run_ns(pid) - before) / IDLE_SECONDS / 1e6
            for pid, before in zip([p for p in pids if p], instance_idle_before, strict=True)
        ]
        idle_rates = [
            (run_ns(pid) - before) / IDLE_SECONDS for pid, before in zip(redis_pids, idle_before, strict=True)
        ]

        per_room = args.events // len(rooms)
        everyone = [client for clients in clients_of for client in clients]
        for client in everyone:
            client.target = client.events + per_room
        cpu_before = [run_ns(pid) for pid in pids if pid]
        for node in nodes:
            node.command("CONFIG", "RESETSTAT")
        redis_before = [run_ns(pid) for pid in redis_pids]
        started = time.monotonic()
        publisher_proc.stdin.write(b"go\n")
        await publisher_proc.stdin.drain()
        line = await asyncio.wait_for(publisher_proc.stdout.readline(), window * 3 + 60)
        report = json.loads(line)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in everyone)), 30)
        ended = time.monotonic()
        cpu_after = [run_ns(pid) for pid in pids if pid]
        redis_after = [run_ns(pid) for pid in redis_pids]
        in_commands = sum(commands_usec(node) for node in nodes)
        await asyncio.sleep(0.5)  # anything sent twice arrives meanwhile
        finished = [c.finished for c in everyone if c.done.is_set()]
        elapsed = (max(finished) if len(finished) == len(everyone) else ended) - started

        redis_busy = [after - before for after, before in zip(redis_after, redis_before, strict=True)]
        idle = sum(rate * elapsed for rate in idle_rates)
        result = Result(
            broker=broker,
            instances=instances,
            elapsed=elapsed,
            delivered=sum(min(c.events, c.target) - (c.target - per_room) for c in everyone),
            expected=len(everyone) * per_room,
            missing=sum(max(0, c.target - c.events) for c in everyone),
            extra=sum(max(0, c.events - c.target) for c in everyone),
            gaps=sum(c.gaps for c in everyone),
            repeats=sum(c.repeats for c in everyone),
            lost=sum(1 for c in everyone if c.lost),
            published=args.events,
            redis_us_per_event=(sum(redis_busy) - idle) / args.events / 1000,
            redis_idle_us_per_event=idle / args.events / 1000,
            redis_shares=[busy / sum(redis_busy) for busy in redis_busy] if sum(redis_busy) else [],
            redis_commands_us_per_event=in_commands / args.events,
            late_max_ms=report["late_max_ms"],
            publish_retries=report["retries"],
            shards_ok=shards_ok,
        )
        for n, clients in enumerate(clients_of):
            delivered = sum(min(c.events, c.target) - (c.target - per_room) for c in clients)
            latencies = [lat for c in clients for lat in c.latencies]
            result.per_instance.append(
                InstanceResult(
                    connections=len(clients),
                    delivered=delivered,
                    delivered_per_s=delivered / elapsed,
                    cpu_us_per_event=(cpu_after[n] - cpu_before[n]) / delivered / 1000 if delivered else float("nan"),
                    p50_ms=statistics.median(latencies) * 1000 if latencies else float("nan"),
                    p99_ms=percentile(latencies, 0.99) * 1000,
                    rss_kb_per_conn=(rss_after[n] - rss_before[n]) / len(clients) / 1024,
                    idle_ms_per_s=instance_idle[n],
                )
            )
        return result
    finally:
        for clients in clients_of:
            for client in clients:
                client.close()
        if publisher_proc is not None and publisher_proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                publisher_proc.kill()
            await publisher_proc.wait()
        await asyncio.sleep(0.2)
        for server in servers:
            server.close()


# ------------------------------------------------------------------------------ report


def tables(results: list[Result], args: argparse.Namespace) -> str:
    base = next((r for r in results if r.instances == min(x.instances for x in results)), results[0])
    single = {r.instances: r for r in results if r.broker == "1 Redis"}
    lines = [
        f"{args.subscribers} subscribers (each: inventory + 1 of {args.rooms} pet rooms), {args.events} events "
        f"at {args.rate:g}/s ({args.rate / args.rooms:g}/s per room), each delivered to "
        f"{args.subscribers // args.rooms} subscribers",
        "",
        "| Redis | instances | delivered events/s | server CPU µs / delivered event | CPU x baseline "
        "| Redis CPU µs / published event (idle excluded) | of it in commands | Redis CPU x 1 Redis "
        "| Redis CPU by shard | deliveries ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        vs_single = single.get(r.instances)
        ratio = f"{r.redis_us_per_event / vs_single.redis_us_per_event:.2f}" if vs_single else "-"
        shares = "/".join(f"{s:.0%}" for s in r.redis_shares) if len(r.redis_shares) > 1 else "-"
        problems = [
            f"{value:,} {what}"
            for value, what in [
                (r.missing, "missing"), (r.extra, "extra"), (r.gaps, "gaps"), (r.repeats, "repeats"),
                (r.lost, "connections lost"),
            ]
            if value
        ]  # fmt: skip
        ok = "; ".join(problems) if problems else f"all {r.expected:,}"
        lines.append(
            f"| {r.broker} | {r.instances} | {r.delivered_per_s:,.0f} | {r.cpu_us_per_event:.2f} | "
            f"{r.cpu_us_per_event / base.cpu_us_per_event:.2f} | {r.redis_us_per_event:.1f} "
            f"(+{r.redis_idle_us_per_event:.1f} idle) | {r.redis_commands_us_per_event:.1f} | {ratio} | "
            f"{shares} | {ok} |"
        )
    lines += [
        "",
        "Per instance:",
        "",
        "| Redis | instances | instance | connections | delivered events/s | server CPU µs / delivered event "
        "| p50 ms | p99 ms | RSS KB / connection | idle CPU ms/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for n, i in enumerate(r.per_instance, 1):
            lines.append(
                f"| {r.broker} | {r.instances} | {n} | {i.connections:,} | {i.delivered_per_s:,.0f} | "
                f"{i.cpu_us_per_event:.2f} | {i.p50_ms:.0f} | {i.p99_ms:.0f} | {i.rss_kb_per_conn:.1f} | "
                f"{i.idle_ms_per_s:.1f} |"
            )
    notes = [f"{r.broker}, {r.instances}: {r.shards_ok}" for r in results if r.shards_ok != "-"]
    for broker in dict.fromkeys(r.broker for r in results):
        fitted = fit([r for r in results if r.broker == broker])
        if fitted is not None:
            notes.append(
                f"{broker}: an instance's CPU = {fitted[0]:.0f} µs per message heard from Redis "
                f"+ {fitted[1]:.2f} µs per delivery (least squares over its instances)"
            )
    notes += [f"publisher at most {max(r.late_max_ms for r in results):.0f} ms behind its schedule"]
    notes += [
        f"{r.broker}, {r.instances}: {r.publish_retries} publishes tried again" for r in results if r.publish_retries
    ]
    return "\n".join([*lines, "", *notes])


def fit(results: list[Result]) -> tuple[float, float] | None:
    """``CPU = a * messages heard + b * deliveries`` over every instance of these results: each
    instance hears every published event (every room has subscribers on it) once from Redis and
    writes it to each of its subscribers of that room. None without two different mixes."""
    points = [
        (float(r.published), float(i.delivered), i.cpu_us_per_event * i.delivered)
        for r in results
        for i in r.per_instance
    ]
    sxx = sum(x * x for x, _, _ in points)
    sxy = sum(x * y for x, y, _ in points)
    syy = sum(y * y for _, y, _ in points)
    sxc = sum(x * c for x, _, c in points)
    syc = sum(y * c for _, y, c in points)
    det = sxx * syy - sxy * sxy
    if len({round(y / x, 6) for x, y, _ in points}) < 2 or det == 0:
        return None
    return (sxc * syy - syc * sxy) / det, (sxx * syc - sxy * sxc) / det


def plot(results: list[Result], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    right = left.twinx()
    for broker, color in (("1 Redis", "tab:blue"), ("Redis Cluster, 3 shards", "tab:orange")):
        rows = sorted((r for r in results if r.broker == broker), key=lambda r: r.instances)
        if not rows:
            continue
        xs = [r.instances for r in rows]
        left.plot(xs, [r.delivered_per_s for r in rows], "o-", color=color, label=f"delivered/s, {broker}")
        right.plot(xs, [r.cpu_us_per_event for r in rows], "s--", color=color, label=f"CPU µs/event, {broker}")
    left.set_xlabel("petstore instances")
    left.set_xticks(sorted({r.instances for r in results}))
    left.set_ylabel("delivered events/s (all instances)")
    right.set_ylabel("server CPU µs per delivered event")
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(handles, labels, loc="lower left", fontsize=8)
    left.set_title(
        f"{args.subscribers} subscribers, {args.rate:g} events/s over {args.rooms} rooms (2-core machine)", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------ main


@contextlib.contextmanager
def brokers(names: Sequence[str]) -> Iterator[list[tuple[str, str, object]]]:
    with contextlib.ExitStack() as stack:
        started: list[tuple[str, str, object]] = []
        for name in names:
            if name == "redis":
                redis = stack.enter_context(RedisServer())
                started.append(("1 Redis", redis.url, redis))
            else:
                cluster = stack.enter_context(RedisClusterSet(primaries=3))
                started.append(("Redis Cluster, 3 shards", cluster.url, cluster))
        yield started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1500)
    parser.add_argument("--rooms", type=int, default=15, help="pet rooms (a multiple of 3: as many per shard)")
    parser.add_argument("--events", type=int, default=3000, help="published events per configuration")
    parser.add_argument("--rate", type=float, default=200.0, help="published events per second, all rooms")
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--brokers", default="redis,cluster", help="redis, cluster or both")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "scale.png", help="PNG to write")
    # The publisher process (this script, started by the benchmark itself).
    parser.add_argument("--publish", metavar="REDIS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--pets", help=argparse.SUPPRESS)
    parser.add_argument("--warm", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        pets, warm = [int(p) for p in args.pets.split(",")], [int(p) for p in args.warm.split(",")]
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(publisher(args.publish, pets, warm, args.rate, args.events, args.source))
        return
    if args.rooms % 3 or args.events % args.rooms:
        parser.error("--rooms must be a multiple of 3, and --events a multiple of --rooms")

    results: list[Result] = []
    failed: list[str] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="petstore-scale-") as tmp, brokers(args.brokers.split(",")) as started:
        workdir = Path(tmp)
        database = f"sqlite+aiosqlite:///{workdir}/scale.db"
        asyncio.run(prepare(database))
        env = server_env(database, workdir)
        # Every client connects from 127.0.0.1: lift the WebSocket connect budgets as server_env does the rest.
        env |= {
            "PETSTORE_RATELIMIT_WS_CONNECT": "100000000/minute",
            "PETSTORE_RATELIMIT_WS_CONNECT_PER_IP": "100000000/minute",
        }
        source = 1_000_000
        for instances in (int(n) for n in args.instances.split(",")):
            for broker, url, service in started:
                if isinstance(service, RedisClusterSet):
                    cluster: RedisClusterSet | None = service
                    nodes: list[RedisNode] = list(service.primaries)
                else:
                    assert isinstance(service, RedisServer)
                    cluster, nodes = None, [service]
                print(f"{broker}, {instances} instance(s) ... ({time.monotonic() - began:.0f} s)", file=sys.stderr)
                try:
                    with asyncio.Runner(loop_factory=new_loop) as runner:
                        result = runner.run(measure(broker, url, nodes, cluster, env, instances, args, source))
                except Exception as exc:  # report the others all the same
                    print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                    failed.append(f"{broker}, {instances}: {type(exc).__name__}: {exc}")
                else:
                    results.append(result)
                    print(tables([result], args), file=sys.stderr)
                source += args.events + 1000
    print(f"done in {time.monotonic() - began:.0f} s", file=sys.stderr)
    if not results:
        sys.exit("every configuration failed:\n" + "\n".join(failed))
    print(tables(results, args))
    for failure in failed:
        print(f"FAILED {failure}")
    plot(results, args.plot, args)
    print(f"\nplot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
