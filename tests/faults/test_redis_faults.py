"""The Redis rows of the fault matrix (issue 10, SPEC §6): what must hold when Redis fails.

Every test runs a real uvicorn server (``tests.services.UvicornServer``) on a SQLite file and a
Redis of its own, through a :class:`~tests.faults.proxy.TcpProxy` where the fault is the
network's. Around each fault, pets are created over REST (one ``pet.created`` each in the
``pets`` room), and two subscribers watch: one that stays connected throughout, and one that
leaves before the fault and comes back with ``since`` after it. Every "within N s" of the
matrix is the deadline of a wait on a condition; each received event is waited for with a
deadline too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from petstore.realtime.broker.redis import PUBLISH, RedisBroker
from tests.fakes import create_schema
from tests.faults.proxy import TcpProxy
from tests.faults.redis import fast_restart, frozen, shutdown
from tests.realtime.support import DEADLINE, Client, add_pet, until, ws_client
from tests.realtime.test_realtime_cluster import assert_contiguous
from tests.services import HOST, RedisServer, UvicornServer

pytestmark = [pytest.mark.redis]

FAKE_PLUGINS = "tests.fakes,tests.realtime.support:probe"
WITH_METRICS = FAKE_PLUGINS + ",plugins.metrics"
DEFAULT_PLUGINS = "plugins.auth,plugins.ratelimit,plugins.metrics"
PETSTORE = Path(sys.executable).with_name("petstore")

#: The listener's watchdog (``RedisBroker``'s default): it pings a connection quiet for this long,
#: and gives up when the answer has not come this long after.
WATCHDOG_SECONDS: float = inspect.signature(RedisBroker).parameters["watchdog_seconds"].default
#: Each event is waited for this long: the first one after a fault waits out the relay's and the
#: listener's backoff.
EVENT_WAIT = 15.0
#: Writes during an outage are spread over it, one every this often (a pace, not a synchronisation).
WRITE_EVERY = 0.5

#: The pace of waits on a condition read over HTTP (readiness, metrics, the probe).
POLL_EVERY = 0.1

Serve = Callable[..., UvicornServer]


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, without persistence: the test may restart it, stop it, freeze it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own that keeps an append-only file: a restart finds every key again."""
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def proxy(redis: RedisServer) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the test's Redis: give petstore ``proxy.url_for(redis.url)``."""
    with TcpProxy(HOST, redis.port) as proxy:
        yield proxy


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(redis_url, plugins=..., **env)``: a started server on a fresh SQLite database."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}"
    asyncio.run(create_schema(database_url))
    servers: list[UvicornServer] = []

    def start(redis_url: str, plugins: str = FAKE_PLUGINS, **env: str) -> UvicornServer:
        server = UvicornServer(
            env={
                "PETSTORE_DATABASE_URL": database_url,
                "PETSTORE_REDIS_URL": redis_url,
                "PETSTORE_PLUGINS": plugins,
                "PETSTORE_ENV": "test",
                "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
                **env,
            }
        )
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.close()


# ------------------------------------------------------------------------------ subscribers


class Subscriber:
    """A WebSocket client subscribed to ``pets``: its ``subscribed`` answer and the events it took."""

    #: Every subscriber still connected: closed at the end of the test, whatever its outcome.
    connected: ClassVar[set[Subscriber]] = set()

    def __init__(self, stack: contextlib.AsyncExitStack, client: Client, subscribed: dict[str, Any]) -> None:
        self._stack = stack
        self.client = client
        self.subscribed = subscribed
        self.events: list[dict[str, Any]] = []
        Subscriber.connected.add(self)

    @classmethod
    async def join(cls, ws_url: str, since: dict[str, Any] | None = None, within: float = DEADLINE) -> Subscriber:
        """Connect and subscribe, again and again until it works or ``within`` s have passed.

        An attempt the server answers with a close (1012 while its broker is away) or not at
        all is retried; the deadline covers the whole, so "subscribing works within N s" is this.
        """
        deadline = time.monotonic() + within
        request: dict[str, Any] = {"type": "subscribe", "room": "pets", **({"since": since} if since else {})}
        failure: BaseException | None = None
        while (left := deadline - time.monotonic()) > 0:
            stack = contextlib.AsyncExitStack()
            try:
                # max_queue=None: a client that leaves with events unread still reads the
                # server's close frame at once (a full queue would pause reading until timeout).
                joining = stack.enter_async_context(ws_client(ws_url, max_queue=None))
                client = await asyncio.wait_for(joining, left)
                answer = await asyncio.wait_for(client.request(request, "subscribed"), deadline - time.monotonic())
                return cls(stack, client, answer)
            except Exception as exc:  # a refused, closed or unanswered attempt: try again while time is left
                failure = exc
                await stack.aclose()
        raise TimeoutError(f"could not subscribe within {within:.1f}s; last attempt: {failure!r}")

    async def take(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` events, each within EVENT_WAIT; kept in ``events`` as well."""
        taken = [await self.client.expect("event", EVENT_WAIT) for _ in range(count)]
        self.events += taken
        return taken

    async def nothing_more(self) -> None:
        """No other message comes: each event was delivered once."""
        with pytest.raises(TimeoutError):
            extra = await self.client.recv(within=1.0)
            pytest.fail(f"one message too many: {extra}")

    @property
    def position(self) -> dict[str, Any]:
        """Where this subscriber stands, as ``since`` for a later subscription."""
        last = self.events[-1] if self.events else self.subscribed
        return {"epoch": last["epoch"], "offset": last["offset"]}

    async def leave(self) -> None:
        Subscriber.connected.discard(self)
        await self._stack.aclose()


async def close_subscribers() -> None:
    """Close every subscriber still connected (a failed test leaves them open)."""
    for subscriber in list(Subscriber.connected):
        with contextlib.suppress(Exception):
            await subscriber.leave()


@pytest.fixture(autouse=True)
async def _subscribers_closed_first(serve: Serve) -> AsyncIterator[None]:
    """Clients are closed inside the test's event loop, and before the servers stop (which
    would otherwise wait for them to take their 1012)."""
    yield
    await close_subscribers()


async def pair(ws_url: str) -> tuple[Subscriber, Subscriber]:
    """The subscriber that stays connected through the fault, and the one that will leave."""
    return await Subscriber.join(ws_url), await Subscriber.join(ws_url)


def names_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["data"]["name"] for event in events]


def assert_once_in_order(subscriber: Subscriber, names: list[str]) -> None:
    """The subscriber got exactly these pets, in this order, offsets rising by one (a new epoch
    starting again at 1)."""
    assert names_of(subscriber.events) == names
    assert_contiguous(subscriber.events, subscriber.subscribed["offset"] + 1)


def following(events: list[dict[str, Any]], epoch: str, offset: int) -> list[dict[str, Any]]:
    """The events of a stream after a position: from the first one past ``offset`` in ``epoch``
    on, later epochs included."""
    for index, event in enumerate(events):
        if event["epoch"] == epoch and event["offset"] > offset:
            return events[index:]
    return []


async def come_back(since: dict[str, Any], stayer: Subscriber, ws_url: str, within: float = DEADLINE) -> Subscriber:
    """The leaver subscribes again with ``since``; it then receives exactly what the stayer got
    after that point, replayed or live, once each. Call it once the stayer has taken everything."""
    back = await Subscriber.join(ws_url, since=since, within=within)
    # Recovered, the replay starts right after ``since``; else (a new epoch) at the current offset.
    position = since if back.subscribed["recovered"] else back.subscribed
    await assert_follows(back, stayer, position)
    return back


async def assert_follows(back: Subscriber, stayer: Subscriber, position: dict[str, Any]) -> None:
    """``back`` receives what ``stayer`` received after ``position``, the same offsets, once each."""
    expected = following(stayer.events, position["epoch"], position["offset"])
    received = await back.take(len(expected))
    assert [(e["epoch"], e["offset"], e["data"]["name"]) for e in received] == [
        (e["epoch"], e["offset"], e["data"]["name"]) for e in expected
    ]
    await back.nothing_more()


# ----------------------------------------------------------------------------- REST and probes


def pet_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{n}" for n in range(count)]


AddPet = Callable[[str, str], Awaitable[Any]]


async def create_pets(url: str, names: list[str], add: AddPet = add_pet) -> None:
    """One pet after the other, each of which must succeed (Redis or not)."""
    for name in names:
        await add(url, name)


async def create_pets_until(url: str, prefix: str, until_time: float, add: AddPet = add_pet) -> list[str]:
    """A pet every WRITE_EVERY s until ``until_time`` (monotonic): writes spread over a fault."""
    names: list[str] = []
    while time.monotonic() < until_time:
        names.append(f"{prefix}-{len(names)}")
        await add(url, names[-1])
        await asyncio.sleep(WRITE_EVERY)  # the pace of the writes during the fault
    return names


async def readyz(server: UvicornServer) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
        response = await http.get("/readyz")
        body: dict[str, Any] = response.json()
        return response.status_code, body


async def broker_check(server: UvicornServer) -> str | None:
    """The ``broker`` check of /readyz, which must answer 200 all along (a Redis outage never stops REST)."""
    status, body = await readyz(server)
    assert status == 200, f"/readyz answered {status} (REST still serves): {body}"
    check: str | None = body.get("checks", {}).get("broker")
    return check


async def metric(server: UvicornServer, name: str) -> float | None:
    """The value of an unlabelled metric on /metrics, None when absent."""
    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def is_connected(server: UvicornServer, value: float) -> bool:
    """``petstore_broker_connected`` has this value."""
    return await metric(server, "petstore_broker_connected") == value


async def observed(server: UvicornServer, key: str) -> float:
    """A count the probe plugin saw (``/_probe/observed``)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
        counts: dict[str, float] = (await http.get("/_probe/observed")).json()["counts"]
    return counts.get(key, 0.0)


async def poll(check: Callable[[], Awaitable[bool]], what: str, within: float) -> None:
    """``until`` for conditions read over HTTP: one try every POLL_EVERY s."""
    await until(check, what, within, every=POLL_EVERY)


def remaining(since: float, seconds: float) -> float:
    """What is left of a deadline of ``seconds`` counted from ``since`` (monotonic)."""
    return since + seconds - time.monotonic()


# -------------------------------------------------------------------------------- the matrix


async def test_fast_restart_without_persistence_delivers_every_event_once_across_the_new_epoch(
    redis: RedisServer, serve: Serve
) -> None:
    """Redis down some 20 ms, back empty: a new epoch, every event once, subscribing within 2 s.

    Twice: once quiet (the listener's gap fill is the first to meet the broken connections),
    once in the middle of a stream of changes.
    """
    server = serve(redis.url)
    stayer, leaver = await pair(server.ws_url)
    before, between, during, after = (pet_names(stage, 10) for stage in ("before", "between", "during", "after"))
    await create_pets(server.url, before)
    await stayer.take(10)
    await leaver.take(10)
    since = leaver.position
    await leaver.leave()

    restarted = await asyncio.to_thread(fast_restart, redis)
    back = await Subscriber.join(server.ws_url, since=since, within=remaining(restarted, 2.0))
    await create_pets(server.url, between)
    writing = asyncio.create_task(create_pets(server.url, during))  # changes around the second restart
    restarted = await asyncio.to_thread(fast_restart, redis)
    await Subscriber.join(server.ws_url, within=remaining(restarted, 2.0))
    await writing
    await create_pets(server.url, after)

    await stayer.take(30)
    assert_once_in_order(stayer, before + between + during + after)
    epochs = list(dict.fromkeys(e["epoch"] for e in stayer.events))
    assert len(epochs) == 3, f"Redis came back empty twice: two new epochs expected, got {epochs}"
    await stayer.nothing_more()
    # History was lost with Redis: the comeback cannot be proven gap-free, so it starts over in
    # the new epoch, and from there gets every event once, across the second restart too.
    assert back.subscribed["recovered"] is False and back.subscribed["epoch"] == epochs[1]
    await assert_follows(back, stayer, back.subscribed)


async def slow_restart(redis: RedisServer, server: UvicornServer, add: AddPet, observe_readiness: bool) -> None:
    """Redis down for 10 s while pets are created; the events come after; readiness follows."""
    stayer, leaver = await pair(server.ws_url)
    await create_pets(server.url, pet_names("before", 5), add)
    await stayer.take(5)
    await leaver.take(5)
    since = leaver.position
    await leaver.leave()
    if observe_readiness:
        await poll(lambda: broker_is(server, "ok", 1.0), "the broker check to say ok before the outage", DEADLINE)

    await asyncio.to_thread(shutdown, redis)
    down = time.monotonic()
    watching = None
    if observe_readiness:
        unavailable = poll(lambda: broker_is(server, "unavailable", 0.0), "the broker check to say unavailable", 5.0)
        watching = asyncio.create_task(unavailable)
    during = await create_pets_until(server.url, "during", down + 10.0, add)  # every write succeeds
    if watching is not None:
        await watching
    await asyncio.to_thread(redis.start)
    up = time.monotonic()
    if observe_readiness:
        await poll(lambda: broker_is(server, "ok", 1.0), "the broker check to say ok again", remaining(up, 5.0))

    after = pet_names("after", 5)
    await create_pets(server.url, after, add)
    await stayer.take(len(during) + len(after))
    assert_once_in_order(stayer, pet_names("before", 5) + during + after)
    await stayer.nothing_more()
    await come_back(since, stayer, server.ws_url)


async def broker_is(server: UvicornServer, check: str, gauge: float) -> bool:
    """/readyz is 200 with ``checks.broker == check``, and ``petstore_broker_connected`` is ``gauge``."""
    return await broker_check(server) == check and await is_connected(server, gauge)


async def test_slow_restart_writes_go_on_their_events_come_after_and_readiness_says_so(
    redis: RedisServer, serve: Serve
) -> None:
    """Redis down 10 s: writes succeed; /readyz stays 200, its broker check and the gauge follow."""
    server = serve(redis.url, plugins=WITH_METRICS)
    await slow_restart(redis, server, add_pet, observe_readiness=True)


STAFF = ("the-staff", "staff-password-1")


@pytest.fixture
def real_env(redis: RedisServer, tmp_path: Path) -> dict[str, str]:
    """The environment of a server with the default plugins, its database migrated, a staff user in it."""
    env = {
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'real.db'}",
        "PETSTORE_REDIS_URL": redis.url,
        "PETSTORE_PLUGINS": DEFAULT_PLUGINS,
        "PETSTORE_JWT_SECRET": "fault-tests-secret-0123456789abcdefghij",
        "PETSTORE_RATE_LIMIT": "10000/minute",
        "PETSTORE_ENV": "test",
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
    }
    for argv in (["migrate"], ["users", "create", STAFF[0], "--password", STAFF[1], "--role", "staff"]):
        done = subprocess.run(
            [str(PETSTORE), *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"petstore {argv[0]} failed:\n{done.stdout}{done.stderr}"
    return env


async def test_slow_restart_with_the_default_plugins_a_logged_in_staff_member_goes_on_creating_pets(
    redis: RedisServer, real_env: dict[str, str], tmp_path: Path
) -> None:
    """The same outage with the real auth, rate limit and metrics plugins: a staff member who
    logged in before it creates pets during it, and every one of them is an event after it."""
    with UvicornServer(env=real_env, cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
            login = await http.post("/api/v3/auth/token", data={"username": STAFF[0], "password": STAFF[1]})
            assert login.status_code == 200, login.text
            bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}

            async def add(url: str, name: str) -> None:
                response = await http.post("/api/v3/pet", json={"name": name, "photoUrls": []}, headers=bearer)
                assert response.status_code == 200, f"creating {name} answered {response.status_code}: {response.text}"

            try:
                await slow_restart(redis, server, add, observe_readiness=False)
            finally:
                await close_subscribers()


async def test_restart_with_aof_persistence_recovers_everyone_in_the_same_epoch(
    aof_redis: RedisServer, serve: Serve
) -> None:
    """Redis restarted with its append-only file: nothing is lost, so no new epoch, and a
    comeback with ``since`` is ``recovered: true``."""
    server = serve(aof_redis.url)
    stayer, leaver = await pair(server.ws_url)
    before, during, after = pet_names("before", 10), pet_names("during", 10), pet_names("after", 10)
    await create_pets(server.url, before)
    await stayer.take(10)
    await leaver.take(10)
    since = leaver.position
    await leaver.leave()

    writing = asyncio.create_task(create_pets(server.url, during))
    await asyncio.to_thread(fast_restart, aof_redis)
    await writing
    await create_pets(server.url, after)

    await stayer.take(20)
    assert_once_in_order(stayer, before + during + after)
    assert {e["epoch"] for e in stayer.events} == {stayer.subscribed["epoch"]}, "no new epoch: nothing was lost"
    await stayer.nothing_more()
    back = await come_back(since, stayer, server.ws_url)
    assert back.subscribed["recovered"] is True and back.subscribed["epoch"] == since["epoch"]


async def test_frozen_redis_delivers_everything_once_after_it_thaws(redis: RedisServer, serve: Serve) -> None:
    """Redis stopped with SIGSTOP for 8 s while pets are created, then SIGCONT."""
    server = serve(redis.url)
    stayer, leaver = await pair(server.ws_url)
    before, after = pet_names("before", 5), pet_names("after", 5)
    await create_pets(server.url, before)
    await stayer.take(5)
    await leaver.take(5)
    since = leaver.position
    await leaver.leave()

    with frozen(redis):
        during = await create_pets_until(server.url, "during", time.monotonic() + 8.0, add_pet)
    await create_pets(server.url, after)

    await stayer.take(len(during) + len(after))
    assert_once_in_order(stayer, before + during + after)
    assert {e["epoch"] for e in stayer.events} == {stayer.subscribed["epoch"]}
    await stayer.nothing_more()
    back = await come_back(since, stayer, server.ws_url)
    assert back.subscribed["recovered"] is True


async def test_a_silent_network_to_redis_is_noticed_by_the_watchdog_and_delivery_resumes_after(
    redis: RedisServer, proxy: TcpProxy, serve: Serve
) -> None:
    """12 s of a network that forwards nothing and closes nothing (no FIN, no RST)."""
    server = serve(proxy.url_for(redis.url), plugins=WITH_METRICS)
    stayer, leaver = await pair(server.ws_url)
    before, after = pet_names("before", 5), pet_names("after", 5)
    await create_pets(server.url, before)
    await stayer.take(5)
    await leaver.take(5)
    since = leaver.position
    await leaver.leave()
    reconnects = await observed(server, "broker.reconnected")
    await poll(lambda: is_connected(server, 1.0), "the listener to say it delivers", DEADLINE)

    async def noticed() -> bool:
        """The listener gave its connection up: it says so, or it has reconnected already."""
        if await is_connected(server, 0.0):
            return True
        _, body = await readyz(server)
        if body.get("checks", {}).get("broker") == "unavailable":
            return True
        return await observed(server, "broker.reconnected") > reconnects

    proxy.silence()
    silent = time.monotonic()
    # The watchdog pings a connection quiet for WATCHDOG_SECONDS and gives up WATCHDOG_SECONDS
    # later, reading in steps of at most 1 s: its bound, plus a poll. The silence lasts until then.
    bound = 2 * WATCHDOG_SECONDS + 2 * 1.0 + POLL_EVERY
    watching = asyncio.create_task(poll(noticed, "the watchdog to notice the silence", bound))
    during = await create_pets_until(server.url, "during", silent + 12.0, add_pet)
    await watching
    proxy.resume()
    await poll(lambda: is_connected(server, 1.0), "the listener to deliver again", DEADLINE)
    await create_pets(server.url, after)

    await stayer.take(len(during) + len(after))
    assert_once_in_order(stayer, before + during + after)
    assert {e["epoch"] for e in stayer.events} == {stayer.subscribed["epoch"]}
    await stayer.nothing_more()
    back = await come_back(since, stayer, server.ws_url)
    assert back.subscribed["recovered"] is True


async def test_a_connection_reset_in_the_middle_of_a_relay_pipeline_loses_and_doubles_nothing(
    redis: RedisServer, proxy: TcpProxy, serve: Serve
) -> None:
    """The relay publishes a batch as one pipeline of script calls; the connection is reset after
    Redis has run the first of them and before the second arrives whole. The retry publishes
    the batch again: the first must not go out twice, the others must go out."""
    server = serve(proxy.url_for(redis.url))
    stayer, leaver = await pair(server.ws_url)
    before, after = pet_names("before", 5), pet_names("after", 5)
    await create_pets(server.url, before)  # the scripts are loaded by now
    await stayer.take(5)
    await leaver.take(5)
    since = leaver.position
    await leaver.leave()

    # Each pet is two outbox rows (pet.created, inventory.changed), so every batch is a pipeline
    # of at least two calls of the publish script; cut before its second call.
    script_call = b"EVALSHA\r\n$40\r\n" + hashlib.sha1(PUBLISH.encode()).hexdigest().encode()
    during: list[str] = []
    for burst in range(3):
        trigger = proxy.reset_on(script_call, "to_server", occurrence=2)
        names = pet_names(f"burst{burst}", 3)
        await asyncio.gather(*(add_pet(server.url, name) for name in names))
        during += names
        await until(trigger.fired.is_set, "the reset in the middle of a pipeline", DEADLINE)
        assert trigger.forwarded, "the cut fell between two pipelines, not inside one"
    await create_pets(server.url, after)

    received = await stayer.take(len(during) + len(after))
    assert Counter(names_of(received)) == Counter(during + after), "each pet's event once"
    assert names_of(received)[-len(after) :] == after
    assert_contiguous(stayer.events, stayer.subscribed["offset"] + 1)
    assert {e["epoch"] for e in stayer.events} == {stayer.subscribed["epoch"]}
    await stayer.nothing_more()
    back = await come_back(since, stayer, server.ws_url)
    assert back.subscribed["recovered"] is True
