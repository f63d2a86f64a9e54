"""Redis Sentinel rows of the fault matrix (SPEC §1 ``redis+sentinel://``, §3, §6): the primary
crashes (SIGKILL) and the sentinels promote its replica; petstore follows by itself.

Each test has a sentinel set of its own (:class:`tests.services.sentinel.RedisSentinelSet`: a
primary, one replica, three sentinels with a quorum of 2, down after 1 s) and real petstore
instances (uvicorn subprocesses, two unless one is enough) sharing one SQLite file, given the
set's ``redis+sentinel://`` URL. Every wait has a deadline; no sleep stands in for a condition.

Two faults: the primary killed while the replica is in sync, and the primary killed while the
replica is behind (frozen with SIGSTOP, its link cut from the primary's side), so that the
promoted replica lacks events subscribers already received.

What must hold across the failover:

- every pet committed over REST is in the database, and each subscriber either received its
  event or was told it may have missed some: ``recovered: false`` when it subscribed again, or
  events in a new epoch. Never a silent gap: within an epoch the offsets a subscriber sees rise
  by one, an epoch once left never comes back, and no pet is missing from an epoch-less stream;
- writes after the promotion succeed and their events reach the subscribers of both instances;
- a token revoked on one instance after the promotion is refused by the other at once (its
  revocation pub/sub follows the failover), and the rate limiter counts in the new primary again
  (RateLimit headers, a shared budget, 429 past it) instead of failing open for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest

from petstore import db, logs
from petstore.api.users import create_user_row
from petstore.config import Settings
from petstore.models import Role, UserBody
from tests.fakes import create_schema
from tests.faults.redis import frozen
from tests.faults.test_redis_faults import (
    DEFAULT_PLUGINS,
    EVENT_WAIT,
    FAKE_PLUGINS,
    STAFF,
    Subscriber,
    close_subscribers,
    poll,
    readyz,
)
from tests.plugins.harness import create_tables
from tests.realtime.support import DEADLINE, add_pet, staff_headers
from tests.services import DEFAULT_APP_COMMAND, ServiceError, UvicornServer, wait_until
from tests.services.sentinel import RedisSentinelSet, info_fields, resp_command

pytestmark = [pytest.mark.redis, pytest.mark.process]

#: The stream of changes around the crash: one pet every WRITE_EVERY s, the primary killed after
#: KILL_AFTER of them; it goes on through the outage until AFTER_PROMOTION pets past the promotion,
#: STREAM_MAX at most (a bound, whatever the sentinels do).
WRITE_EVERY = 0.25
KILL_AFTER = 4
AFTER_PROMOTION = 2
STREAM_MAX = 60
#: From the crash to every sentinel naming the replica: down after 1 s, the vote, the promotion.
PROMOTION_WAIT = 20.0
#: A subscriber is quiet this long after its last expected event: nothing else was on its way.
QUIET = 1.0
#: The revocation poll of the auth plugin in the auth test: longer than the test, so that only
#: pub/sub (or the poll its subscriber makes on reconnecting) can carry a revocation in time.
LONG_POLL_SECONDS = 120
#: "At once" for a revocation published on one instance to be applied on the other.
AT_ONCE = 3.0

Serve = Callable[..., list[UvicornServer]]


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture
def sentinel_set() -> Iterator[RedisSentinelSet]:
    """A fresh primary, replica and three sentinels, ready for a failover; all stopped at the end."""
    with RedisSentinelSet() as sentinels:
        yield sentinels


#: The auth test's set wants passwords, with characters a URL must escape: the servers' in the
#: URL's user-info, the sentinels' in its ``sentinel_password`` option.
REDIS_PASSWORD = "redis-pw@with:odd/chars"
SENTINEL_PASSWORD = "sentinel-pw@also&odd=chars"


@pytest.fixture
def protected_sentinel_set() -> Iterator[RedisSentinelSet]:
    """A sentinel set whose servers and sentinels each require a password."""
    with RedisSentinelSet(password=REDIS_PASSWORD, sentinel_password=SENTINEL_PASSWORD) as sentinels:
        yield sentinels


@pytest.fixture
def log_config(tmp_path: Path) -> Path:
    """``petstore serve``'s logging (INFO, one handler for every logger), for uvicorn run directly:
    the plugins' INFO lines (the revocation subscriber's) land in the server's log."""
    path = tmp_path / "log-config.json"
    # The formatter and filter classes go by their dotted names, which dictConfig takes as well.
    path.write_text(json.dumps(logs.config("text", "info"), default=lambda cls: f"{cls.__module__}.{cls.__qualname__}"))
    return path


def app_command(log_config: Path) -> list[str]:
    return [*DEFAULT_APP_COMMAND, "--log-config", str(log_config), "--no-access-log"]  # as `petstore serve`


@pytest.fixture
def serve(tmp_path: Path, log_config: Path) -> Iterator[Serve]:
    """``serve(redis_url, count=2, plugins=..., **env)``: that many started servers, all on one SQLite file."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}"
    asyncio.run(create_schema(database_url))
    servers: list[UvicornServer] = []

    def start(redis_url: str, count: int = 2, plugins: str = FAKE_PLUGINS, **env: str) -> list[UvicornServer]:
        started = [
            UvicornServer(
                env={
                    "PETSTORE_DATABASE_URL": database_url,
                    "PETSTORE_REDIS_URL": redis_url,
                    "PETSTORE_PLUGINS": plugins,
                    "PETSTORE_ENV": "test",
                    "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
                    **env,
                },
                command=app_command(log_config),
            )
            for _ in range(count)
        ]
        servers.extend(started)
        return start_together(started)

    try:
        yield start
    finally:
        for server in servers:
            server.close()


@pytest.fixture(autouse=True)
async def _subscribers_closed_first(serve: Serve) -> AsyncIterator[None]:
    """Clients close in the test's event loop, before the servers stop."""
    yield
    await close_subscribers()


def start_together(servers: Sequence[UvicornServer]) -> list[UvicornServer]:
    """Start the servers at the same time (each takes seconds to import the app); the first
    failure is raised once all have tried. The caller stops them."""
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = [pool.submit(server.start) for server in servers]
    return [future.result() for future in futures]


def logs_of(*servers: UvicornServer, sentinels: RedisSentinelSet | None = None, lines: int = 30) -> str:
    """The tails of the servers' (and the sentinel set's) logs, for a failure message."""
    parts = [f"--- petstore on port {server.port}:\n{server.logtail(lines)}" for server in servers]
    if sentinels is not None:
        parts.append(sentinels.logtails(10))
    return "\n".join(parts)


# ------------------------------------------------------------------------- the helper itself


def master_address_by_cli(port: int) -> list[str]:
    """``redis-cli -p PORT SENTINEL get-master-addr-by-name petstore``: what an operator would see."""
    done = subprocess.run(
        ["redis-cli", "-p", str(port), "SENTINEL", "get-master-addr-by-name", "petstore"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.split()


async def test_the_sentinel_set_promotes_the_replica_when_the_primary_is_killed(
    sentinel_set: RedisSentinelSet,
) -> None:
    """The helper: a key written to the primary is on the replica; SIGKILL the primary, and every
    sentinel names the replica, which answers as a primary with the key and takes writes."""
    primary, replica = sentinel_set.primary, sentinel_set.replica
    assert sentinel_set.url == (
        "redis+sentinel://" + ",".join(f"127.0.0.1:{port}" for port in sentinel_set.sentinel_ports) + "/petstore"
    )
    assert sentinel_set.current_primary() is primary
    primary.command("SET", "before-the-crash", "1")
    # On the replica before the crash (WAIT on a new connection that wrote nothing proves nothing).
    wait_until(lambda: replica.command("GET", "before-the-crash") == b"1", PROMOTION_WAIT, "the key on the replica")

    assert sentinel_set.kill_primary() is primary
    assert not primary.running
    await asyncio.to_thread(sentinel_set.wait_promoted, PROMOTION_WAIT)

    assert sentinel_set.current_primary() is replica
    assert info_fields(replica.command("INFO", "replication"))["role"] == "master"
    assert replica.command("GET", "before-the-crash") == b"1"
    assert replica.command("SET", "after-the-promotion", "1") == b"OK"
    # redis-cli, as an operator would ask: the sentinels agree on the new address.
    for port in sentinel_set.sentinel_ports:
        assert await asyncio.to_thread(master_address_by_cli, port) == ["127.0.0.1", str(replica.port)]
    reply = resp_command(sentinel_set.sentinel_ports[0], "SENTINEL", "REPLICAS", "petstore")
    assert isinstance(reply, list)


# -------------------------------------------------------------------- a stream across a crash


async def add_pets(servers: Sequence[UvicornServer], names: Sequence[str], pace: float = 0.0) -> list[dict[str, Any]]:
    """One pet after the other, alternating between the servers; each must succeed (Redis or not)."""
    pets = []
    for n, name in enumerate(names):
        pets.append(await add_pet(servers[n % len(servers)].url, name))
        if pace:
            await asyncio.sleep(pace)  # the pace of the stream, not a synchronisation
    return pets


async def stream_with_a_crash(
    servers: Sequence[UvicornServer], sentinels: RedisSentinelSet
) -> tuple[list[dict[str, Any]], float, float]:
    """Pets named ``stream-N``, one every WRITE_EVERY s, alternating between the servers; the
    primary SIGKILLed after KILL_AFTER of them, the stream going on through the outage and past
    the promotion. Returns the pets, and when (monotonic) the primary died and the replica was
    promoted (every sentinel names it)."""
    pets = await add_pets(servers, [f"stream-{n}" for n in range(KILL_AFTER)], WRITE_EVERY)
    await asyncio.to_thread(sentinels.kill_primary)
    killed = time.monotonic()
    promotion = asyncio.create_task(asyncio.to_thread(sentinels.wait_promoted, PROMOTION_WAIT))
    past = 0
    while past < AFTER_PROMOTION and len(pets) < STREAM_MAX:
        pets += await add_pets(servers[len(pets) % 2 :], [f"stream-{len(pets)}"])
        if promotion.done():
            past += 1
        await asyncio.sleep(WRITE_EVERY)  # the pace of the stream, not a synchronisation
    await promotion  # raises TimeoutError (with the sentinels' logs) if the promotion never came
    return pets, killed, time.monotonic()


async def take_until_seen(subscriber: Subscriber, wanted: set[str], within: float) -> None:
    """Read events until every name in ``wanted`` has been seen, then until QUIET s pass without
    one; each read within EVENT_WAIT, the whole within ``within``. A timeout says what is missing."""
    deadline = time.monotonic() + within
    missing = wanted - set(names_in(subscriber.events))
    while missing:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"still missing after {within:g}s: {sorted(missing)}; got {names_in(subscriber.events)}")
        try:
            message = await subscriber.client.recv(within=min(EVENT_WAIT, left))
        except TimeoutError:
            continue
        assert message["type"] == "event", message
        subscriber.events.append(message)
        missing.discard(message["data"].get("name"))
    while True:  # what is still on its way (a duplicate, say) is read too, and judged below
        try:
            message = await subscriber.client.recv(within=QUIET)
        except TimeoutError:
            return
        assert message["type"] == "event", message
        subscriber.events.append(message)


def names_in(events: Sequence[dict[str, Any]]) -> list[str]:
    return [event["data"].get("name", "") for event in events]


def assert_no_silent_gap(start: dict[str, Any], events: Sequence[dict[str, Any]], created: Sequence[str]) -> None:
    """From ``start`` (``{"epoch", "offset"}``) on, the stream never lies about what it left out:

    - within an epoch, offsets rise by one from where the subscriber stood; a new epoch starts
      at 1, and an epoch once left never comes back;
    - no pet twice within one epoch;
    - every pet of ``created`` is among the events, unless an epoch change told the subscriber
      that history was lost (then the client starts over, from REST).
    """
    epoch, last, left_behind = start["epoch"], start["offset"], set[str]()
    per_epoch: dict[str, Counter[str]] = {}
    for event in events:
        if event["epoch"] != epoch:
            assert event["epoch"] not in left_behind, f"epoch {event['epoch']} came back: {event}"
            left_behind.add(epoch)
            epoch, last = event["epoch"], 0
        assert event["offset"] == last + 1, (
            f"offset {event['offset']} after {last} in epoch {epoch}: a gap or a repeat the client cannot see "
            f"({[(e['epoch'][:8], e['offset'], e['data'].get('name')) for e in events]})"
        )
        last = event["offset"]
        per_epoch.setdefault(epoch, Counter())[event["data"].get("name", "")] += 1
    for name_epoch, counts in per_epoch.items():
        twice = sorted(name for name, count in counts.items() if count > 1)
        assert not twice, f"delivered twice in epoch {name_epoch}: {twice}"
    missing = sorted(set(created) - set(names_in(events)))
    if missing:
        assert left_behind, f"missing without a new epoch (a silent gap): {missing}"


async def names_in_database(server: UvicornServer) -> set[str]:
    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
        response = await http.get(
            "/api/v3/pet/findByStatus", params={"status": "available", "limit": 1000}, headers=staff_headers()
        )
        assert response.status_code == 200, response.text
        return {pet["name"] for pet in response.json()}


async def broker_ok(server: UvicornServer) -> bool:
    status, body = await readyz(server)
    return status == 200 and body.get("checks", {}).get("broker") == "ok"


async def test_the_primary_killed_mid_stream_loses_nothing_silently_and_the_brokers_follow_the_failover(
    sentinel_set: RedisSentinelSet, serve: Serve
) -> None:
    """A stream of pets over both instances; the primary SIGKILLed in its middle; the replica
    promoted. Subscribers: one per instance that stays connected, and one that leaves before the
    crash and comes back with ``since`` (to the other instance) after the promotion."""
    a, b = serve(sentinel_set.url)
    servers = (a, b)
    stay_a = await Subscriber.join(a.ws_url)
    stay_b = await Subscriber.join(b.ws_url)
    leaver = await Subscriber.join(a.ws_url)
    before = [f"before-{n}" for n in range(4)]

    committed = await add_pets(servers, before)
    for subscriber in (stay_a, stay_b, leaver):
        await subscriber.take(len(before))
        assert names_in(subscriber.events) == before
    since = leaver.position
    await leaver.leave()

    try:
        pets, killed, promoted = await stream_with_a_crash(servers, sentinel_set)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs_of(a, b)}")
    committed += pets
    stream = [pet["name"] for pet in pets]
    print(f"{len(stream)} pets in the stream, the promotion {promoted - killed:.1f}s after the crash")

    await after_the_failover(sentinel_set, servers, [stay_a, stay_b], since, before, stream, committed, killed)


async def after_the_failover(
    sentinels: RedisSentinelSet,
    servers: Sequence[UvicornServer],
    stayers: Sequence[Subscriber],
    since: dict[str, Any],
    seen_by_the_leaver: Sequence[str],
    missed_by_the_leaver: Sequence[str],
    committed: list[dict[str, Any]],
    killed: float,
) -> None:
    """Once the replica is promoted: the brokers say they deliver again; the leaver comes back
    with ``since`` to the second instance; pets are written over both; then every promise is checked.

    ``seen_by_the_leaver`` are the pets it took before leaving, ``missed_by_the_leaver`` those
    created since (before the promotion); ``committed`` every pet REST said it created so far.
    """
    a, b = servers
    begun = time.monotonic()
    try:
        for server in servers:
            await poll(functools.partial(broker_ok, server), f"the broker of {server.url} to be ok", DEADLINE)
    except TimeoutError as exc:
        pytest.fail(f"{exc} ({begun - killed:.1f}s after the crash)\n{logs_of(a, b, sentinels=sentinels)}")
    back = await Subscriber.join(b.ws_url, since=since, within=DEADLINE)
    after = [f"after-{n}" for n in range(6)]
    committed += await add_pets(servers, after)
    created = [*seen_by_the_leaver, *missed_by_the_leaver, *after]

    # Shown with a failure (and with -s): what each subscriber went through.
    print(f"checks begun {begun - killed:.1f}s after the crash; comeback {back.subscribed}")

    # Every pet committed over REST is in the database.
    assert [pet["name"] for pet in committed] == created
    assert set(created) <= await names_in_database(a)

    # Every subscriber, on either instance, reads until the writes after the promotion have reached it.
    everyone = [*stayers, back]
    try:
        await asyncio.gather(*(take_until_seen(s, set(after), within=EVENT_WAIT + 10.0) for s in everyone))
    except TimeoutError as exc:
        pytest.fail(f"{exc} (comeback subscribed: {back.subscribed})\n{logs_of(a, b)}")
    for label, subscriber in zip(["stayer"] * len(stayers) + ["back"], everyone, strict=True):
        print(label, [(e["epoch"][:8], e["offset"], e["data"]["name"]) for e in subscriber.events])

    # The stayers: nothing left out silently.
    for subscriber in stayers:
        assert_no_silent_gap(subscriber.subscribed, subscriber.events, created)

    # The comeback: recovered (the missed events replayed, in order) or told to start over.
    subscribed = back.subscribed
    if subscribed["recovered"]:
        assert subscribed["epoch"] == since["epoch"], subscribed
        assert_no_silent_gap(since, back.events, [*missed_by_the_leaver, *after])
    else:
        # Told to start over: whatever it missed it reads from REST (in the database, checked
        # above); from its new position on nothing may be left out silently.
        assert_no_silent_gap(subscribed, back.events, after)

    # One stream whatever the instance: the writes after the promotion at the same epoch and offset for all.
    def placed(subscriber: Subscriber) -> dict[str, tuple[str, int]]:
        return {e["data"]["name"]: (e["epoch"], e["offset"]) for e in subscriber.events if e["data"]["name"] in after}

    assert all(placed(subscriber) == placed(back) for subscriber in stayers), [placed(s) for s in everyone]


async def test_a_replica_promoted_behind_the_primary_misleads_no_subscriber(
    sentinel_set: RedisSentinelSet, serve: Serve
) -> None:
    """The replica frozen (SIGSTOP) while pets are created and delivered, the primary killed, the
    replica thawed and promoted: it lacks the last events the subscribers received. The
    brokers must not reuse those offsets for other events (a new epoch says history was lost),
    and the leaver, whose ``since`` the new primary never saw, cannot be told ``recovered: true``."""
    a, b = serve(sentinel_set.url)
    servers = (a, b)
    stay_a, stay_b, leaver = [await Subscriber.join(server.ws_url) for server in (a, b, a)]
    before = [f"before-{n}" for n in range(4)]
    unreplicated = [f"unreplicated-{n}" for n in range(4)]
    committed = await add_pets(servers, before)
    for subscriber in (stay_a, stay_b, leaver):
        await subscriber.take(len(before))

    with frozen(sentinel_set.replica):
        # The link broken from the primary's side: what follows never reaches the replica (data
        # already sent would, from its socket buffer, once it is thawed).
        sentinel_set.primary.command("CLIENT", "KILL", "TYPE", "replica")
        committed += await add_pets(servers, unreplicated)
        for subscriber in (stay_a, stay_b, leaver):
            await subscriber.take(len(unreplicated))  # delivered from the primary alone
        since = leaver.position
        await leaver.leave()
        await asyncio.to_thread(sentinel_set.kill_primary)
    killed = time.monotonic()
    during = [f"during-{n}" for n in range(6)]
    committed += await add_pets(servers, during, WRITE_EVERY)
    try:
        await asyncio.to_thread(sentinel_set.wait_promoted, max(1.0, killed + PROMOTION_WAIT - time.monotonic()))
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs_of(a, b)}")
    # The scenario holds: the promoted replica's history of the room lacks what was delivered last.
    history = sentinel_set.replica.query("XRANGE", "petstore:{pets}:log", "-", "+")
    assert isinstance(history, list)
    assert not [entry for entry in history if b"unreplicated-" in repr(entry).encode()], history

    await after_the_failover(
        sentinel_set, servers, [stay_a, stay_b], since, [*before, *unreplicated], during, committed, killed
    )
    assert all(len({e["epoch"] for e in s.events}) > 1 for s in (stay_a, stay_b)), "history was lost: a new epoch"


async def test_a_comeback_after_a_promotion_behind_the_primary_that_nobody_watched_is_not_told_recovered(
    sentinel_set: RedisSentinelSet, serve: Serve
) -> None:
    """As above, but the only subscriber leaves before the crash, so no instance watches the room
    through the failover. New events on the promoted replica take the offsets of the delivered
    ones it lacks; coming back with ``since`` (whose offset those new events pass), the client
    must not be told ``recovered: true`` with a replay that skips them."""
    (a,) = servers = serve(sentinel_set.url, count=1)  # one instance is enough for it
    leaver = await Subscriber.join(a.ws_url)
    before = [f"before-{n}" for n in range(4)]
    unreplicated = [f"unreplicated-{n}" for n in range(4)]
    committed = await add_pets(servers, before)
    await leaver.take(len(before))

    with frozen(sentinel_set.replica):
        sentinel_set.primary.command("CLIENT", "KILL", "TYPE", "replica")  # as in the test above
        committed += await add_pets(servers, unreplicated)
        await leaver.take(len(unreplicated))
        since = leaver.position
        await leaver.leave()  # nobody watches the room any more
        await asyncio.to_thread(sentinel_set.kill_primary)
    killed = time.monotonic()
    try:
        await asyncio.to_thread(sentinel_set.wait_promoted, PROMOTION_WAIT)
        for server in servers:
            await poll(functools.partial(broker_ok, server), f"the broker of {server.url} to be ok", DEADLINE)
    except TimeoutError as exc:
        pytest.fail(f"{exc} ({time.monotonic() - killed:.1f}s after the crash)\n{logs_of(a)}")

    # A newcomer (no ``since``) sees the new events go out: more of them than were lost.
    newcomer = await Subscriber.join(a.ws_url)
    during = [f"during-{n}" for n in range(len(unreplicated) + 2)]
    committed += await add_pets(servers, during)
    await take_until_seen(newcomer, set(during), within=EVENT_WAIT + 10.0)
    print("leaver", [(e["epoch"][:8], e["offset"], e["data"]["name"]) for e in leaver.events])
    print("newcomer", newcomer.subscribed, [(e["epoch"][:8], e["offset"], e["data"]["name"]) for e in newcomer.events])

    back = await Subscriber.join(a.ws_url, since=since, within=DEADLINE)
    print("comeback", back.subscribed)
    after = [f"after-{n}" for n in range(3)]
    committed += await add_pets(servers, after)
    await take_until_seen(back, set(after), within=EVENT_WAIT + 10.0)
    print("back", [(e["epoch"][:8], e["offset"], e["data"]["name"]) for e in back.events])

    assert set(before + unreplicated + during + after) <= await names_in_database(a)
    try:
        if back.subscribed["recovered"]:
            assert_no_silent_gap(since, back.events, during + after)
        else:
            assert_no_silent_gap(back.subscribed, back.events, after)
    except AssertionError as exc:
        pytest.fail(f"{exc}\ncomeback {back.subscribed} after {since}\n{logs_of(a)}")


async def test_a_comeback_before_anything_is_published_after_a_lagging_promotion_is_not_told_recovered(
    sentinel_set: RedisSentinelSet, serve: Serve
) -> None:
    """The subscriber leaves; pets are written that only the primary hears of (the replica frozen,
    its link cut); the primary dies and the replica, which lacks them, is promoted. The client comes
    back with ``since`` before any new event: the history cannot prove it missed nothing (it
    missed the four), so SPEC §3 wants ``recovered: false``, not ``true`` with nothing replayed."""
    (a,) = servers = serve(sentinel_set.url, count=1)
    leaver = await Subscriber.join(a.ws_url)
    before = [f"before-{n}" for n in range(4)]
    await add_pets(servers, before)
    await leaver.take(len(before))
    since = leaver.position
    await leaver.leave()

    with frozen(sentinel_set.replica):
        sentinel_set.primary.command("CLIENT", "KILL", "TYPE", "replica")  # as in the tests above
        lost = [f"lost-{n}" for n in range(4)]
        await add_pets(servers, lost)
        # Published on the primary (its room's offset passed ``since``) before it dies.
        await poll(
            lambda: asyncio.to_thread(
                lambda: sentinel_set.primary.command("HGET", "petstore:{pets}:meta", "offset") == b"8"
            ),
            "the lost pets' events to be published on the primary",
            DEADLINE,
        )
        await asyncio.to_thread(sentinel_set.kill_primary)
    try:
        await asyncio.to_thread(sentinel_set.wait_promoted, PROMOTION_WAIT)
        await poll(functools.partial(broker_ok, a), "the broker to be ok", DEADLINE)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs_of(a)}")
    assert sentinel_set.replica.command("HGET", "petstore:{pets}:meta", "offset") == b"4", "the replica lacks them"

    back = await Subscriber.join(a.ws_url, since=since, within=DEADLINE)
    assert back.subscribed["recovered"] is False, (
        f"told recovered over the lost {lost}: {back.subscribed} after {since}\n{logs_of(a)}"
    )
    after = [f"after-{n}" for n in range(3)]
    await add_pets(servers, after)
    await take_until_seen(back, set(after), within=EVENT_WAIT + 10.0)
    assert_no_silent_gap(back.subscribed, back.events, after)


# ---------------------------------------------------------------------- auth and rate limits


async def prepare_accounts(database_url: str) -> None:
    """What ``petstore migrate`` and ``petstore users create`` would make (the core's tables, the
    auth plugin's, a staff user), in this process: two CLI runs would cost seconds each."""
    engine = db.create_engine(Settings(database_url=database_url, plugins=(), env="test"))
    try:
        await create_tables(engine)
        async with db.create_sessionmaker(engine)() as session:
            await create_user_row(session, UserBody(username=STAFF[0], password=STAFF[1]), Role.staff)
            await session.commit()
    finally:
        await engine.dispose()


@pytest.fixture
def real_env(protected_sentinel_set: RedisSentinelSet, tmp_path: Path) -> dict[str, str]:
    """The default plugins on a database with every table and a staff user; a revocation poll too long
    to matter (pub/sub must carry revocations); one route with a small budget."""
    env = {
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'real.db'}",
        "PETSTORE_REDIS_URL": protected_sentinel_set.url,
        "PETSTORE_PLUGINS": DEFAULT_PLUGINS,
        "PETSTORE_JWT_SECRET": "sentinel-tests-secret-0123456789abcdefghij",
        "PETSTORE_JWT_REVOCATION_POLL_SECONDS": str(LONG_POLL_SECONDS),
        "PETSTORE_RATE_LIMIT": "10000/minute",
        "PETSTORE_RATELIMIT_ROUTES": f"GET /api/v3/pet/findByStatus={LIMITED}/minute",
        "PETSTORE_ENV": "test",
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
    }
    asyncio.run(prepare_accounts(env["PETSTORE_DATABASE_URL"]))
    return env


#: The budget of ``GET /api/v3/pet/findByStatus`` in the auth test, per client per minute.
LIMITED = 6
SUBSCRIBED_LINE = "auth: revocation pub/sub subscribed"


def subscriptions(server: UvicornServer) -> int:
    """How often the server's revocation subscriber has (re)subscribed, by its log."""
    return server.log_path.read_text(errors="replace").count(SUBSCRIBED_LINE)


async def login(http: httpx.AsyncClient) -> dict[str, str]:
    response = await http.post("/api/v3/auth/token", data={"username": STAFF[0], "password": STAFF[1]})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_after_the_promotion_revocations_reach_the_other_instance_at_once_and_rate_limits_count_again(
    protected_sentinel_set: RedisSentinelSet, real_env: dict[str, str], tmp_path: Path, log_config: Path
) -> None:
    """The real auth, rate limit and metrics plugins on two instances. After the promotion: a
    logout on A is refused on B at once (the revocation pub/sub of both followed the failover),
    and the limiter answers from the new primary: RateLimit headers, one budget for both
    instances, 429 past it. The set requires passwords: the URL's must reach the servers and
    the sentinels, and neither may show in a log line."""
    sentinel_set = protected_sentinel_set
    with pytest.raises(ServiceError, match=r"NOAUTH|Authentication required"):
        resp_command(sentinel_set.sentinel_ports[0], "PING")  # the sentinels do want a password
    with contextlib.ExitStack() as stack:
        servers = [UvicornServer(env=real_env, cwd=tmp_path, command=app_command(log_config)) for _ in range(2)]
        for server in servers:
            stack.callback(server.close)  # both stop, whatever happens below
        a, b = start_together(servers)
        on_a = httpx.AsyncClient(base_url=a.url, timeout=DEADLINE)
        on_b = httpx.AsyncClient(base_url=b.url, timeout=DEADLINE)
        async with on_a, on_b:
            await poll(lambda: asyncio.to_thread(lambda: subscriptions(b) >= 1), "B to subscribe", DEADLINE)
            bearer = await login(on_a)
            assert (await on_b.get("/api/v3/store/inventory", headers=bearer)).status_code == 200
            limited = await on_a.get("/api/v3/store/inventory")
            assert "RateLimit" in limited.headers, "the limiter counts in Redis before the crash"
            subscribed_before = subscriptions(b)

            await asyncio.to_thread(sentinel_set.kill_primary)
            killed = time.monotonic()
            try:
                await asyncio.to_thread(sentinel_set.wait_promoted, PROMOTION_WAIT)
            except TimeoutError as exc:
                pytest.fail(f"{exc}\n{logs_of(a, b)}")

            print(f"promoted {time.monotonic() - killed:.1f}s after the crash")
            # B's subscriber noticed the crash and subscribed again, on the new primary.
            try:
                await poll(
                    lambda: asyncio.to_thread(lambda: subscriptions(b) > subscribed_before),
                    "B's revocation subscriber to subscribe again",
                    max(1.0, killed + PROMOTION_WAIT + 15.0 - time.monotonic()),
                )
            except TimeoutError as exc:
                pytest.fail(f"{exc}\n{logs_of(b)}")

            print(f"B subscribed again {time.monotonic() - killed:.1f}s after the crash")
            # A token revoked on A after the promotion: refused on B at once.
            bearer = await login(on_a)
            assert (await on_b.get("/api/v3/store/inventory", headers=bearer)).status_code == 200
            assert (await on_a.post("/api/v3/auth/logout", headers=bearer)).status_code in (200, 204)
            logged_out = time.monotonic()
            assert (await on_a.get("/api/v3/store/inventory", headers=bearer)).status_code == 401

            async def refused_on_b() -> bool:
                return (await on_b.get("/api/v3/store/inventory", headers=bearer)).status_code == 401

            try:
                await poll(refused_on_b, "B to refuse the token revoked on A", AT_ONCE)
            except TimeoutError as exc:
                pytest.fail(
                    f"{exc} (its revocation poll is every {LONG_POLL_SECONDS}s: pub/sub did not carry it)\n"
                    f"{logs_of(a, b)}"
                )
            assert time.monotonic() - logged_out < AT_ONCE

            # The limiter counts in the new primary again: headers on ordinary traffic ...
            async def counted_again(http: httpx.AsyncClient) -> bool:
                response = await http.get("/api/v3/store/inventory")
                assert response.status_code == 200, response.text
                return "RateLimit" in response.headers

            for http in (on_a, on_b):
                try:
                    await poll(functools.partial(counted_again, http), "the limiter to count again", DEADLINE)
                except TimeoutError as exc:
                    pytest.fail(f"{exc}: still failing open after the promotion\n{logs_of(a, b)}")

            # ... and one budget for both instances, refused past it.
            fresh = await login(on_b)
            answers = []
            for n in range(LIMITED + 2):
                response = await (on_a if n % 2 else on_b).get(
                    "/api/v3/pet/findByStatus", params={"status": "available"}, headers=fresh
                )
                answers.append((response.status_code, response.headers.get("RateLimit"), response.headers))
                if response.status_code == 429:
                    break
            statuses = [status for status, _, _ in answers]
            assert statuses[-1] == 429, f"never refused past {LIMITED}/minute across A and B: {statuses}"
            assert all(header for _, header, _ in answers), f"a request went uncounted: {answers}"
            assert len(statuses) <= LIMITED + 1, statuses
            assert "Retry-After" in answers[-1][2]

        # Neither password in the servers' logs (read before they stop: their directory goes).
        for server in servers:
            text = server.log_path.read_text(errors="replace")
            for secret in (REDIS_PASSWORD, SENTINEL_PASSWORD):
                for form in (secret, quote(secret, safe=""), urlencode({"p": secret})[2:]):
                    assert form not in text, f"a Redis password in the log of the server on port {server.port}"
