"""Petstore on a Redis Cluster (SPEC §1 ``redis+cluster://``, §3, §6): several instances, one cluster.

Every test runs real petstore instances (``UvicornServer``) sharing one SQLite file, given
``PETSTORE_REDIS_URL=redis+cluster://…`` of a real cluster of redis-server processes
(``tests.services.cluster.RedisClusterSet``, 3 primaries, with a replica each where a test
fails a primary over). The contract the core keeps on a cluster:

- a room ``R`` keeps ``petstore:{R}:meta|log|src`` in one slot, the slot of its shard channel
  ``petstore:{R}:events``, on which its events go out with SPUBLISH (inside the publish script);
- each instance SSUBSCRIBEs, on the shard that owns it, to each room its clients watch, and to
  nothing else;
- the rate limiter's login check (a username key and an address key, in different slots), token
  revocation between instances and stream tickets work as on one server;
- a slot moved to another primary, or a primary failed over to its replica, loses nothing a
  subscriber can miss silently: every event comes, in order, or a new epoch says history was lost.

Watched pet rooms are chosen by the slot of their channel so that the three shards each own one.
Pet changes go over REST (``POST /pet/{id}?name=…&status=…``, one ``pet.updated`` in ``pets`` and in
``pet:{id}``, one ``inventory.changed``), paced, alternating between the instances. Every wait has
a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from petstore import db
from petstore.api.users import create_user_row
from petstore.config import Settings
from petstore.models import Role, UserBody
from plugins.auth import schema as auth_schema
from tests.fakes import create_schema
from tests.realtime.support import DEADLINE, Client, staff_headers, until, ws_client
from tests.realtime.test_realtime_cluster import assert_contiguous
from tests.services import UvicornServer, wait_until
from tests.services.cluster import ClusterNode, RedisClusterSet, keyslot, shard_channels, shard_numsub

pytestmark = [pytest.mark.redis, pytest.mark.process]

API = "/api/v3"
FAKE_PLUGINS = "tests.fakes,tests.realtime.support:probe"
REAL_PLUGINS = "plugins.auth,plugins.ratelimit,tests.realtime.support:probe"
SECRET = "cluster-tests-secret-0123456789abcdefghijkl"
#: Each event is waited for this long: after a failover the first waits out the relay's backoff.
EVENT_WAIT = 20.0
#: The pace of the stream of changes (a pace, not a synchronisation).
WRITE_EVERY = 0.03
POLL_EVERY = 0.05
STATUSES = ("available", "pending", "sold")


def channel(room: str) -> str:
    """A room's shard channel; its keys ``petstore:{room}:…`` hash to the same slot."""
    return f"petstore:{{{room}}}:events"


def room_slot(room: str) -> int:
    return keyslot(channel(room))


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[RedisClusterSet]:
    """3 primaries, no replicas, for the tests that change no topology (emptied before each)."""
    with RedisClusterSet(3) as cluster:
        yield cluster


@pytest.fixture
def cluster(shared_cluster: RedisClusterSet) -> RedisClusterSet:
    shared_cluster.wait_stable()
    for node in shared_cluster.primaries:
        node.command("FLUSHALL")
    return shared_cluster


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterSet]:
    """3 primaries of the test's own: the test moves a slot."""
    with RedisClusterSet(3) as cluster:
        yield cluster


@pytest.fixture
def replicated_cluster() -> Iterator[RedisClusterSet]:
    """3 primaries with a replica each: the test kills a primary."""
    with RedisClusterSet(3, replicas=True) as cluster:
        yield cluster


@pytest.fixture
def database(tmp_path: Path) -> str:
    """One SQLite file every instance of the test shares, its tables (auth's included) made."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}"
    asyncio.run(create_schema(url))
    return url


Start = Callable[..., list[UvicornServer]]


@pytest.fixture
def instances(database: str, tmp_path: Path) -> Iterator[Start]:
    """``start(redis_url, count=2, plugins=..., **env)``: petstore instances on the shared database."""
    servers: list[UvicornServer] = []

    def start(redis_url: str, count: int = 2, plugins: str = FAKE_PLUGINS, **env: str) -> list[UvicornServer]:
        started = [
            UvicornServer(
                env={
                    "PETSTORE_DATABASE_URL": database,
                    "PETSTORE_REDIS_URL": redis_url,
                    "PETSTORE_PLUGINS": plugins,
                    "PETSTORE_ENV": "test",
                    "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
                    **env,
                }
            )
            for _ in range(count)
        ]
        servers.extend(started)
        # Side by side: each start waits for its /healthz with its own deadline.
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(UvicornServer.start, started))
        return started

    try:
        yield start
    finally:
        for server in servers:
            server.close()


@pytest.fixture
async def clients(instances: Start) -> AsyncIterator[contextlib.AsyncExitStack]:
    """The test's WebSocket clients, closed in its event loop and before the instances stop."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


# ------------------------------------------------------------------------------- subscribers


class Watcher:
    """A WebSocket client on one instance subscribed to some rooms: per room, the ``subscribed``
    answer and the events received."""

    def __init__(self, server: UvicornServer, client: Client) -> None:
        self.server = server
        self.client = client
        self.subscribed: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}

    @classmethod
    async def join(
        cls,
        stack: contextlib.AsyncExitStack,
        server: UvicornServer,
        rooms: Sequence[str],
        since: Mapping[str, dict[str, Any]] | None = None,
    ) -> Watcher:
        client = await stack.enter_async_context(ws_client(server.ws_url, max_queue=None))
        watcher = cls(server, client)
        for n, room in enumerate(rooms):
            request: dict[str, Any] = {"type": "subscribe", "room": room, "id": n}
            if since is not None and room in since:
                request["since"] = since[room]
            answer = await client.request(request, "subscribed")
            assert answer["room"] == room, answer
            watcher.subscribed[room] = answer
            watcher.events[room] = []
        return watcher

    async def take(self, counts: Mapping[str, int], within: float = 60.0) -> None:
        """Read until each room holds ``counts[room]`` events in all (each one within EVENT_WAIT)."""
        deadline = time.monotonic() + within
        while any(len(self.events[room]) < count for room, count in counts.items()):
            left = min(EVENT_WAIT, deadline - time.monotonic())
            try:
                message = await self.client.recv(within=max(0.01, left))
            except TimeoutError:
                have = {room: len(self.events[room]) for room in counts}
                raise AssertionError(
                    f"{self.server.url}: no event for {left:.1f}s; have {have}, want {dict(counts)};"
                    f"\nlog:\n{log_excerpt(self.server)}"
                ) from None
            assert message["type"] == "event", message
            self.events.setdefault(message["room"], []).append(message)

    async def nothing_more(self, within: float = 1.0) -> None:
        with pytest.raises(TimeoutError):
            extra = await self.client.recv(within=within)
            pytest.fail(f"one message too many: {extra}")

    def position(self, room: str) -> dict[str, Any]:
        """Where this watcher stands in a room, as ``since`` for a later subscription."""
        last = self.events[room][-1] if self.events[room] else self.subscribed[room]
        return {"epoch": last["epoch"], "offset": last["offset"]}

    def names(self, room: str) -> list[str]:
        return [event["data"]["name"] for event in self.events[room]]

    def assert_contiguous(self, room: str, *, one_epoch: bool = True) -> None:
        """Offsets rise by one from the subscription on (a new epoch starts again at 1)."""
        events = self.events[room]
        assert events, f"no event in {room}"
        assert_contiguous(events, self.subscribed[room]["offset"] + 1)
        if one_epoch:
            assert {e["epoch"] for e in events} == {self.subscribed[room]["epoch"]}, f"{room}: a new epoch"


def log_excerpt(server: UvicornServer, lines: int = 40) -> str:
    """The last lines of an instance's log that are not access-log lines: warnings, errors, tracebacks."""
    try:
        text = server.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    kept = [line for line in text.splitlines() if not line.startswith("INFO:     127.0.0.1:")]
    return "\n".join(kept[-lines:])


# ----------------------------------------------------------------------------------- REST


class Store:
    """The pets of a test, changed over REST through the instances in turn."""

    def __init__(self, servers: Sequence[UvicornServer]) -> None:
        self.servers = list(servers)
        self.http = [httpx.AsyncClient(base_url=s.url, timeout=DEADLINE, headers=staff_headers()) for s in servers]
        self.status: dict[int, str] = {}
        self.names: dict[int, list[str]] = {}  # each pet's updates, in order
        self.current: dict[int, str] = {}  # each pet's name as last written
        self.turn = 0

    async def aclose(self) -> None:
        for http in self.http:
            await http.aclose()

    def _next(self) -> httpx.AsyncClient:
        self.turn += 1
        return self.http[self.turn % len(self.http)]

    async def add(self, name: str) -> int:
        response = await self._next().post(f"{API}/pet", json={"name": name, "photoUrls": []})
        assert response.status_code == 200, response.text
        pet: dict[str, Any] = response.json()
        self.status[pet["id"]] = pet["status"]
        self.names[pet["id"]] = []
        self.current[pet["id"]] = name
        return int(pet["id"])

    async def update(self, pet_id: int, name: str) -> None:
        """A new name and the next status: ``pet.updated`` in two rooms, ``inventory.changed`` in one."""
        status = STATUSES[(STATUSES.index(self.status[pet_id]) + 1) % len(STATUSES)]
        response = await self._next().post(f"{API}/pet/{pet_id}", params={"name": name, "status": status})
        assert response.status_code == 200, f"updating pet {pet_id}: {response.status_code} {response.text}"
        self.status[pet_id] = status
        self.names[pet_id].append(name)
        self.current[pet_id] = name

    async def stream(self, pet_ids: Sequence[int], prefix: str, count: int) -> list[str]:
        """``count`` updates, paced, round-robin over the pets; the names, in order."""
        names = []
        for n in range(count):
            names.append(f"{prefix}-{n}")
            await self.update(pet_ids[n % len(pet_ids)], names[-1])
            await asyncio.sleep(WRITE_EVERY)  # the pace of the stream
        return names

    def inventory(self) -> dict[str, int]:
        counts = Counter(self.status.values())
        return {status: counts.get(status, 0) for status in STATUSES}

    async def stored_names(self) -> dict[int, str]:
        """Each pet's name as the database has it now."""
        found = {}
        for pet_id in self.status:
            response = await self.http[0].get(f"{API}/pet/{pet_id}")
            assert response.status_code == 200, response.text
            found[pet_id] = response.json()["name"]
        return found


@pytest.fixture
async def store(instances: Start) -> AsyncIterator[Callable[[Sequence[UvicornServer]], Store]]:
    made: list[Store] = []

    def make(servers: Sequence[UvicornServer]) -> Store:
        made.append(Store(servers))
        return made[-1]

    yield make
    for one in made:
        await one.aclose()


async def probe(server: UvicornServer) -> dict[str, dict[str, float]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
        body: dict[str, dict[str, float]] = (await http.get("/_probe/observed")).json()
        return body


async def poll(check: Callable[[], Awaitable[bool] | bool], what: str, within: float = DEADLINE) -> None:
    """``until`` at this suite's pace: one try every POLL_EVERY s."""
    await until(check, what, within, every=POLL_EVERY)


async def settled(servers: Sequence[UvicornServer], published: Mapping[str, int], within: float = 30.0) -> None:
    """Wait until the instances together published at least these counts of events (by name),
    and their outboxes are empty: nothing of before goes out after a subscription."""

    async def done() -> bool:
        seen = [await probe(server) for server in servers]
        for event, count in published.items():
            if sum(s["counts"].get(f"event.published|event={event}", 0) for s in seen) < count:
                return False
        return all(s["gauges"].get("outbox.pending", 0) == 0 for s in seen)

    try:
        await poll(done, f"the relays to publish {dict(published)}", within)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last log lines:\n" + "\n".join(log_excerpt(s, 20) for s in servers)) from None


async def pets_on_every_shard(cluster: RedisClusterSet, store: Store, per_shard: int = 1, spare: int = 0) -> list[int]:
    """Create pets until ``per_shard`` of them have their room on each primary, plus ``spare`` more;
    returns the ids, one shard after the other, the spares last."""
    owners = {node.port: node for node in cluster.primaries}
    by_shard: dict[int, list[int]] = {port: [] for port in owners}
    spares: list[int] = []
    for n in range(200):
        pet_id = await store.add(f"pet-{n}")
        port = cluster.primary_for_slot(room_slot(f"pet:{pet_id}")).port
        if len(by_shard[port]) < per_shard:
            by_shard[port].append(pet_id)
        elif len(spares) < spare:
            spares.append(pet_id)
        if all(len(ids) == per_shard for ids in by_shard.values()) and len(spares) == spare:
            return [pet_id for ids in by_shard.values() for pet_id in ids] + spares
    raise AssertionError("200 pets and still a shard without one")


# --------------------------------------------------------------------------- who subscribes where


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of the sockets process ``pid`` holds (from /proc, Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def sharded_subscriptions(node: ClusterNode, server: UvicornServer) -> int:
    """How many shard channels the connections of ``server`` to ``node`` are subscribed to (``ssub``)."""
    assert server.pid is not None
    ports = local_ports(server.pid)
    listing = node.command("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    total = 0
    for line in listing.decode().splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if int(fields["addr"].rsplit(":", 1)[1]) in ports:
            total += int(fields.get("ssub", "0"))
    return total


def expected_channels(cluster: RedisClusterSet, rooms: set[str]) -> dict[int, set[str]]:
    """By primary port: the channels of these rooms whose slot it owns."""
    expected: dict[int, set[str]] = {node.port: set() for node in cluster.primaries}
    for room in rooms:
        expected[cluster.primary_for_slot(room_slot(room)).port].add(channel(room))
    return expected


def assert_no_silent_gap(events: list[dict[str, Any]], sent: list[str], first_offset: int) -> None:
    """Contiguous offsets, nothing twice in an epoch, and whatever of ``sent`` is missing is missing
    where a new epoch begins (the subscriber was told history was lost), never inside one."""
    seen = [(event["epoch"][:8], event["offset"], event["data"]["name"]) for event in events]
    try:
        assert_contiguous(events, first_offset)
    except AssertionError as exc:
        raise AssertionError(f"offsets not contiguous from {first_offset}: {seen}") from exc
    names = [event["data"]["name"] for event in events]
    for epoch in {event["epoch"] for event in events}:
        in_epoch = [event["data"]["name"] for event in events if event["epoch"] == epoch]
        assert len(in_epoch) == len(set(in_epoch)), f"an event twice in epoch {epoch}: {in_epoch}"
    position = {name: n for n, name in enumerate(sent)}
    assert set(names) <= set(sent), f"events nobody sent: {set(names) - set(sent)}"
    previous: dict[str, Any] | None = None
    for event in events:
        index = position[event["data"]["name"]]
        expected_next = 0 if previous is None else position[previous["data"]["name"]] + 1
        if index != expected_next:
            new_epoch = previous is not None and event["epoch"] != previous["epoch"]
            assert new_epoch, (
                f"a silent gap: after {previous and previous['data']['name']} came {event['data']['name']} "
                f"in the same epoch (offsets {previous and previous['offset']} → {event['offset']})"
            )
        previous = event
    assert previous is not None and position[previous["data"]["name"]] == len(sent) - 1, "the last event is missing"


# -------------------------------------------------------------------------------- the helper


def test_the_cluster_helper_routes_moves_and_fails_over_like_redis_cluster() -> None:
    """The service helper itself: slots as Redis computes them, owners as Redis redirects, a slot
    moved with its keys, a killed primary's replica promoted with the data it had."""
    with RedisClusterSet(3, replicas=True) as cluster:
        assert len(cluster.primaries) == 3 and len(cluster.replicas) == 3
        assert cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
        for name in ("petstore:{pet:1}:events", "petstore:{inventory}:meta", "plain", "a{}b", "{x}{y}", "pet:{}}"):
            assert keyslot(name) == cluster.nodes[0].command("CLUSTER", "KEYSLOT", name), name
        key = "petstore:{pet:7}:meta"
        slot = keyslot(key)
        owner = cluster.primary_for_slot(slot)
        owner.command("SET", key, "before")
        other = next(node for node in cluster.primaries if node is not owner)
        with pytest.raises(Exception, match=f"MOVED {slot} 127.0.0.1:{owner.port}"):
            other.command("GET", key)

        assert cluster.migrate_slot(slot, owner, other) == 1
        assert cluster.primary_for_slot(slot) is other and other.command("GET", key) == b"before"
        with pytest.raises(Exception, match=f"MOVED {slot} 127.0.0.1:{other.port}"):
            owner.command("GET", key)

        replica = cluster.replica_of(other)
        # The replica has the moved key once it has read the primary's stream that far (WAIT on a
        # fresh connection that wrote nothing would say nothing about the MIGRATE's key).
        written = int(other.info("replication")["master_repl_offset"])
        wait_until(
            lambda: int(replica.info("replication").get("slave_repl_offset", "0")) >= written,
            DEADLINE,
            "the replica to have the moved key",
        )
        cluster.kill(other)
        cluster.wait_promoted(replica)
        assert cluster.primary_for_slot(slot) is replica and replica.command("GET", key) == b"before"
        assert shard_channels(cluster.primaries) == {node.port: set() for node in cluster.primaries}
    assert not any(node.running for node in cluster.nodes)


# --------------------------------------------------------------------------------- delivery


async def test_every_event_once_in_order_on_both_instances_each_room_on_its_own_shard(
    cluster: RedisClusterSet, instances: Start, clients: contextlib.AsyncExitStack, store: Callable[..., Store]
) -> None:
    a, b = instances(cluster.url)
    pets = store([a, b])
    ids = await pets_on_every_shard(cluster, pets, spare=2)
    watched, lone, unwatched = ids[:3], ids[3], ids[4]
    await settled([a, b], {"pet.created": len(ids), "inventory.changed": len(ids)})
    rooms = ["inventory", "pets", *(f"pet:{pet_id}" for pet_id in watched)]
    on_a, on_b = await Watcher.join(clients, a, rooms), await Watcher.join(clients, b, rooms)
    async with contextlib.AsyncExitStack() as lone_stack:
        alone = await Watcher.join(lone_stack, a, [f"pet:{lone}"])
        everything = {*rooms, f"pet:{lone}"}

        # Each primary has the channels of the watched rooms it owns, no other; one subscription
        # per instance watching a room, on that room's shard.
        def subscriptions_in_place() -> bool:
            return shard_channels(cluster.primaries) == expected_channels(cluster, everything)

        try:
            await poll(subscriptions_in_place, "the shard channels of the watched rooms")
        except TimeoutError:
            pytest.fail(
                f"shard channels {shard_channels(cluster.primaries)}, want {expected_channels(cluster, everything)}"
                f"\nlog of a:\n{log_excerpt(a)}"
            )
        for room in everything:
            owner = cluster.primary_for_slot(room_slot(room))
            want = 1 if room == f"pet:{lone}" else 2
            assert shard_numsub(owner, [channel(room)]) == {channel(room): want}, room
        never = cluster.primary_for_slot(room_slot(f"pet:{unwatched}"))
        assert shard_numsub(never, [channel(f"pet:{unwatched}")]) == {channel(f"pet:{unwatched}"): 0}
        for node in cluster.primaries:
            for server, its_rooms in ((a, everything), (b, set(rooms))):
                want_here = len(expected_channels(cluster, its_rooms)[node.port])
                assert sharded_subscriptions(node, server) == want_here, (node, server.url)

        names = await pets.stream(watched, "update", 30)
        counts = {"pets": 30, "inventory": 30} | {f"pet:{pet_id}": 10 for pet_id in watched}
        for watcher in (on_a, on_b):
            await watcher.take(counts)
            assert watcher.names("pets") == names
            for pet_id in watched:
                assert watcher.names(f"pet:{pet_id}") == pets.names[pet_id]
            for room in rooms:
                watcher.assert_contiguous(room)
            assert watcher.events["inventory"][-1]["data"] == pets.inventory()
        await asyncio.gather(on_a.nothing_more(), on_b.nothing_more(), alone.nothing_more())
    # The lone watcher left: its instance lets go of that room's shard channel.
    lone_owner = cluster.primary_for_slot(room_slot(f"pet:{lone}"))
    await poll(
        lambda: shard_numsub(lone_owner, [channel(f"pet:{lone}")])[channel(f"pet:{lone}")] == 0,
        "the instance to SUNSUBSCRIBE a room nobody watches any more",
    )
    assert shard_channels(cluster.primaries) == expected_channels(cluster, set(rooms))


# ------------------------------------------------------------------------------ auth and limits


async def prepare_staff(database: str, username: str, password: str) -> None:
    engine = db.create_engine(Settings(database_url=database, plugins=(), env="test"))
    try:
        async with engine.begin() as connection:  # the core's tables are there (``database``): auth's
            await connection.run_sync(auth_schema.metadata.create_all)
        async with db.create_sessionmaker(engine)() as session:
            await create_user_row(session, UserBody(username=username, password=password), Role.staff)
            await session.commit()
    finally:
        await engine.dispose()


async def token_of(http: httpx.AsyncClient, username: str, password: str) -> str:
    response = await http.post(f"{API}/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def test_login_limits_revocation_and_stream_tickets_work_across_instances_on_a_cluster(
    cluster: RedisClusterSet, instances: Start, database: str
) -> None:
    staff, password = "the-staff", "a long enough password"
    await prepare_staff(database, staff, password)
    env = {
        "PETSTORE_JWT_SECRET": SECRET,
        "PETSTORE_RATE_LIMIT": "10000/minute",
        # The shared budget of a username is 3 a minute; the fallback (Redis unreachable, each
        # instance on its own) is looser, so a 429 on the 4th attempt is the shared budget's.
        "PETSTORE_RATELIMIT_LOGIN_PER_USER": "3/minute",
        # An hour's budget for the address: its key (which lives until its bucket is full again)
        # is still there when the test looks.
        "PETSTORE_RATELIMIT_LOGIN_PER_IP": "60/hour",
        "PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_USER": "50/minute",
        "PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_IP": "200/minute",
        # Only the revocation feed (Redis pub/sub) can tell the other instance within the test.
        "PETSTORE_JWT_REVOCATION_POLL_SECONDS": "300",
    }
    a, b = instances(cluster.url, plugins=REAL_PLUGINS, **env)
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=DEADLINE) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=DEADLINE) as on_b,
    ):
        # Logins: the username's budget is shared by both instances, its key and the address's
        # in different slots.
        victim = "guess-me"
        user_keys: list[bytes] = []
        ip_keys: list[bytes] = []
        for attempt in range(3):
            http = (on_a, on_b)[attempt % 2]
            response = await http.post(f"{API}/auth/token", data={"username": victim, "password": "wrong"})
            assert response.status_code == 401, f"attempt {attempt}: {response.status_code} {response.text}"
        refused = await on_b.post(f"{API}/auth/token", data={"username": victim, "password": "wrong"})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["RateLimit"].startswith('"login-user"'), refused.headers
        for node in cluster.primaries:
            found = node.command("KEYS", "petstore:rl:*login-*")
            assert isinstance(found, list)
            for key in found:
                assert isinstance(key, bytes)
                (user_keys if b"login-user" in key else ip_keys).append(key)
        assert user_keys and ip_keys, f"login keys in the cluster: {user_keys} {ip_keys}"
        assert {keyslot(k) for k in user_keys} != {keyslot(k) for k in ip_keys}, "the two keys share a slot"

        # Revocation: a token logged out on a is refused by b at once (well within the DB poll).
        token = await token_of(on_a, staff, password)
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await on_b.get(f"{API}/user/{staff}", headers=bearer)).status_code == 200
        assert (await on_a.post(f"{API}/auth/logout", headers=bearer)).status_code == 200
        assert (await on_a.get(f"{API}/user/{staff}", headers=bearer)).status_code == 401

        async def refused_on_b() -> bool:
            return (await on_b.get(f"{API}/user/{staff}", headers=bearer)).status_code == 401

        await poll(refused_on_b, "b to refuse the token a revoked", 5.0)

        # Stream tickets: issued on a, spent once on b.
        token = await token_of(on_a, staff, password)
        issued = await on_a.post(f"{API}/events/ticket", headers={"Authorization": f"Bearer {token}"})
        assert issued.status_code == 200, issued.text
        ticket = issued.json()["ticket"]
        status, first = await first_sse_message(on_b, f"room=orders&ticket={ticket}")
        assert status == 200 and first["type"] == "subscribed" and first["room"] == "orders", first
        status, error = await first_sse_message(on_a, f"room=orders&ticket={ticket}")
        assert status == 401 and "ticket" in error["message"], error

    for server in (a, b):
        log = server.logtail(400)
        assert "CROSSSLOT" not in log and "backend unreachable" not in log, log


async def first_sse_message(http: httpx.AsyncClient, query: str) -> tuple[int, dict[str, Any]]:
    """The status of ``GET /events?query`` and its first message (``subscribed``, or the error)."""
    async with http.stream("GET", f"{API}/events?{query}") as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.json()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                message: dict[str, Any] = json.loads(line.removeprefix("data: "))
                return 200, message
    raise AssertionError("the stream ended before its first message")


# ------------------------------------------------------------------------------- slot migration


async def test_a_watched_rooms_slot_moved_to_another_primary_mid_stream_loses_nothing(
    own_cluster: RedisClusterSet, instances: Start, clients: contextlib.AsyncExitStack, store: Callable[..., Store]
) -> None:
    """The slot of one watched room moves while its events flow: before the move, while the slot
    is MIGRATING (its keys still on the source, then on the target: ASK), and after SETSLOT NODE
    (the source SUNSUBSCRIBEs the room's channel; the instances subscribe on the new owner)."""
    cluster = own_cluster
    a, b = instances(cluster.url)
    pets = store([a, b])
    ids = await pets_on_every_shard(cluster, pets)
    await settled([a, b], {"pet.created": len(ids), "inventory.changed": len(ids)})
    moving = ids[0]
    room, slot = f"pet:{moving}", room_slot(f"pet:{moving}")
    src = cluster.primary_for_slot(slot)
    dst = next(node for node in cluster.primaries if node is not src)
    rooms = ["pets", *(f"pet:{pet_id}" for pet_id in ids)]
    on_a, on_b = await Watcher.join(clients, a, rooms), await Watcher.join(clients, b, rooms)
    await poll(
        lambda: shard_numsub(src, [channel(room)])[channel(room)] == 2, f"both instances to subscribe {room} on {src}"
    )

    names = await pets.stream([moving], "before", 5)
    await asyncio.to_thread(cluster.begin_migration, slot, src, dst)
    names += await pets.stream([moving], "migrating", 5)
    moved = await asyncio.to_thread(cluster.move_keys, slot, src, dst)
    assert moved >= 3, f"{room}'s meta, log and src in slot {slot}: moved {moved} keys"
    names += await pets.stream([moving], "asking", 5)
    await asyncio.to_thread(cluster.finish_migration, slot, src, dst)
    names += await pets.stream([moving], "after", 10)
    others = await pets.stream(ids[1:], "others", 4)

    for watcher in (on_a, on_b):
        counts = {f"pet:{pet_id}": len(pets.names[pet_id]) for pet_id in ids}
        await watcher.take(counts | {"pets": len(names) + len(others)})
        assert watcher.names(room) == names
        assert watcher.names("pets") == names + others
        for watched in rooms:
            assert watcher.names(watched) == (pets.names[int(watched[4:])] if watched != "pets" else names + others)
            watcher.assert_contiguous(watched)
    await asyncio.gather(on_a.nothing_more(), on_b.nothing_more())
    assert shard_numsub(dst, [channel(room)]) == {channel(room): 2}
    assert channel(room) not in shard_channels([src])[src.port]
    assert await pets.stored_names() == pets.current


# ------------------------------------------------------------------------------------ failover


async def test_a_primary_killed_mid_stream_fails_over_and_nothing_committed_is_lost_silently(
    replicated_cluster: RedisClusterSet,
    instances: Start,
    clients: contextlib.AsyncExitStack,
    store: Callable[..., Store],
) -> None:
    """A primary owning a watched room is killed in the middle of a stream of changes, its replica
    having fallen behind (frozen, its link cut, while the last events went out live from the
    primary): the promoted replica lacks them. The database keeps every change. A subscriber
    that stays gets every event of its room, or a new epoch where history lost some, never a gap
    inside an epoch, and what is written after the promotion; the other shards' rooms miss
    nothing; one that left before the fault and comes back with ``since`` is recovered only if
    nothing is missing."""
    cluster = replicated_cluster
    a, b = instances(cluster.url)
    pets = store([a, b])
    ids = await pets_on_every_shard(cluster, pets)
    victim_room = f"pet:{ids[0]}"
    victim = cluster.primary_for_slot(room_slot(victim_room))
    replica = cluster.replica_of(victim)
    await settled([a, b], {"pet.created": len(ids), "inventory.changed": len(ids)})
    rooms = [f"pet:{pet_id}" for pet_id in ids]
    on_a, on_b = await Watcher.join(clients, a, rooms), await Watcher.join(clients, b, rooms)
    async with contextlib.AsyncExitStack() as leaving:  # one that leaves before the fault
        leaver = await Watcher.join(leaving, b, [victim_room])
        await pets.stream(ids, "before", 9)
        await leaver.take({victim_room: 3})
        since = leaver.position(victim_room)

    writing = asyncio.create_task(pets.stream(ids, "during", 60))  # some three seconds of changes
    with cluster.frozen(replica):
        # Frozen, the replica would still find in its socket what the primary sent meanwhile: the
        # primary drops the link, so the replica has nothing of what comes next.
        assert victim.command("CLIENT", "KILL", "TYPE", "replica") == 1
        unseen = len(pets.names[ids[0]]) + 3  # events of the room the replica will not have
        await poll(lambda: len(pets.names[ids[0]]) >= unseen, "changes while the replica is frozen")
        for watcher in (on_a, on_b):  # delivered live, by the primary
            await watcher.take({victim_room: unseen})
        assert not writing.done(), "the stream ended before the fault"
        cluster.kill(victim)
    await writing  # every write succeeds: REST does not wait for Redis
    await asyncio.to_thread(cluster.wait_promoted, replica)
    await pets.stream(ids, "after", 9)

    # Nothing committed is lost: the database has every change.
    assert await pets.stored_names() == pets.current

    # The promises below are independent: each is checked, and every one broken is reported.
    problems: list[str] = []

    async def verify(label: str, check: Awaitable[None]) -> None:
        try:
            await check
        except AssertionError as exc:
            problems.append(f"{label}: {exc}")

    mine = pets.names[ids[0]]

    async def healthy_shards(watcher: Watcher) -> None:
        """On the shards that kept their primary: every event, in order, one epoch."""
        await watcher.take({room: len(pets.names[int(room[4:])]) for room in rooms[1:]})
        for room in rooms[1:]:
            assert watcher.names(room) == pets.names[int(room[4:])], room
            watcher.assert_contiguous(room)

    async def failed_over_shard(watcher: Watcher) -> None:
        """Every event, or a new epoch where some were lost, never a silent gap; and what was
        written after the promotion arrives."""
        await take_until_name(watcher, victim_room, mine[-1])
        assert_no_silent_gap(watcher.events[victim_room], mine, watcher.subscribed[victim_room]["offset"] + 1)
        after_promotion = [name for name in mine if name.startswith("after-")]
        assert watcher.names(victim_room)[-len(after_promotion) :] == after_promotion
        await watcher.nothing_more()

    async def resubscribed() -> None:
        """Both instances subscribe to the room on its new primary."""
        assert shard_numsub(replica, [channel(victim_room)]) == {channel(victim_room): 2}

    for watcher in (on_a, on_b):
        await verify(f"{watcher.server.url}, rooms on the other shards", healthy_shards(watcher))
        await verify(f"{watcher.server.url}, {victim_room} (failed over)", failed_over_shard(watcher))
    await verify("sharded subscriptions after the failover", resubscribed())
    await verify(
        f"{victim_room}, back with since from before the fault",
        assert_comeback(clients, a, victim_room, since, mine[3:], pets.current[ids[0]]),
    )
    logs = "\n".join(f"log of {server.url}:\n{log_excerpt(server)}" for server in (a, b))
    assert not problems, "\n\n".join(problems) + "\n\n" + logs


async def test_a_comeback_after_a_lagging_promotion_that_nobody_watched_is_not_told_recovered_with_a_gap(
    replicated_cluster: RedisClusterSet,
    instances: Start,
    clients: contextlib.AsyncExitStack,
    store: Callable[..., Store],
) -> None:
    """The only subscriber of a room sees its last events live from the primary, which the
    lagging replica lacks, and leaves; the primary is killed, the replica promoted, and the room
    goes on in it with nobody watching. Coming back with ``since`` past the lost events, the
    subscriber is recovered only with every event it missed, else told ``recovered: false``."""
    cluster = replicated_cluster
    (a,) = instances(cluster.url, count=1)
    pets = store([a])
    pet_id = (await pets_on_every_shard(cluster, pets))[0]
    room = f"pet:{pet_id}"
    victim = cluster.primary_for_slot(room_slot(room))
    replica = cluster.replica_of(victim)
    await settled([a], {"pet.created": len(pets.names), "inventory.changed": len(pets.names)})
    async with contextlib.AsyncExitStack() as watching:
        witness = await Watcher.join(watching, a, [room])
        await pets.stream([pet_id], "before", 3)
        await witness.take({room: 3})
        writing = asyncio.create_task(pets.stream([pet_id], "during", 30))
        with cluster.frozen(replica):
            assert victim.command("CLIENT", "KILL", "TYPE", "replica") == 1
            unseen = len(pets.names[pet_id]) + 3
            await poll(lambda: len(pets.names[pet_id]) >= unseen, "changes while the replica is frozen")
            await witness.take({room: unseen})  # delivered live, by the primary
            since, seen = witness.position(room), len(witness.events[room])
            await watching.aclose()
            await poll(lambda: shard_numsub(victim, [channel(room)])[channel(room)] == 0, "nobody to watch the room")
            assert not writing.done(), "the stream ended before the fault"
            cluster.kill(victim)
    await writing
    await asyncio.to_thread(cluster.wait_promoted, replica)
    await pets.stream([pet_id], "after", 5)
    assert await pets.stored_names() == pets.current
    # The relay's backlog of the failover out first (a batch in flight at the kill is published
    # again, whole): a snapshot reads the committed pet, and an event of it still on its way
    # would be one more message, which the comeback must not see. Each update counts once, when
    # the publication that marks it succeeds; the outbox gauge alone can lag a batch in flight.
    updates = sum(name.startswith(("before-", "during-", "after-")) for name in pets.names[pet_id])
    await settled([a], {"pet.updated": updates})
    await assert_comeback(clients, a, room, since, pets.names[pet_id][seen:], pets.current[pet_id])


async def assert_comeback(
    stack: contextlib.AsyncExitStack,
    server: UvicornServer,
    room: str,
    since: dict[str, Any],
    missed: list[str],
    current: str,
) -> None:
    """Subscribing again with ``since``: recovered (same epoch), exactly the ``missed`` events in
    order; not recovered, a snapshot of the pet as it is now. Nothing else follows."""
    back = await Watcher.join(stack, server, [room], since={room: since})
    answer = back.subscribed[room]
    if answer["recovered"]:
        assert answer["epoch"] == since["epoch"], answer
        with contextlib.suppress(AssertionError):  # a replay comes at once: what has not come by then is missing
            await back.take({room: len(missed)}, within=5.0)
        replayed = [(event["offset"], event["data"]["name"]) for event in back.events[room]]
        assert back.names(room) == missed, (
            f"recovered: true from {since} (room at offset {answer['offset']}), yet replayed "
            f"{len(replayed)} of the {len(missed)} events missed: {replayed}; missed: {missed}"
        )
        assert_contiguous(back.events[room], since["offset"] + 1)
    else:
        assert answer["snapshot"]["name"] == current, answer
    await back.nothing_more()


async def take_until_name(watcher: Watcher, room: str, name: str, within: float = 60.0) -> None:
    """Read the room's events until the one named ``name`` (however many came before it)."""
    deadline = time.monotonic() + within
    while not watcher.events[room] or watcher.events[room][-1]["data"]["name"] != name:
        count = len(watcher.events[room]) + 1
        await watcher.take({room: count}, within=max(0.1, deadline - time.monotonic()))


async def test_a_link_reconnects_with_several_rooms_of_one_shard_in_different_slots(cluster: RedisClusterSet) -> None:
    """SSUBSCRIBE takes the channels of one slot only: a link that reconnects with several rooms of
    its shard must subscribe them one by one, or Redis answers CROSSSLOT and the link loops
    reconnecting for ever while every subscribe on it times out (found by bench/scale.py)."""
    from petstore.config import Settings
    from petstore.realtime.broker import Message, Publication
    from petstore.realtime.broker.redis import RedisBroker

    node = cluster.primaries[0]
    mine = [room for room in (f"pet:{n}" for n in range(1, 400)) if cluster.primary_for_slot(room_slot(room)) is node]
    rooms = mine[:3]
    assert len({room_slot(room) for room in rooms}) == 3
    delivered: list[Message] = []
    broker = RedisBroker(Settings(redis_url=cluster.url), delivered.append, lambda *a, **k: None)
    await broker.start()
    try:
        for room in rooms:
            await broker.watch(room)
        reconnects = broker.reconnects
        node.command("CLIENT", "KILL", "TYPE", "pubsub")
        await poll(lambda: broker.reconnects > reconnects and broker.connected, "the link to come back")
        await broker.publish_all([Publication(rooms, "pet.updated", "{}", "2026-12-03T00:00:00.000Z", 1)])
        await poll(lambda: len(delivered) == len(rooms), "an event in each room, on the new connection")
        for room in rooms[1:]:  # and the rooms go on: subscribing another works on the link
            await broker.unwatch(room)
        await broker.watch(mine[3])
        await broker.publish_all([Publication([rooms[0], mine[3]], "pet.updated", "{}", "2026-12-03T00:00:00.000Z", 2)])
        await poll(lambda: len(delivered) == len(rooms) + 2, "the next events")
    finally:
        await broker.stop()
    assert sorted(m.room for m in delivered[: len(rooms)]) == sorted(rooms)
    offsets = {room: [m.offset for m in delivered if m.room == room] for room in [*rooms, mine[3]]}
    assert offsets == {rooms[0]: [1, 2], rooms[1]: [1], rooms[2]: [1], mine[3]: [1]}
