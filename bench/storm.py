"""Reconnect storm: N WebSocket subscribers of ``inventory``, the server restarted, every one of them
reconnecting at once with ``since``: with the default connect limits, the clients bringing the
resume pass of their welcome as the dashboard does (``default``); the same limits without passes
(``no-passes``: what the limits alone would do); the limits off (``off``); then a flood from one
address against the default limits.

Run by hand, never by the tests::

    .venv/bin/python bench/storm.py                        # 5,000 clients, 120 s deadline per storm
    .venv/bin/python bench/storm.py --clients 300 --deadline 60 --plot /tmp/storm.png

What runs (real subprocesses from ``tests.services``, as in the other benches): one redis-server,
one SQLite file prepared by ``bench.support.prepare`` (100 pets, a staff user), and the petstore
server (uvicorn with the protocols ``petstore serve`` runs, ``DEFAULT_APP_COMMAND``; the default
plugins: JWT auth, rate limits, metrics) on one loopback port. Every client connects from
127.0.0.1: this is the case of every client behind one NAT address. The clients are anonymous
(anyone may subscribe to ``inventory``), so both connect budgets are the address's. Each storm:

1. *Gather.* A server with the connect limits off (so that N clients can gather from one address,
   as they would over hours) takes N clients, each subscribed to ``inventory`` and following it;
   ``--events`` changes (``POST /api/v3/pet`` as staff) give the room a history, and every client
   has seen them all.
2. *Restart.* That server is stopped gracefully (SIGTERM: its clients get 1012) and started again
   on the same port, Redis and database with the storm's limits: ``default`` and ``no-passes``
   (the rate-limit plugin's own settings, nothing set) or ``off`` (every budget at
   100,000,000/minute). While the
   clients are away ``--missed`` more changes are committed, and published (the room's offset in
   Redis says so). The rate-limit keys are deleted, so that the storm meets full budgets, as it
   would a while after the previous restart.
3. *Storm.* Held until the restarted server is ready (real clients would start on the 1012 and meet
   refused connects while it is down; holding them makes the worst case, every one arriving at
   once), then released together: every client reconnects after a first delay drawn as the dashboard
   draws it (``petstore/static/petstore-client.js``: full jitter over 0.5 s), sends ``subscribe``
   with ``since`` (its last epoch and offset), and is *back* once the answer says ``recovered:
   true`` and every event it missed has arrived, in order (a gap or a repeat is counted). A
   refusal (429 with its ``Retry-After``, another status, a refused or timed-out connect, a close
   before the answer) is retried after ``Retry-After`` plus a full-jitter draw of the dashboard's
   backoff (0.5 s doubling to 30 s), until ``--deadline`` seconds after the release.

Measured per storm: the time from the release (server ready, missed events published) until the
first client and 50, 90, 99 and 100 % of them are back; refusals by reason; the server's CPU time
(user + system from /proc) from the release until the last client is back (or the deadline), per
client back and per connection attempt; the restarted server's peak RSS (``VmHWM``); this
process's CPU over the same time (the clients': when it nears the seconds elapsed, the clients are
the bottleneck); and, when the deadline cut a storm short, the rate at which clients came back
after the first seconds and how long the rest would take at that rate, beside the floor the
default budgets set (GCRA: a burst of ``q``, then ``q`` per window).

The flood: ``--flood-seconds`` of one address opening connections as fast as ``--flood-concurrency``
loops can, against a server with the default limits and full budgets; connections let through vs
refused, and the server's CPU per attempt.

``--plot PATH`` draws clients back and refusals over time for both storms. The clients run in this
process (one asyncio loop, uvloop when installed, the ``websockets`` client), on the same CPUs as
the server: on a small or busy machine the figures are upper bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.support import REPO, cpu_seconds, new_loop, prepare, server_env, token_for
from petstore.rates import Rate, parse_rates
from plugins.ratelimit.config import RateLimitSettings
from plugins.ratelimit.resume import KEY_NAME as RESUME_KEY
from plugins.ratelimit.resume import RESUME_AFTER
from tests.services import DEFAULT_APP_COMMAND, RedisServer, UvicornServer, free_port

ROOM = "inventory"
META = "petstore:{inventory}:meta"  # the room's position in Redis (petstore.realtime.broker.redis)
RATE_LIMIT_KEYS = "petstore:rl:*"  # plugins.ratelimit.gcra.PREFIX
UNLIMITED = "100000000/minute"
LIMITS_OFF = {
    "PETSTORE_RATE_LIMIT": UNLIMITED,
    "PETSTORE_RATELIMIT_WS_CONNECT": UNLIMITED,
    "PETSTORE_RATELIMIT_WS_CONNECT_PER_IP": UNLIMITED,
    "PETSTORE_RATELIMIT_WS_RESUME_PER_IP": UNLIMITED,
}
COMMAND = [*DEFAULT_APP_COMMAND, "--no-access-log", "--log-level", "warning"]
#: The dashboard's reconnect backoff (petstore-client.js ``backoffDelay``): full jitter, 0.5 s doubling to 30 s.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
BATCH = 200  # clients gathered at once
OPEN_TIMEOUT = 10.0  # TCP connect and upgrade
ANSWER_TIMEOUT = 30.0  # welcome, subscribed and the replay
WAIT_TIMEOUT = 120.0  # every other wait on a condition

T = TypeVar("T")


class Refused(Exception):
    """The server answered the subscribe with an error message."""


@dataclass
class Client:
    """One subscriber: where it stands in the room, and how its reconnect went."""

    epoch: str = ""
    offset: int = 0
    ws: ClientConnection | None = None
    target: int | None = None  # the room's offset in the last ``subscribed``
    recovered: bool | None = None
    since: int = 0
    back_at: float = 0.0  # monotonic; 0 while not back
    attempts: int = 0
    gaps: int = 0
    repeats: int = 0
    close_code: int | None = None
    resume: str | None = None  # the pass of the last welcome, for the next reconnect (as the dashboard keeps it)

    def take(self, frame: str | bytes) -> list[dict[str, Any]]:
        body = json.loads(frame)
        items: list[dict[str, Any]] = body if isinstance(body, list) else [body]
        for item in items:
            kind = item.get("type")
            if kind == "welcome":
                self.resume = item.get("resume")
            elif kind == "subscribed":
                self.recovered, self.target = bool(item["recovered"]), int(item["offset"])
                if not self.recovered:  # a snapshot: start over from the room's position
                    self.epoch, self.offset = item["epoch"], self.target
            elif kind == "event" and item.get("room") == ROOM:
                offset = int(item["offset"])
                if item["epoch"] == self.epoch and offset != self.offset + 1:
                    if offset <= self.offset:
                        self.repeats += 1
                    else:
                        self.gaps += 1
                self.epoch, self.offset = item["epoch"], offset
        return items


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll a condition of this process's own state until it holds; TimeoutError after ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.05)  # a poll interval bounded by the deadline, not a synchronisation


async def open_ws(url: str, open_timeout: float = OPEN_TIMEOUT) -> ClientConnection:
    return await connect(
        url,
        compression=None,
        open_timeout=open_timeout,
        ping_interval=None,
        close_timeout=2,
        max_queue=None,
        proxy=None,
    )


async def subscribe(client: Client, ws: ClientConnection, since: bool) -> None:
    """Welcome, ``subscribe`` (with ``since``: the client's position), the answer and the replay."""
    async with asyncio.timeout(ANSWER_TIMEOUT):
        client.take(await ws.recv())  # welcome
        message: dict[str, Any] = {"type": "subscribe", "room": ROOM}
        if since:
            client.since = client.offset
            message["since"] = {"offset": client.offset, "epoch": client.epoch}
        client.target = None
        await ws.send(json.dumps(message))
        while client.target is None or client.offset < client.target:
            for item in client.take(await ws.recv()):
                if item.get("type") == "error":
                    raise Refused(f"error {item.get('code')}")


async def follow(client: Client) -> None:
    """Read the room's events until the server closes the connection."""
    ws = client.ws
    assert ws is not None
    with contextlib.suppress(ConnectionClosed):
        async for frame in ws:
            client.take(frame)
    client.close_code = ws.close_code


def room_offset(redis_server: RedisServer) -> int:
    value = redis_server.command("HGET", META, "offset")
    return int(value) if value else 0


def forget_budgets(redis_url: str) -> int:
    """Delete every rate-limit budget: each is full again (the resume passes' key stays: it is no budget)."""
    with redis.Redis.from_url(redis_url) as r:
        keys = [key for key in r.scan_iter(RATE_LIMIT_KEYS, count=1000) if key.decode() != RESUME_KEY]
        if keys:
            r.delete(*keys)
        return len(keys)


def own_cpu() -> float:
    """User and system CPU time of this process (the clients) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def produce(url: str, token: str, count: int) -> None:
    """``count`` new pets, one after another: each commit is one ``inventory.changed``."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
        for n in range(count):
            response = await http.post("/api/v3/pet", json={"name": f"storm-{n}", "photoUrls": []})
            response.raise_for_status()


# ------------------------------------------------------------------------------ one storm


@dataclass
class Storm:
    limits: str
    clients: int
    released: float = 0.0
    ended: float = 0.0
    back: list[float] = field(default_factory=list)  # seconds from the release, sorted
    resynced: int = 0
    attempts: int = 0
    handshakes: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    refusal_times: list[float] = field(default_factory=list)
    cpu: float = 0.0
    client_cpu: float = 0.0  # this process's, over the same time
    peak_rss_mb: float = 0.0
    replayed: int = 0
    gaps: int = 0
    repeats: int = 0
    gather_s: float = 0.0
    stop_s: float = 0.0
    start_s: float = 0.0
    close_codes: Counter[int | None] = field(default_factory=Counter)
    passes: bool = True  # the clients bring their resume pass (plugins.ratelimit.resume)

    def at(self, share: float) -> float | None:
        """Seconds until ``share`` of the clients were back, None if they never were."""
        needed = max(1, int(self.clients * share + 0.999999))
        return self.back[needed - 1] if len(self.back) >= needed else None

    def rate_after(self, skip: float) -> float:
        """Clients back per second from ``skip`` s after the release to the end."""
        span = self.ended - self.released - skip
        return sum(1 for t in self.back if t >= skip) / span if span > 0 else float("nan")


async def reconnect(client: Client, url: str, rng: random.Random, storm: Storm, deadline: float) -> None:
    """The dashboard's reconnect: jittered first try, then backoff (after ``Retry-After``) until back."""
    delay = rng.uniform(0, BACKOFF_INITIAL)
    attempt = 0
    while True:
        await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))  # a backoff, not a synchronisation
        if time.monotonic() >= deadline:
            return
        client.attempts += 1
        storm.attempts += 1
        retry_after = 0.0
        ws: ClientConnection | None = None
        reason = ""
        try:
            # The dashboard's client brings its pass once (petstore-client.js #openingUrl).
            resume, client.resume = client.resume, None
            ws = await open_ws(f"{url}?resume={resume}" if resume and storm.passes else url)
            storm.handshakes += 1
            await subscribe(client, ws, since=True)
        except InvalidStatus as exc:
            reason = f"HTTP {exc.response.status_code}"
            with contextlib.suppress(ValueError):
                retry_after = float(exc.response.headers.get("Retry-After", "0"))
        except ConnectionClosed as exc:
            reason = f"closed {exc.rcvd.code if exc.rcvd else 'without a close frame'}"
        except Refused as exc:
            reason = str(exc)
        except TimeoutError:
            reason = "timed out" if ws is None else "no answer in time"
        except OSError as exc:
            reason = type(exc).__name__
        except InvalidHandshake as exc:
            reason = type(exc).__name__
        else:
            client.ws, client.back_at = ws, time.monotonic()
            return
        storm.refusals[reason] += 1
        storm.refusal_times.append(time.monotonic() - storm.released)
        if ws is not None:
            ws.transport.abort()
        attempt += 1
        delay = retry_after + rng.uniform(0, min(BACKOFF_MAX, BACKOFF_INITIAL * 2**attempt))


async def gather(url: str, count: int) -> list[Client]:
    clients: list[Client] = []
    for start in range(0, count, BATCH):
        batch = [Client() for _ in range(min(BATCH, count - start))]

        async def join(client: Client) -> None:
            client.ws = await open_ws(url, 60)
            await subscribe(client, client.ws, since=False)

        async with asyncio.timeout(WAIT_TIMEOUT):
            await asyncio.gather(*(join(c) for c in batch))
        clients.extend(batch)
    return clients


async def close_all(clients: Sequence[Client]) -> None:
    for client in clients:
        if client.ws is not None:
            client.ws.transport.abort()


async def storm(
    limits: str, args: argparse.Namespace, port: int, base_env: dict[str, str], redis_server: RedisServer
) -> Storm:
    env = (
        base_env | LIMITS_OFF if limits == "off" else {k: v for k, v in base_env.items() if k != "PETSTORE_RATE_LIMIT"}
    )
    result = Storm(limits, args.clients, passes=limits != "no-passes")
    rng = random.Random(args.seed)

    def say(text: str) -> None:
        print(f"  [{limits}] {text}", file=sys.stderr)

    # 1. Gather: the connect limits off, so that N clients can join from one address.
    gathering = UvicornServer(env=base_env | LIMITS_OFF, command=COMMAND, port=port, cwd=REPO)
    await asyncio.to_thread(gathering.start)
    clients: list[Client] = []
    restarted: UvicornServer | None = None
    try:
        token = await asyncio.to_thread(token_for, gathering)
        began = time.monotonic()
        clients = await gather(gathering.ws_url + "/ws", args.clients)
        result.gather_s = time.monotonic() - began
        followers = [asyncio.create_task(follow(c)) for c in clients]
        goal = clients[0].offset + args.events
        await produce(gathering.url, token, args.events)
        await until(lambda: all(c.offset >= goal for c in clients), WAIT_TIMEOUT, "every client to see the events")
        say(f"{len(clients)} clients gathered in {result.gather_s:.1f} s, at offset {goal}")
        # Clients gathered "as they would over hours" hold passes old enough to hold (a pass is good
        # RESUME_AFTER seconds after its welcome, in whole seconds): the last ones joined moments ago,
        # so let them age.
        aged = RESUME_AFTER + 1 - (time.monotonic() - began - result.gather_s)
        await asyncio.sleep(max(0.0, aged))  # the model's time, not a synchronisation

        # 2. Restart: SIGTERM (every client gets 1012), then the storm's server on the same port.
        began = time.monotonic()
        await asyncio.to_thread(gathering.stop)
        result.stop_s = time.monotonic() - began
        async with asyncio.timeout(WAIT_TIMEOUT):
            await asyncio.gather(*followers)
        result.close_codes = Counter(c.close_code for c in clients)
        for client in clients:
            client.ws = None
        restarted = UvicornServer(env=env, command=COMMAND, port=port, cwd=REPO)
        began = time.monotonic()
        await asyncio.to_thread(restarted.start)
        result.start_s = time.monotonic() - began
        assert restarted.pid is not None
        pid = restarted.pid
        await produce(restarted.url, token, args.missed)
        missed_goal = goal + args.missed
        await until(lambda: room_offset(redis_server) >= missed_goal, WAIT_TIMEOUT, "the missed events to be published")
        await asyncio.to_thread(forget_budgets, redis_server.url)
        say(f"restarted (stop {result.stop_s:.1f} s, start {result.start_s:.1f} s), {args.missed} events missed")

        # 3. The storm.
        cpu_before, client_before = sum(cpu_seconds(pid)), own_cpu()
        result.released = time.monotonic()
        deadline = result.released + args.deadline
        url = restarted.ws_url + "/ws"
        tasks = [asyncio.create_task(reconnect(c, url, rng, result, deadline)) for c in clients]
        _, pending = await asyncio.wait(tasks, timeout=args.deadline + OPEN_TIMEOUT + ANSWER_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        back = [c for c in clients if c.back_at]
        result.ended = max(c.back_at for c in back) if len(back) == len(clients) else time.monotonic()
        result.cpu, result.client_cpu = sum(cpu_seconds(pid)) - cpu_before, own_cpu() - client_before
        result.peak_rss_mb = peak_rss_mb(pid)
        result.back = sorted(c.back_at - result.released for c in back if c.recovered)
        result.resynced = sum(1 for c in back if not c.recovered)
        result.replayed = sum(c.offset - c.since for c in back if c.recovered)
        result.gaps = sum(c.gaps for c in clients)
        result.repeats = sum(c.repeats for c in clients)
        say(f"{len(back)} of {len(clients)} back in {result.ended - result.released:.1f} s, {dict(result.refusals)}")
        return result
    finally:
        await close_all(clients)
        for server in (gathering, restarted):
            if server is not None:
                await asyncio.to_thread(server.close)


# ------------------------------------------------------------------------------ the flood


@dataclass
class Flood:
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    cpu: float = 0.0

    @property
    def attempts(self) -> int:
        return sum(self.outcomes.values())


async def flood(args: argparse.Namespace, port: int, base_env: dict[str, str], redis_server: RedisServer) -> Flood:
    env = {k: v for k, v in base_env.items() if k != "PETSTORE_RATE_LIMIT"}
    server = UvicornServer(env=env, command=COMMAND, port=port, cwd=REPO)
    await asyncio.to_thread(server.start)
    result = Flood()
    opened: list[ClientConnection] = []
    try:
        assert server.pid is not None
        await asyncio.to_thread(forget_budgets, redis_server.url)
        url = server.ws_url + "/ws"
        cpu_before = sum(cpu_seconds(server.pid))
        began = time.monotonic()
        end = began + args.flood_seconds

        async def hammer() -> None:
            while time.monotonic() < end:
                try:
                    ws = await open_ws(url, 5)
                except InvalidStatus as exc:
                    result.outcomes[f"refused: HTTP {exc.response.status_code}"] += 1
                except (OSError, TimeoutError, InvalidHandshake) as exc:
                    result.outcomes[f"failed: {type(exc).__name__}"] += 1
                else:
                    result.outcomes["let through"] += 1
                    opened.append(ws)  # kept open, as a flood would

        await asyncio.gather(*(hammer() for _ in range(args.flood_concurrency)))
        result.seconds = time.monotonic() - began
        result.cpu = sum(cpu_seconds(server.pid)) - cpu_before
        return result
    finally:
        for ws in opened:
            ws.transport.abort()
        await asyncio.to_thread(server.close)


# ------------------------------------------------------------------------------ report


def floor_seconds(clients: int, rates: Sequence[Rate]) -> float:
    """The least time GCRA budgets let ``clients`` connections through from a full bucket: a burst
    of ``limit``, then ``limit`` per ``window``, for the strictest of the rates."""
    return max((max(0, clients - r.limit) * r.window / r.limit for r in rates), default=0.0)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(storms: list[Storm], flooded: Flood | None, args: argparse.Namespace) -> str:
    defaults = RateLimitSettings.model_fields
    per_client, per_ip = str(defaults["ws_connect"].default), str(defaults["ws_connect_per_ip"].default)
    anonymous_floor = floor_seconds(args.clients, [*parse_rates(per_client), *parse_rates(per_ip)])
    signed_in_floor = floor_seconds(args.clients, parse_rates(per_ip))
    lines = [
        f"{args.clients:,} anonymous subscribers of `{ROOM}` behind one address (127.0.0.1); {args.events} events "
        f"before the restart, {args.missed} while away; storm deadline {args.deadline:g} s",
        "",
        "| connect limits | back, recovered: true | resynced | not back | first back s | 50 % s | 90 % s | 99 % s "
        "| all s | attempts | refused 429 | other refusals | server CPU s | CPU ms / client back | CPU ms / attempt "
        "| peak RSS MB | client CPU s | events replayed / client | gaps, repeats |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in storms:
        back = len(s.back)
        missing = s.clients - back - s.resynced
        rate_limited = s.refusals.get("HTTP 429", 0)
        lines.append(
            f"| {s.limits} | {back:,} | {s.resynced:,} | {missing:,} | {f'{s.back[0]:.2f}' if s.back else '-'} | "
            f"{seconds(s.at(0.5))} | {seconds(s.at(0.9))} | "
            f"{seconds(s.at(0.99))} | {seconds(s.at(1.0))} | {s.attempts:,} | {rate_limited:,} | "
            f"{sum(s.refusals.values()) - rate_limited:,} | {s.cpu:.1f} | "
            f"{s.cpu / back * 1000 if back else float('nan'):.2f} | "
            f"{s.cpu / s.attempts * 1000 if s.attempts else 0:.2f} | "
            f"{s.peak_rss_mb:.0f} | {s.client_cpu:.1f} | {s.replayed / back if back else 0:.1f} | "
            f"{s.gaps}, {s.repeats} |"
        )
    lines.append("")
    for s in storms:
        codes = ", ".join(f"{code} x {n:,}" for code, n in s.close_codes.most_common())
        refusals = ", ".join(f"{why} x {n:,}" for why, n in s.refusals.most_common()) or "none"
        lines.append(
            f"- {s.limits}: gathered in {s.gather_s:.1f} s; stop {s.stop_s:.1f} s (close codes: {codes}), "
            f"start {s.start_s:.1f} s; {s.handshakes:,} upgrades accepted; refusals: {refusals}"
        )
        missing = s.clients - len(s.back) - s.resynced
        if missing:
            skip = min(5.0, args.deadline / 4)
            rate = s.rate_after(skip)
            eta = missing / rate if rate > 0 else float("inf")
            lines.append(
                f"  cut short at {args.deadline:g} s: after the first {skip:g} s, {rate:.2f} clients back per second; "
                f"the other {missing:,} would need about {eta:,.0f} s more at that rate"
            )
    lines += [
        "",
        f"Default connect budgets: ws_connect {per_client} per client (an anonymous client is its address) and "
        f"ws_connect_per_ip {per_ip} per address, both GCRA (the quota at once, then evenly over the window). "
        f"Their floor for {args.clients:,} reconnects from one address: {anonymous_floor:,.0f} s anonymous, "
        f"{signed_in_floor:,.0f} s if each client were signed in as its own user (the per-address budget alone).",
    ]
    if flooded is not None:
        let_through = flooded.outcomes.get("let through", 0)
        lines += [
            "",
            f"Flood: one address, {args.flood_concurrency} loops opening connections as fast as they can for "
            f"{flooded.seconds:.1f} s, default limits, full budgets",
            "",
            "| attempts | attempts/s | let through | refused | outcomes | server CPU µs / attempt |",
            "|---:|---:|---:|---:|---|---:|",
            f"| {flooded.attempts:,} | {flooded.attempts / flooded.seconds:,.0f} | {let_through:,} | "
            f"{flooded.attempts - let_through:,} | "
            + ", ".join(f"{what} x {n:,}" for what, n in flooded.outcomes.most_common())
            + f" | {flooded.cpu / flooded.attempts * 1e6 if flooded.attempts else 0:,.0f} |",
        ]
    return "\n".join(lines)


def plot(storms: list[Storm], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6), dpi=120, sharex=True)
    for s, color in zip(storms, ("tab:red", "tab:blue", "tab:green"), strict=False):
        if s.back:
            top.step([0.0, *s.back], range(len(s.back) + 1), where="post", color=color, label=f"limits {s.limits}")
        times = sorted(s.refusal_times)
        if times:
            bottom.step([0.0, *times], range(len(times) + 1), where="post", color=color, label=f"limits {s.limits}")
    top.axhline(args.clients, color="grey", linestyle=":", linewidth=1)
    top.set_ylabel("clients back (recovered: true)")
    bottom.set_ylabel("refused connects (cumulative)")
    bottom.set_xlabel("seconds since the restarted server was released to the clients")
    bottom.set_xscale("symlog", linthresh=1.0)  # the first second linear, then log: both storms fit
    bottom.set_xlim(0, max((s.ended - s.released for s in storms), default=1.0))
    for axes in (top, bottom):
        axes.set_ylim(bottom=0)
        axes.legend(loc="upper left", fontsize=8)
        axes.grid(True, alpha=0.3)
    cpus = os.cpu_count()
    title = f"Reconnect storm: {args.clients:,} clients behind one address ({cpus} CPUs, clients included)"
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------ main


def run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(work())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--events", type=int, default=20, help="changes before the restart (the room's history)")
    parser.add_argument("--missed", type=int, default=5, help="changes while the clients are away")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds a storm may take")
    parser.add_argument(
        "--limits",
        default="default,no-passes,off",
        help="storms to run, comma-separated: default (the default limits, clients bring their resume "
        "pass), no-passes (the default limits, clients without passes), off (no connect limits)",
    )
    parser.add_argument("--flood-seconds", type=float, default=5.0, help="0: no flood")
    parser.add_argument("--flood-concurrency", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1, help="of the clients' jitter")
    parser.add_argument("--plot", type=Path, help="PNG of clients back over time")
    args = parser.parse_args()

    # 5,000 clients hold more descriptors than the usual soft limit; the servers inherit it.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.clients + 1000:
        sys.exit(f"open-file limit {hard} is too low for {args.clients} clients (and the server's own)")

    began = time.monotonic()
    storms: list[Storm] = []
    flooded: Flood | None = None
    with tempfile.TemporaryDirectory(prefix="petstore-storm-") as tmp, RedisServer() as redis_server:
        workdir = Path(tmp)
        database = f"sqlite+aiosqlite:///{workdir}/storm.db"
        asyncio.run(prepare(database))
        base_env = server_env(database, workdir) | {"PETSTORE_REDIS_URL": redis_server.url}
        port = free_port()
        for limits in args.limits.split(","):
            print(f"storm, limits {limits} ... ({time.monotonic() - began:.0f} s)", file=sys.stderr)
            storms.append(run(lambda: storm(limits, args, port, base_env, redis_server)))  # noqa: B023
        if args.flood_seconds > 0:
            print(f"flood ... ({time.monotonic() - began:.0f} s)", file=sys.stderr)
            flooded = run(lambda: flood(args, port, base_env, redis_server))
    print(f"done in {time.monotonic() - began:.0f} s", file=sys.stderr)
    print(report(storms, flooded, args))
    if args.plot:
        plot(storms, args.plot, args)
        print(f"\nplot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
