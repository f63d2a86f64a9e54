"""Soak: minutes of mixed REST traffic against one petstore while Redis restarts, with WebSocket
subscribers that must see every event once; the server's memory must stay flat.

Run by hand, never by the tests::

    .venv/bin/python bench/soak.py                     # 10 minutes, 20 requests/s, 200 subscribers
    .venv/bin/python bench/soak.py --minutes 1 --warmup 15 --plot /tmp/soak.png

One petstore (uvicorn with the protocols `petstore serve` runs, ``DEFAULT_APP_COMMAND``; the
default plugins: JWT auth, rate limits with budgets this run cannot spend, metrics) on SQLite with
100 pets, and a real redis-server on a free loopback port (``tests.services``), no persistence.

1. ``--subscribers`` WebSocket clients subscribe to ``pets`` and ``inventory``. When dropped, each
   reconnects and subscribes again with ``since`` (its last epoch and offset in each room).
2. ``--warmup`` seconds of traffic, then the server's RSS is the start figure.
3. ``--minutes`` of traffic at ``--rate`` requests per second, an open loop (creates, updates,
   status changes, orders placed and cancelled, deletes, reads), while Redis is restarted every
   ``--redis-restart-every`` seconds the fast way: SHUTDOWN NOSAVE, then started again on the same
   port at once (``tests.faults.redis.fast_restart``).
4. The RSS at the end; then up to ``--drain`` seconds for the last events to arrive.

Every event a subscriber should have had is in the server's outbox (each change's events are
written in its transaction), so the expected events are read from the database at the end and
each subscriber's events are matched to them by room, name, commit time and pet id. Printed:
RSS at start and end, events expected vs received per subscriber (min/median/max, duplicates,
missing), delivery per interval between Redis restarts, WebSocket drops and recoveries, errors by
kind; the PNG plot shows the server's RSS and the delivery lag (commit to receipt) over time.
The client runs in this process, beside the server, on the same CPUs.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sqlalchemy import select
from sqlmodel import col

from bench.support import PETS, cpu_seconds, pace, prepare, rss_bytes, server_env, token_for
from petstore import db
from petstore.config import Settings
from petstore.models import OutboxEvent
from petstore.realtime.broker import format_ts, parse_ts
from tests.faults.redis import fast_restart
from tests.services import DEFAULT_APP_COMMAND, RedisServer, UvicornServer

ROOMS = ("pets", "inventory")
BUCKET = 5.0  # seconds per point of the lag curve
MAX_IN_FLIGHT = 200  # requests: past this the server is not keeping up, and a slot is skipped (counted)
#: Mixed traffic: operation and weight (percent of requests).
OPERATIONS = {
    "create pet": 12,
    "update pet": 12,
    "change status": 12,
    "place order": 8,
    "cancel order": 6,
    "delete pet": 12,
    "get pet": 20,
    "find by status": 8,
    "inventory": 10,
}


# ------------------------------------------------------------------------------ what is seen


class Ledger:
    """Events by number, so that each subscriber keeps one byte per event (times received), not a key."""

    def __init__(self) -> None:
        self.numbers: dict[tuple[str, str, str, Any], int] = {}
        self.commit_times: dict[str, float] = {}

    def number(self, key: tuple[str, str, str, Any]) -> int:
        found = self.numbers.get(key)
        if found is None:
            found = self.numbers[key] = len(self.numbers)
        return found

    def commit_time(self, ts: str) -> float:
        found = self.commit_times.get(ts)
        if found is None:
            found = self.commit_times[ts] = parse_ts(ts)
        return found


def event_key(room: str, event: str, ts: str, data: dict[str, Any]) -> tuple[str, str, str, Any]:
    """What identifies one event in one room: inventory counts are computed at publish time, so
    they are not part of it; a pet event names its pet."""
    return room, event, ts, data.get("id") if room == "pets" else None


@dataclass
class Run:
    """Everything measured, shared by the tasks of the run."""

    ledger: Ledger = field(default_factory=Ledger)
    errors: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, int]] = field(default_factory=list)
    lags: dict[int, array.array[float]] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)
    origin: float = 0.0  # time.time() at the start of the measured minutes

    def lag(self, received: float, committed: float) -> None:
        bucket = int((received - self.origin) // BUCKET)
        self.lags.setdefault(bucket, array.array("f")).append(received - committed)


class Subscriber:
    """One WebSocket client on ``pets`` and ``inventory`` that reconnects with ``since`` when dropped."""

    def __init__(self, run: Run, url: str) -> None:
        self.run = run
        self.url = url
        self.counts = bytearray()  # by ledger number: times received (at most 255)
        self.position: dict[str, tuple[str, int]] = {}  # room -> (epoch, offset) of the last event or snapshot
        self.subscribed = asyncio.Event()
        self.drops: Counter[str] = Counter()
        self.recovered: Counter[str] = Counter()  # "true" / "false" on resubscribing with since
        self.offset_gaps = 0
        self.offset_repeats = 0
        self.epochs = 0
        self.total = 0  # events received

    async def run_forever(self) -> None:
        while True:
            try:
                async with connect(self.url, compression=None, open_timeout=10, max_queue=None) as ws:
                    await self._subscribe(ws)
                    async for frame in ws:
                        self._frame(frame)
                self.drops["closed by the server without a code"] += 1
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else "none (no close frame)"
                self.drops[f"close {code}"] += 1
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.run.errors[f"ws connect: {type(exc).__name__}"] += 1
            await asyncio.sleep(random.uniform(0.05, 0.5))  # no thundering herd on the way back

    async def _subscribe(self, ws: ClientConnection) -> None:
        await ws.recv()  # welcome
        for number, room in enumerate(ROOMS, 1):
            message: dict[str, Any] = {"type": "subscribe", "room": room, "id": number}
            if room in self.position:
                epoch, offset = self.position[room]
                message["since"] = {"epoch": epoch, "offset": offset}
            await ws.send(json.dumps(message))
        pending = set(ROOMS)
        while pending:
            self._frame(await ws.recv(), pending)
        self.subscribed.set()

    def _frame(self, frame: str | bytes, pending: set[str] | None = None) -> None:
        body = json.loads(frame)
        for item in body if isinstance(body, list) else [body]:
            kind = item.get("type")
            if kind == "event":
                self._event(item)
            elif kind == "subscribed" and pending is not None:
                room = item["room"]
                pending.discard(room)
                if room not in self.position:
                    self.position[room] = (item["epoch"], item["offset"])
                elif item.get("recovered"):
                    self.recovered["true"] += 1  # the missed events follow: the position stays where it was
                else:
                    self.recovered["false"] += 1  # starting over from here (events in between are missing)
                    self.epochs += item["epoch"] != self.position[room][0]
                    self.position[room] = (item["epoch"], item["offset"])
            elif kind == "error":
                self.run.errors[f"ws error message: {item.get('code')}"] += 1

    def _event(self, item: dict[str, Any]) -> None:
        room = item["room"]
        epoch, offset = item["epoch"], item["offset"]
        last = self.position.get(room)
        if last is not None and last[0] == epoch:
            if offset <= last[1]:
                self.offset_repeats += 1
            elif offset > last[1] + 1:
                self.offset_gaps += offset - last[1] - 1
        elif last is not None:
            self.epochs += 1
        self.position[room] = (epoch, offset)
        self.total += 1
        ledger = self.run.ledger
        number = ledger.number(event_key(room, item["event"], item["ts"], item["data"]))
        if number >= len(self.counts):
            self.counts.extend(bytes(number + 1024 - len(self.counts)))
        self.counts[number] = min(self.counts[number] + 1, 255)
        self.run.lag(time.time(), ledger.commit_time(item["ts"]))

    def received(self, number: int) -> int:
        return self.counts[number] if number < len(self.counts) else 0


# --------------------------------------------------------------------------------- traffic


class Traffic:
    """Mixed REST requests at a steady rate; tracks the pets and orders it made to act on them."""

    def __init__(self, run: Run, server: UvicornServer, token: str, seed: int) -> None:
        self.run = run
        self.server = server
        self.token = token
        self.random = random.Random(seed)
        self.pets: dict[int, str] = dict.fromkeys(range(1, PETS + 1), "available")  # id -> status
        self.orders: list[int] = []
        self.made = 0
        self.sent = 0

    async def run_for(self, http: httpx.AsyncClient, seconds: float, rate: float) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        slot = 0
        while time.monotonic() - start < seconds:
            await pace(start, slot, rate)
            slot += 1
            if len(in_flight) >= MAX_IN_FLIGHT:
                self.run.errors["client: slot skipped, too many requests in flight"] += 1
                continue
            names, weights = zip(*OPERATIONS.items(), strict=True)
            task = asyncio.create_task(self.one(http, self.random.choices(names, weights)[0]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=30)

    def _pet(self, status: str | None = None) -> int | None:
        ids = [pet for pet, now in self.pets.items() if status is None or now == status]
        return self.random.choice(ids) if ids else None

    async def one(self, http: httpx.AsyncClient, operation: str) -> None:
        self.made += 1
        n = self.made
        pet = self._pet("available" if operation == "place order" else None)
        request: tuple[str, str, dict[str, Any]]
        if operation == "create pet":
            body = {"name": f"soak-{n}", "photoUrls": [], "category": {"name": "Dogs"}, "tags": [{"name": "soak"}]}
            request = ("POST", "/pet", {"json": body})
        elif pet is None or (operation == "cancel order" and not self.orders):
            return  # nothing to act on yet: no request in this slot
        elif operation == "update pet":
            request = ("PUT", "/pet", {"json": {"id": pet, "name": f"renamed-{n}", "photoUrls": []}})
        elif operation == "change status":
            status = self.random.choice(("available", "pending", "sold"))
            self.pets[pet] = status
            request = ("POST", f"/pet/{pet}", {"params": {"status": status}})
        elif operation == "place order":
            self.pets[pet] = "pending"
            request = ("POST", "/store/order", {"json": {"petId": pet, "quantity": 1}})
        elif operation == "cancel order":
            order = self.orders.pop(self.random.randrange(len(self.orders)))
            request = ("DELETE", f"/store/order/{order}", {})
        elif operation == "delete pet":
            del self.pets[pet]  # before the request: no other request picks it meanwhile
            request = ("DELETE", f"/pet/{pet}", {})
        elif operation == "get pet":
            request = ("GET", f"/pet/{pet}", {})
        elif operation == "find by status":
            request = ("GET", "/pet/findByStatus", {"params": {"status": "available"}})
        else:
            request = ("GET", "/store/inventory", {})
        method, path, options = request
        self.sent += 1
        try:
            response = await http.request(
                method, f"/api/v3{path}", headers={"Authorization": f"Bearer {self.token}"}, **options
            )
        except httpx.HTTPError as exc:
            self.run.errors[f"{operation}: {type(exc).__name__}"] += 1
            return
        if response.status_code == 401:  # the access token expired: log in again
            self.token = await asyncio.to_thread(token_for, self.server)
            self.run.errors[f"{operation}: 401 (token renewed)"] += 1
        elif response.status_code != 200:
            self.run.errors[f"{operation}: {response.status_code}"] += 1
        elif operation == "create pet":
            self.pets[response.json()["id"]] = "available"
        elif operation == "place order":
            self.orders.append(response.json()["id"])


async def restart_redis(run: Run, redis: RedisServer, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(fast_restart, redis)
            run.restarts.append(time.time() - run.origin)
        except Exception as exc:  # reported, and the next restart tried: the soak goes on
            run.errors[f"redis restart failed: {type(exc).__name__}"] += 1


async def sample_rss(run: Run, pid: int) -> None:
    while True:
        with contextlib.suppress(OSError):
            run.rss.append((time.time() - run.origin, rss_bytes(pid)))
        await asyncio.sleep(1.0)


# ----------------------------------------------------------------------------- the outbox


async def outbox_rows(database_url: str, after_id: int) -> list[OutboxEvent]:
    engine = db.create_engine(Settings(database_url=database_url, plugins=()))
    try:
        async with db.create_sessionmaker(engine)() as session:
            query = select(OutboxEvent).where(col(OutboxEvent.id) > after_id).order_by(col(OutboxEvent.id))
            return list((await session.execute(query)).scalars().all())
    finally:
        await engine.dispose()


async def last_outbox_id(database_url: str) -> int:
    rows = await outbox_rows(database_url, 0)
    return max((row.id or 0 for row in rows), default=0)


@dataclass
class Expected:
    """The events each subscriber should have received: ledger numbers, with their commit times."""

    numbers: list[int]
    rooms: dict[int, str]
    times: dict[int, float]
    per_room: Counter[str]


def expected_events(run: Run, rows: list[OutboxEvent]) -> Expected:
    counted: Counter[int] = Counter()
    rooms: dict[int, str] = {}
    times: dict[int, float] = {}
    for row in rows:
        ts = format_ts(row.created_at)
        for room in set(row.rooms) & set(ROOMS):
            number = run.ledger.number(event_key(room, row.event, ts, row.data))
            counted[number] += 1
            rooms[number] = room
            times[number] = parse_ts(ts) - run.origin
    # The same key twice (two changes in one millisecond with the same name and pet) is expected twice.
    numbers = [number for number, times_expected in counted.items() for _ in range(times_expected)]
    return Expected(numbers, rooms, times, Counter(rooms[n] for n in numbers))


# ------------------------------------------------------------------------------------ report


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def spread(values: list[float], fmt: str = "{:.1%}") -> str:
    if not values:
        return "n/a"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def delivery(subscribers: list[Subscriber], expected: Expected, room: str | None = None) -> dict[str, Any]:
    """Per subscriber: share of the expected events received, duplicates and missing, for one room or all."""
    wanted = Counter(n for n in expected.numbers if room is None or expected.rooms[n] == room)
    shares, duplicates, missing = [], [], []
    for subscriber in subscribers:
        got = dupes = 0
        for number, times_expected in wanted.items():
            received = subscriber.received(number)
            got += min(received, times_expected)
            dupes += max(received - times_expected, 0)
        shares.append(got / sum(wanted.values()) if wanted else 1.0)
        duplicates.append(dupes)
        missing.append(sum(wanted.values()) - got)
    return {"expected": sum(wanted.values()), "shares": shares, "duplicates": duplicates, "missing": missing}


def unmatched(subscribers: list[Subscriber], expected: Expected) -> int:
    """Events received that are in no outbox row (should be none: a mismatch of the matching itself)."""
    known = set(expected.numbers)
    return sum(
        count
        for subscriber in subscribers
        for number, count in enumerate(subscriber.counts)
        if count and number not in known
    )


def intervals(run: Run, subscribers: list[Subscriber], expected: Expected, end: float) -> list[str]:
    """Delivery between Redis restarts: a listener that stops after a restart shows up here."""
    edges = [-float("inf"), 0.0, *run.restarts, float("inf")]
    lines = [
        "| interval (s from start) | events committed | subscribers complete | received, min / median / max |",
        "|---|---:|---:|---|",
    ]
    for low, high in itertools.pairwise(edges):
        numbers = Counter(n for n in expected.numbers if low <= expected.times[n] < high)
        total = sum(numbers.values())
        if not total:
            continue
        shares = [sum(min(s.received(n), k) for n, k in numbers.items()) / total for s in subscribers]
        name = "warm-up" if high == 0.0 else f"{max(low, 0):.0f} to {min(high, end):.0f}"
        complete = sum(share == 1.0 for share in shares)
        lines.append(f"| {name} | {total} | {complete}/{len(subscribers)} | {spread(shares)} |")
    return lines


def rss_at(run: Run, moment: float) -> int:
    return min(run.rss, key=lambda sample: abs(sample[0] - moment))[1]


def plot(run: Run, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    top.plot([t / 60 for t, _ in run.rss], [rss / 2**20 for _, rss in run.rss], color="tab:blue")
    top.set_ylabel("server RSS (MiB)")
    top.set_title(title, fontsize=9)
    buckets = sorted(run.lags)
    minutes = [(b + 0.5) * BUCKET / 60 for b in buckets]
    for name, pick, color in (
        ("p50", lambda lags: statistics.median(lags), "tab:green"),
        ("p99", lambda lags: quantile(sorted(lags), 0.99), "tab:orange"),
        ("max", max, "tab:red"),
    ):
        bottom.plot(minutes, [pick(run.lags[b]) * 1000 for b in buckets], label=name, color=color)
    bottom.set_yscale("log")
    bottom.set_ylabel(f"delivery lag, commit to receipt (ms, per {BUCKET:g} s)")
    bottom.set_xlabel("minutes since warm-up ended")
    bottom.legend(loc="upper left")
    for axis in (top, bottom):
        axis.axvline(0, color="grey", linewidth=0.8)
        for restart in run.restarts:
            axis.axvline(restart / 60, color="grey", linestyle=":", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def server_log_problems(server: UvicornServer) -> Counter[str]:
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in server.log_path.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                found["server log: traceback"] += 1
            elif " ERROR " in f" {line} " or line.startswith("ERROR"):
                found[f"server log: {line.strip()[:100]}"] += 1
    return found


# --------------------------------------------------------------------------------------- main


@contextlib.contextmanager
def services(workdir: Path, database_url: str) -> Iterator[tuple[RedisServer, UvicornServer]]:
    with RedisServer() as redis:
        env = {
            **server_env(database_url, workdir),
            "PETSTORE_REDIS_URL": redis.url,
            # 200 subscribers and their reconnects come from one address, as do the logins.
            "PETSTORE_RATELIMIT_WS_CONNECT": "100000000/minute",
            "PETSTORE_RATELIMIT_LOGIN_PER_IP": "100000/minute",
            "PETSTORE_RATELIMIT_LOGIN_PER_USER": "100000/minute",
        }
        command = [*DEFAULT_APP_COMMAND, "--no-access-log", "--log-level", "warning"]
        with UvicornServer(env=env, command=command, cwd=workdir) as server:
            yield redis, server


async def soak(args: argparse.Namespace, redis: RedisServer, server: UvicornServer, database_url: str) -> int:
    run = Run()
    assert server.pid is not None
    pid = server.pid
    subscribers = [Subscriber(run, server.ws_url + "/ws") for _ in range(args.subscribers)]
    tasks = []
    for subscriber in subscribers:  # a few at a time, as clients arrive, not all in one burst
        tasks.append(asyncio.create_task(subscriber.run_forever()))
        await asyncio.sleep(0.005)
    await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in subscribers)), 120)
    baseline = await last_outbox_id(database_url)
    traffic = Traffic(run, server, await asyncio.to_thread(token_for, server), args.seed)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as http:
        run.origin = time.time() + args.warmup
        sampler = asyncio.create_task(sample_rss(run, pid))
        print(f"warm-up: {args.warmup:g} s ...", file=sys.stderr)
        await traffic.run_for(http, args.warmup, args.rate)
        cpu_start = sum(cpu_seconds(pid))
        rss_start = rss_bytes(pid)
        print(f"soak: {args.minutes:g} min ...", file=sys.stderr)
        restarter = asyncio.create_task(restart_redis(run, redis, args.redis_restart_every))
        await traffic.run_for(http, args.minutes * 60, args.rate)
        restarter.cancel()
        rss_end = rss_bytes(pid)
        cpu = sum(cpu_seconds(pid)) - cpu_start
        end = time.time() - run.origin
    rows = await outbox_rows(database_url, baseline)
    expected = expected_events(run, rows)
    for _ in range(int(args.drain)):  # every subscriber has as many events as expected, or the drain is over
        if all(subscriber.total >= len(expected.numbers) for subscriber in subscribers):
            break
        await asyncio.sleep(1.0)
    sampler.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    rss_samples = [rss for t, rss in run.rss if 0 <= t <= end]
    growth = (rss_end - rss_start) / rss_start
    print(
        f"\n{args.minutes:g} min after {args.warmup:g} s of warm-up, {args.rate:g} requests/s offered "
        f"({traffic.sent} sent), {args.subscribers} subscribers to {' and '.join(ROOMS)}, Redis fast-restarted "
        f"every {args.redis_restart_every:g} s ({len(run.restarts)} restarts); SQLite; server and client "
        f"share this machine's CPUs (server CPU {cpu / (end or 1):.0%} of one core)\n"
    )
    print("| server RSS | MiB |\n|---|---:|")
    print(f"| at start (after warm-up) | {rss_start / 2**20:.1f} |")
    print(f"| at end | {rss_end / 2**20:.1f} |")
    print(f"| lowest / highest meanwhile | {min(rss_samples) / 2**20:.1f} / {max(rss_samples) / 2**20:.1f} |")
    verdict = "flat (within 10%)" if abs(growth) <= 0.10 else "NOT flat (more than 10%)"
    print(f"| change, end vs start | {growth:+.1%}: {verdict} |\n")

    print("| room | events expected per subscriber | received, min / median / max | complete "
          "| duplicates (subscribers with any) | missing (subscribers with any) |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|")
    for room in (*ROOMS, None):
        d = delivery(subscribers, expected, room)
        complete = sum(share == 1.0 for share in d["shares"])
        with_dupes = sum(1 for n in d["duplicates"] if n)
        with_missing = sum(1 for n in d["missing"] if n)
        print(
            f"| {room or 'both'} | {d['expected']} | {spread(d['shares'])} | {complete}/{len(subscribers)} | "
            f"{sum(d['duplicates'])} ({with_dupes}) | {sum(d['missing'])} ({with_missing}) |"
        )
    print(f"\nreceived but in no outbox row (should be 0): {unmatched(subscribers, expected)}")
    print(
        f"offsets within an epoch: {sum(s.offset_gaps for s in subscribers)} skipped, "
        f"{sum(s.offset_repeats for s in subscribers)} repeated; epoch changes seen: "
        f"{sum(s.epochs for s in subscribers)}\n"
    )
    print("\n".join(intervals(run, subscribers, expected, end)))

    drops = sum((s.drops for s in subscribers), Counter[str]())
    recovered = sum((s.recovered for s in subscribers), Counter[str]())
    print(f"\nWebSocket drops: {dict(drops) or 'none'}; resubscribed with since: recovered {dict(recovered) or 'n/a'}")
    all_lags = sorted(lag for lags in run.lags.values() for lag in lags)
    if all_lags:
        quantiles = ", ".join(f"p{q * 100:g} {quantile(all_lags, q) * 1000:.0f}" for q in (0.5, 0.99, 0.999))
        print(f"delivery lag (ms): {quantiles}, max {all_lags[-1] * 1000:.0f}")

    errors = run.errors + server_log_problems(server)
    print("\n| error | count |\n|---|---:|")
    for kind, count in sorted(errors.items(), key=lambda item: -item[1]) or [("none", 0)]:
        print(f"| {kind} | {count} |")
    title = (
        f"petstore soak: {args.minutes:g} min, {args.rate:g} req/s, {args.subscribers} subscribers, "
        f"Redis restarted every {args.redis_restart_every:g} s (dotted); SQLite, 2 shared CPUs"
    )
    plot(run, args.plot, title)
    print(f"\nplot: {args.plot}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="measured minutes of traffic (default 10)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of traffic before the start RSS (60)")
    parser.add_argument("--rate", type=float, default=20.0, help="REST requests per second, mixed (default 20)")
    parser.add_argument("--subscribers", type=int, default=200, help="WebSocket subscribers (default 200)")
    parser.add_argument("--redis-restart-every", type=float, default=60.0, help="seconds between restarts (60)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the last events (30)")
    parser.add_argument("--plot", type=Path, default=Path("soak.png"), help="PNG to write (default soak.png)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the traffic mix")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="petstore-soak-") as tmp:
        workdir = Path(tmp)
        database_url = f"sqlite+aiosqlite:///{workdir / 'soak.db'}"
        asyncio.run(prepare(database_url))
        with services(workdir, database_url) as (redis, server):
            return asyncio.run(soak(args, redis, server, database_url))


if __name__ == "__main__":
    sys.exit(main())
