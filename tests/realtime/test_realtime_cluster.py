"""Several real server processes sharing real PostgreSQL and real Redis behave as one (SPEC §6).

Each test starts its own uvicorn subprocesses (``tests.services.UvicornServer``) on a fresh
database, with the header auth fake and the probe plugin (``/_probe/observed`` shows what the
server observed). Clients are the ``websockets`` library, every read under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import petstore.models  # noqa: F401  (registers the tables)
from tests.realtime.support import DEADLINE, Client, add_pet, petstore_instances, until, ws_client
from tests.services import RedisServer, UvicornServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

Cluster = Callable[..., list[UvicornServer]]


async def create_tables(pg_url: str) -> None:
    engine = create_async_engine(pg_url)
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    await engine.dispose()


@pytest.fixture
def cluster(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """``cluster(n, **env)`` starts n servers on the test's database and Redis; all stop at the end."""
    asyncio.run(create_tables(pg_url))
    with petstore_instances(pg_url, redis_url, tmp_path / "media") as start:
        yield start


async def observed(server: UvicornServer) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
        counts: dict[str, float] = (await http.get("/_probe/observed")).json()["counts"]
        return counts


async def collect(client: Client, count: int, within: float = 60.0) -> list[dict[str, Any]]:
    """The next ``count`` events (of any room), each within the deadline."""
    return [await client.expect("event", within) for _ in range(count)]


def assert_contiguous(events: list[dict[str, Any]], first: int) -> None:
    """Offsets rise by one within an epoch; a new epoch (history lost) starts again at 1."""
    expected, epoch = first, events[0]["epoch"]
    for event in events:
        if event["epoch"] != epoch:
            epoch, expected = event["epoch"], 1
        assert event["offset"] == expected, (event, expected)
        expected += 1


async def test_a_change_through_one_instance_reaches_a_subscriber_on_the_other(cluster: Cluster) -> None:
    a, b = cluster(2)
    async with ws_client(b.ws_url) as client:
        await client.request({"type": "subscribe", "room": "pets"}, "subscribed")
        inventory = await client.request({"type": "subscribe", "room": "inventory"}, "subscribed")
        assert inventory["snapshot"] == {"available": 0, "pending": 0, "sold": 0}
        pet = await add_pet(a.url, "Across")
        received = {e["event"]: e for e in await collect(client, 2)}
        assert received["pet.created"]["data"] == pet
        assert received["inventory.changed"]["data"] == {"available": 1, "pending": 0, "sold": 0}


async def test_concurrent_changes_on_both_instances_publish_each_event_once_with_true_counts(cluster: Cluster) -> None:
    a, b = cluster(2)
    async with ws_client(a.ws_url) as client:
        await client.request({"type": "subscribe", "room": "inventory"}, "subscribed")
        await asyncio.gather(*(add_pet(server.url, f"p{n}") for n in range(20) for server in (a, b)))
        events = await collect(client, 40)
        assert_contiguous(events, events[0]["offset"])
        assert events[-1]["data"] == {"available": 40, "pending": 0, "sold": 0}
        with pytest.raises(TimeoutError):
            await client.recv(within=1.0)  # and nothing more: each outbox row was published once


async def test_redis_killed_and_restarted_during_200_changes_loses_and_doubles_nothing(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    a, b = cluster(2)
    async with ws_client(a.ws_url) as on_a, ws_client(b.ws_url) as on_b:
        starts = [
            (await c.request({"type": "subscribe", "room": "pets"}, "subscribed"))["offset"] for c in (on_a, on_b)
        ]
        names = [f"pet-{n}" for n in range(200)]
        for n, name in enumerate(names):
            if n == 60:
                redis_server.kill()
            if n == 120:
                redis_server.start()
            await add_pet((a if n % 2 else b).url, name)  # every change succeeds, Redis or not
        for client, start in zip((on_a, on_b), starts, strict=True):
            events = await collect(client, 200)
            assert [e["data"]["name"] for e in events] == names
            assert_contiguous(events, start + 1)
            with pytest.raises(TimeoutError):
                await client.recv(within=1.0)
    assert (await observed(a)).get("broker.reconnected", 0) >= 1
    assert (await observed(b)).get("broker.reconnected", 0) >= 1


async def test_a_reconnect_with_since_to_another_instance_recovers_what_was_missed(cluster: Cluster) -> None:
    a, b = cluster(2)
    async with ws_client(a.ws_url) as client:
        subscribed = await client.request({"type": "subscribe", "room": "pets"}, "subscribed")
        await add_pet(a.url, "seen")
        last = (await client.expect("event"))["offset"]
    for name in ("missed-1", "missed-2", "missed-3"):
        await add_pet(a.url, name)
    async with ws_client(a.ws_url) as witness:  # to know when the three are published
        since = {"offset": last, "epoch": subscribed["epoch"]}
        await witness.request({"type": "subscribe", "room": "pets", "since": since}, "subscribed")
        await collect(witness, 3)
    async with ws_client(b.ws_url) as client:
        since = {"offset": last, "epoch": subscribed["epoch"]}
        again = await client.request({"type": "subscribe", "room": "pets", "since": since}, "subscribed")
        assert again["recovered"] is True and again["offset"] == last + 3
        missed = await collect(client, 3)
        assert [e["data"]["name"] for e in missed] == ["missed-1", "missed-2", "missed-3"]
        await add_pet(a.url, "live")
        assert (await client.expect("event"))["offset"] == last + 4


async def test_when_history_was_trimmed_the_subscriber_gets_recovered_false_and_a_snapshot(cluster: Cluster) -> None:
    a, b = cluster(2, history_size="5")
    async with ws_client(a.ws_url) as client:
        first = await client.request({"type": "subscribe", "room": "inventory"}, "subscribed")
        for n in range(8):
            await add_pet(a.url, f"p{n}")
        await collect(client, 8)
    async with ws_client(b.ws_url) as client:
        since = {"offset": first["offset"], "epoch": first["epoch"]}
        again = await client.request({"type": "subscribe", "room": "inventory", "since": since}, "subscribed")
        assert again["recovered"] is False
        assert again["snapshot"] == {"available": 8, "pending": 0, "sold": 0}
        assert again["offset"] == first["offset"] + 8


async def test_a_client_that_never_reads_is_closed_with_1013_while_the_others_get_everything(
    cluster: Cluster,
) -> None:
    (server,) = cluster(1, ws_queue_size="8")
    # ~200 KB per event, without compression (permessage-deflate would shrink repeated text to nothing).
    big = ["https://img.example/" + "x" * 2000 for _ in range(100)]
    async with contextlib.AsyncExitStack() as stack:
        readers = [
            await stack.enter_async_context(ws_client(server.ws_url, max_size=None, compression=None)) for _ in range(3)
        ]
        # max_queue=1: the client library stops reading the socket once one frame waits unread;
        # a small fixed receive buffer keeps the kernel from absorbing megabytes on its behalf.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect(("127.0.0.1", server.port))
        sleeper = await stack.enter_async_context(
            ws_client(server.ws_url, max_size=None, max_queue=1, compression=None, sock=sock)
        )
        for client in (*readers, sleeper):
            await client.request({"type": "subscribe", "room": "pets"}, "subscribed")
        total = 60
        receiving = [asyncio.create_task(collect(client, total)) for client in readers]
        for n in range(total):
            await add_pet(server.url, f"big-{n}", photoUrls=big)
        for task in receiving:
            events = await task
            assert [e["data"]["name"] for e in events] == [f"big-{n}" for n in range(total)]
        await until_observed(server, "ws.slow_consumer", 1)
        # Reading at last, it finds the frames that were already on their way, then the close
        # frame the server has been waiting (a bounded time) to write.
        assert await sleeper.closed(within=30) == 1013
        await until_observed(server, "ws.disconnected|code=1013", 1)
        counts = await observed(server)
        assert counts["ws.slow_consumer"] == 1 and counts["ws.disconnected|code=1013"] == 1


async def until_observed(server: UvicornServer, key: str, value: float) -> None:
    """Poll the server's probe, with a deadline."""

    async def reached() -> bool:
        return (await observed(server)).get(key, 0) >= value

    await until(reached, f"{key} to reach {value}")


async def test_500_concurrent_subscribers_all_receive_all_events(cluster: Cluster) -> None:
    a, b = cluster(2)
    async with contextlib.AsyncExitStack() as stack:
        clients = await asyncio.gather(
            *(stack.enter_async_context(ws_client((a if n % 2 else b).ws_url)) for n in range(500))
        )
        await asyncio.gather(*(c.request({"type": "subscribe", "room": "inventory"}, "subscribed") for c in clients))
        for n in range(10):
            await add_pet(a.url, f"p{n}")
        results = await asyncio.gather(*(collect(c, 10) for c in clients))
    for events in results:
        assert [e["data"]["available"] for e in events] == list(range(1, 11))


async def test_a_stopping_server_closes_every_client_with_1012(cluster: Cluster) -> None:
    (server,) = cluster(1)
    async with ws_client(server.ws_url) as first, ws_client(server.ws_url) as second:
        for client in (first, second):
            await client.request({"type": "subscribe", "room": "inventory"}, "subscribed")
        stopping = asyncio.create_task(asyncio.to_thread(server.stop))
        codes = await asyncio.gather(first.closed(), second.closed())
        await stopping
    assert codes == [1012, 1012]
