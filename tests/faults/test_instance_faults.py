"""The instance rows of the fault matrix (issue 10, SPEC §6): PostgreSQL going away, an instance
killed with SIGKILL, and a rolling restart of three instances behind the real haproxy running
the repository's deploy/haproxy.cfg.

Everything is real: PostgreSQL, Redis, haproxy and petstore's uvicorn subprocesses (with the
header auth fake and the probe plugin, as in tests/realtime/test_realtime_cluster.py), the schema made by
`petstore migrate` as an operator would. Clients are the `websockets` library and httpx, every
wait a condition with a deadline. A fault lasts for a given time (the PostgreSQL outage): that
is the fault itself, while the test keeps asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.faults.proxy import TcpProxy
from tests.realtime.support import DEADLINE, Client, petstore_instances, staff_headers, until, ws_client
from tests.services import PostgresServer, UvicornServer
from tests.services.haproxy import HaproxyServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

Instances = Callable[..., list[UvicornServer]]
#: A client-chosen id no other change of a test uses.
SENTINEL = 10**6
#: Deadline for the events of a whole burst to arrive (generous: two cores shared by the suite).
DELIVERY = 60.0
OUTAGE_SECONDS = 10.0
#: Answers a client retries (haproxy's "no server right now", an instance that is stopping).
RETRYABLE = frozenset({502, 503, 504})


def migrate(database_url: str) -> None:
    """`petstore migrate`, once, before any instance starts: what docker-compose.yml's `migrate` does."""
    petstore = Path(sys.executable).with_name("petstore")
    result = subprocess.run(
        [str(petstore), "migrate"],
        env={"PETSTORE_DATABASE_URL": database_url, "PATH": str(petstore.parent)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def instances(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Instances]:
    """``instances(n, database_url=...)`` starts n servers on the test's (migrated) database and Redis."""
    migrate(pg_url)
    with petstore_instances(pg_url, redis_url, tmp_path / "media") as start:
        yield start


def logs(*servers: UvicornServer | HaproxyServer) -> str:
    """The servers' log tails, for an assertion message: a fault test that fails says what they saw."""
    return "\n".join(f"--- {server.name} on port {server.port}:\n{server.logtail(60)}" for server in servers)


# ------------------------------------------------------------------------------------- helpers


async def subscribe(client: Client, since: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "subscribe", "room": "pets"}
    if since is not None:
        message["since"] = since
    return await client.request(message, "subscribed")


async def events(client: Client, count: int) -> list[dict[str, Any]]:
    return [await client.expect("event", DELIVERY) for _ in range(count)]


def assert_contiguous(received: list[dict[str, Any]], first_offset: int) -> None:
    """Offsets rise by one from `first_offset`, in one epoch: nothing missing, nothing twice."""
    assert [e["offset"] for e in received] == list(range(first_offset, first_offset + len(received)))
    assert len({e["epoch"] for e in received}) <= 1, "a new epoch, though Redis kept its history"
    assert len({e["epoch"] for e in received}) == 1, "the epoch changed though Redis never restarted"


async def pet_names(url: str) -> list[str]:
    """Every pet's name in id order, read back through REST: what was really committed."""
    names: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE) as http:
        while True:
            page = await http.get(
                "/api/v3/pet/findByStatus", params={"status": "available", "limit": 500, "offset": len(names)}
            )
            assert page.status_code == 200, page.text
            names += [pet["name"] for pet in page.json()]
            if len(page.json()) < 500:
                return names


async def create_until_done(http: httpx.AsyncClient, pet_id: int, within: float = 30.0) -> int:
    """POST a pet with a client-chosen id, retrying on a connection error or a retryable answer.

    The id makes the retry idempotent: if an earlier attempt committed, the retry gets 409 and the
    pet exists once. Returns how many attempts it took.
    """
    deadline = time.monotonic() + within
    body = {"id": pet_id, "name": f"pet-{pet_id}", "photoUrls": []}
    for attempt in range(1, 1000):
        try:
            response = await http.post("/api/v3/pet", json=body, headers=staff_headers())
        except httpx.TransportError:
            pass
        else:
            if response.status_code in (200, 409):
                return attempt
            assert response.status_code in RETRYABLE, response.text
        if time.monotonic() > deadline:
            raise TimeoutError(f"pet {pet_id} could not be created within {within:g}s")
        await asyncio.sleep(0.05)  # a client's back-off between retries, bounded by the deadline
    raise AssertionError("unreachable: the deadline ends the loop")


# ---------------------------------------------------------------------------- PostgreSQL away


async def assert_rest_answers_503_meanwhile(server: UvicornServer, seconds: float) -> None:
    """For `seconds`, writes and reads are 503 in the JSON error shape (never 500), /readyz says why."""
    end = time.monotonic() + seconds
    statuses: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
        while time.monotonic() < end:
            write = await http.post("/api/v3/pet", json={"name": "lost", "photoUrls": []}, headers=staff_headers())
            read = await http.get("/api/v3/pet/1")
            ready = await http.get("/readyz")
            for what, response in (("write", write), ("read", read), ("readyz", ready)):
                statuses[f"{what} {response.status_code}"] += 1
                assert response.status_code == 503, (what, response.status_code, response.text, logs(server))
                body = response.json()
                assert body["code"] == 503 and isinstance(body["type"], str) and body["message"], body
            assert ready.json()["checks"]["database"] != "ok"
            assert (await http.get("/healthz")).status_code == 200  # the process itself is fine
    assert statuses["write 503"] >= 1, statuses


async def assert_writes_and_relay_resume(server: UvicornServer, client: Client, after: int) -> None:
    """A write succeeds again by itself, and its event arrives right after the ones before the outage."""
    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:

        async def written() -> bool:
            with contextlib.suppress(httpx.TransportError):
                body = {"name": "after-outage", "photoUrls": []}
                response = await http.post("/api/v3/pet", json=body, headers=staff_headers())
                assert response.status_code in (200, 503), (response.text, logs(server))
                return response.status_code == 200
            return False

        await until(written, "a write to succeed after PostgreSQL came back", within=30.0)
    event = await client.expect("event", DELIVERY)
    assert (event["data"]["name"], event["offset"]) == ("after-outage", after + 1), event
    assert await pet_names(server.url) == ["before-outage", "after-outage"]  # no refused write left a trace


async def test_postgres_restarted_rest_answers_503_then_writes_and_the_relay_resume(
    instances: Instances, postgres_server: PostgresServer
) -> None:
    (server,) = instances(1)
    async with ws_client(server.ws_url) as client:
        start = (await subscribe(client))["offset"]
        async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
            body = {"name": "before-outage", "photoUrls": []}
            assert (await http.post("/api/v3/pet", json=body, headers=staff_headers())).status_code == 200
        assert (await client.expect("event"))["offset"] == start + 1
        await asyncio.to_thread(postgres_server.stop)
        try:
            await assert_rest_answers_503_meanwhile(server, OUTAGE_SECONDS)
        finally:
            await asyncio.to_thread(postgres_server.start)
        await assert_writes_and_relay_resume(server, client, start + 1)


async def test_postgres_unreachable_rest_answers_503_then_writes_and_the_relay_resume(
    instances: Instances, pg_url: str, postgres_server: PostgresServer
) -> None:
    with TcpProxy("127.0.0.1", postgres_server.port) as proxy:
        (server,) = instances(1, database_url=proxy.url_for(pg_url))
        async with ws_client(server.ws_url) as client:
            start = (await subscribe(client))["offset"]
            async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
                body = {"name": "before-outage", "photoUrls": []}
                assert (await http.post("/api/v3/pet", json=body, headers=staff_headers())).status_code == 200
            assert (await client.expect("event"))["offset"] == start + 1
            # The network to PostgreSQL breaks: open connections are reset, new ones refused.
            proxy.refuse(True)
            proxy.reset()
            try:
                await assert_rest_answers_503_meanwhile(server, OUTAGE_SECONDS)
            finally:
                proxy.refuse(False)
            await assert_writes_and_relay_resume(server, client, start + 1)


# ------------------------------------------------------------------------------------- SIGKILL


async def test_an_instance_killed_during_a_burst_the_survivor_delivers_every_committed_change_once(
    instances: Instances,
) -> None:
    doomed, survivor = instances(2)
    total, kill_after = 120, 40
    done: list[int] = []

    async def write(http: httpx.AsyncClient, n: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            with contextlib.suppress(httpx.TransportError):  # in flight on the killed one: fate unknown
                body = {"name": f"pet-{n}", "photoUrls": []}
                response = await http.post("/api/v3/pet", json=body, headers=staff_headers())
                assert response.status_code == 200, response.text
                done.append(n)

    async def kill_mid_burst() -> None:
        await until(lambda: len(done) >= kill_after, f"{kill_after} changes", within=DELIVERY)
        await asyncio.to_thread(doomed.kill)

    async with ws_client(survivor.ws_url) as stays, ws_client(doomed.ws_url) as dropped:
        first = await subscribe(stays)
        await subscribe(dropped)
        gate = asyncio.Semaphore(8)  # several changes in flight on each instance when the kill lands
        async with (
            httpx.AsyncClient(base_url=doomed.url, timeout=DEADLINE) as on_doomed,
            httpx.AsyncClient(base_url=survivor.url, timeout=DEADLINE) as on_survivor,
        ):
            await asyncio.gather(
                kill_mid_burst(),
                *(write(on_doomed if n % 2 else on_survivor, n, gate) for n in range(total)),
            )
            # What the database holds is what was committed, whatever the killed one's clients heard.
            committed = await pet_names(survivor.url)
            assert len(done) <= len(committed) < total, (len(done), len(committed))
            received = await events(stays, len(committed))
            # The outbox gives the order (commits on two instances interleave); each change once.
            assert sorted(e["data"]["name"] for e in received) == sorted(committed), logs(survivor)
            assert_contiguous(received, first["offset"] + 1)
            # Nothing doubled arrives late either: the next event is the next change.
            await create_until_done(on_survivor, SENTINEL)
            assert (await stays.expect("event", DELIVERY))["data"]["name"] == f"pet-{SENTINEL}", logs(survivor)
        names = [e["data"]["name"] for e in received] + [f"pet-{SENTINEL}"]

        # The killed instance's client lost its connection (no close frame: nobody was left to send it).
        seen: list[dict[str, Any]] = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                seen.append(await dropped.expect("event", DELIVERY))
    last = seen[-1]["offset"] if seen else first["offset"]
    async with ws_client(survivor.ws_url) as again:
        resumed = await subscribe(again, since={"offset": last, "epoch": first["epoch"]})
        assert resumed["recovered"] is True, resumed
        rest = await events(again, first["offset"] + len(names) - last)
        assert [e["data"]["name"] for e in seen + rest] == names


# ------------------------------------------------------------------------------ rolling restart


@dataclass
class Subscriber:
    """A dashboard through haproxy: stays subscribed to `pets`, and on every drop reconnects with `since`."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    recovered: list[bool] = field(default_factory=list)
    failed_connects: int = 0
    first: dict[str, Any] | None = None
    #: Per received event, which of this subscriber's connections brought it (1 = the first), and
    #: per connection what its subscription answered: what a failure needs to say where a
    #: duplicate or a gap came from (a replay, a live event, a second publication).
    via: list[int] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)

    def account(self) -> str:
        events = [
            (e["offset"], e["epoch"][:8], e["data"]["name"], c) for e, c in zip(self.received, self.via, strict=True)
        ]
        answers = [(a["offset"], a["epoch"][:8], a["recovered"]) for a in self.answers]
        return (
            f"subscriptions (offset, epoch, recovered): {answers}\nevents (offset, epoch, name, connection): {events}"
        )

    @property
    def since(self) -> dict[str, Any] | None:
        if self.first is None:
            return None
        last = self.received[-1]["offset"] if self.received else self.first["offset"]
        return {"offset": last, "epoch": self.first["epoch"]}

    async def run(self) -> None:
        while True:
            try:
                async with ws_client(self.url) as client:
                    since = self.since
                    subscribed = await subscribe(client, since)
                    self.answers.append(subscribed)
                    if since is None:
                        self.first = subscribed
                    else:
                        self.recovered.append(subscribed["recovered"])
                    while True:
                        event = await client.expect("event", within=3600)
                        self.received.append(event)
                        self.via.append(len(self.answers))
            except ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd is not None else None)
            except (OSError, InvalidHandshake, TimeoutError):
                # haproxy had no instance to give this connection (all stopping or starting): a
                # real client backs off and tries again; this is not a drop of a subscription.
                self.failed_connects += 1
            await asyncio.sleep(0.1)  # reconnect back-off, as petstore's dashboard does (with jitter)


async def test_a_rolling_restart_behind_haproxy_loses_and_doubles_nothing(instances: Instances) -> None:
    servers = instances(3)
    with HaproxyServer([server.port for server in servers]) as haproxy:
        await asyncio.to_thread(haproxy.wait_states, dict.fromkeys(haproxy.servers, "UP"))
        subscribers = [Subscriber(haproxy.ws_url) for _ in range(100)]
        running = [asyncio.create_task(s.run()) for s in subscribers]
        try:
            await until(lambda: all(s.first for s in subscribers), "100 subscriptions", within=DELIVERY)
            assert len({s.first["offset"] for s in subscribers if s.first}) == 1
            start = subscribers[0].first
            assert start is not None
            attempts: list[int] = []
            restarted = asyncio.Event()

            async def change_until_restarted() -> None:
                async with httpx.AsyncClient(base_url=haproxy.url, timeout=DEADLINE) as http:
                    pet_id = 1
                    while not restarted.is_set() or pet_id <= 60:
                        attempts.append(await create_until_done(http, pet_id))
                        pet_id += 1
                        await asyncio.sleep(0.05)  # a steady rate of changes, not a synchronisation

            async def roll() -> None:
                for server, name in zip(servers, haproxy.servers, strict=True):
                    await asyncio.to_thread(server.stop)  # SIGTERM; ServiceError unless it exits in time
                    await asyncio.to_thread(haproxy.wait_states, {name: "DOWN"})
                    await asyncio.to_thread(server.start)
                    await asyncio.to_thread(haproxy.wait_states, {name: "UP"})
                restarted.set()

            await asyncio.gather(change_until_restarted(), roll())
            names = [f"pet-{n}" for n in range(1, len(attempts) + 1)]
            assert await pet_names(haproxy.url) == names, "a change was lost or doubled"

            async def everyone_has_everything() -> bool:
                for task in running:
                    if task.done():
                        task.result()  # a subscriber that met something unexpected says what
                        raise AssertionError("a subscriber stopped")
                return all(len(s.received) >= len(names) for s in subscribers)

            try:
                await until(everyone_has_everything, f"{len(names)} events at 100 subscribers", within=DELIVERY)
            except TimeoutError:
                short = {n: len(s.received) for n, s in enumerate(subscribers) if len(s.received) < len(names)}
                raise AssertionError(f"subscribers short of events: {short}\n{logs(*servers, haproxy)}") from None
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    for subscriber in subscribers:
        got = [e["data"]["name"] for e in subscriber.received]
        assert got == names, f"{len(got)} events for {len(names)} changes\n{subscriber.account()}\n{logs(*servers)}"
        assert_contiguous(subscriber.received, start["offset"] + 1)
        # Each was on one of the three instances when it stopped, so each was dropped, with 1012.
        assert subscriber.closes and set(subscriber.closes) == {1012}, subscriber.closes
        assert subscriber.recovered and all(subscriber.recovered), subscriber.recovered
