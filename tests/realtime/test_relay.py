"""The outbox relay: after commit, in outbox order, once, and nothing lost while the broker is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from petstore import db
from petstore.config import Settings
from petstore.models import OutboxEvent, Pet
from petstore.plugin import Plugins
from petstore.realtime import events
from petstore.realtime.broker import BrokerUnavailable, History, Publication, Since
from petstore.realtime.relay import Relay
from petstore.state import AppState
from tests.realtime.support import ProbePlugin, until


class RecordingBroker:
    """A broker that remembers what it was asked to publish, and can be 'down'."""

    def __init__(self) -> None:
        self.published: list[tuple[list[str], str, str, int]] = []
        self.down = False
        self.fail_after: int | None = None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, room_names: list[str], event: str, data_json: str, ts: str, source: int) -> None:
        if self.down or (self.fail_after is not None and len(self.published) >= self.fail_after):
            raise BrokerUnavailable("down for the test")
        await asyncio.sleep(0)  # a real broker yields here: let other relays interleave if they can
        self.published.append((room_names, event, data_json, source))

    async def publish_all(self, publications: Sequence[Publication]) -> None:
        for p in publications:
            if p.source not in self.sources():  # as the Redis script does: a repeated source is a no-op
                await self.publish(p.rooms, p.event, p.data_json, p.ts, p.source)

    async def watch(self, room: str) -> None: ...

    async def unwatch(self, room: str) -> None: ...

    async def history(self, room: str, since: Since | None) -> History:
        return History("e", 0, None)

    async def ping(self) -> None: ...

    def sources(self) -> list[int]:
        return [source for *_, source in self.published]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AppState]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else f"sqlite+aiosqlite:///{tmp_path}/r.db"
    settings = Settings(database_url=url, plugins=(), env="test")
    engine = db.create_engine(settings)
    await db.create_all(engine)
    probe = ProbePlugin()
    yield AppState(settings=settings, engine=engine, sessions=db.create_sessionmaker(engine), plugins=Plugins([probe]))
    await engine.dispose()


def probe_of(state: AppState) -> ProbePlugin:
    plugin = state.plugins.items[0]
    assert isinstance(plugin, ProbePlugin)
    return plugin


async def write(state: AppState, count: int, start: int = 0) -> None:
    async with state.sessions() as session:
        for n in range(start, start + count):
            events.record(session, "pet.deleted", ["pets", f"pet:{n}"], {"id": n})
        await session.commit()


async def unpublished(state: AppState) -> int:
    async with state.sessions() as session:
        rows = await session.execute(select(OutboxEvent).where(OutboxEvent.published_at.is_(None)))  # type: ignore[union-attr]
        return len(rows.all())


async def test_rows_are_published_in_outbox_order_with_all_their_rooms_and_marked(state: AppState) -> None:
    broker = RecordingBroker()
    await write(state, 3)
    assert await Relay(state, broker).drain() == 3
    assert [(rooms, event) for rooms, event, *_ in broker.published] == [
        (["pets", "pet:0"], "pet.deleted"),
        (["pets", "pet:1"], "pet.deleted"),
        (["pets", "pet:2"], "pet.deleted"),
    ]
    assert broker.sources() == sorted(broker.sources())
    assert await unpublished(state) == 0
    assert await Relay(state, broker).drain() == 0
    assert probe_of(state).counts["event.published|event=pet.deleted"] == 3


async def test_while_the_broker_is_down_nothing_is_lost_and_order_holds_when_it_returns(state: AppState) -> None:
    broker = RecordingBroker()
    relay = Relay(state, broker)
    await write(state, 2)
    broker.fail_after = 1  # goes down in the middle of a batch
    with pytest.raises(BrokerUnavailable):
        await relay.drain()
    assert len(broker.published) == 1 and await unpublished(state) == 2  # nothing marked: all go again
    broker.fail_after = None
    broker.down = True
    await write(state, 2, start=2)
    with pytest.raises(BrokerUnavailable):
        await relay.drain()
    broker.down = False
    assert await relay.drain() == 4
    assert [data for _, _, data, _ in broker.published] == [f'{{"id":{n}}}' for n in range(4)]  # once each
    assert await unpublished(state) == 0


async def test_the_background_relay_wakes_on_commit_and_reports_the_backlog(state: AppState) -> None:
    broker = RecordingBroker()
    broker.down = True
    relay = Relay(state, broker)
    relay.start()
    try:
        await write(state, 2)
        state.outbox_wakeup.set()
        await until(lambda: probe_of(state).gauges.get("outbox.pending") == 2, "the backlog to be reported")
        broker.down = False
        await until(lambda: len(broker.published) == 2, "the backlog to go out")
        await until(lambda: probe_of(state).gauges.get("outbox.pending") == 0, "an empty backlog")
    finally:
        await relay.stop()


async def test_inventory_counts_are_recomputed_when_published(state: AppState) -> None:
    """Counts written by concurrent transactions can each miss the other's pet; the relay's cannot."""
    broker = RecordingBroker()
    async with state.sessions() as session:
        session.add_all([Pet(name="a", status="available"), Pet(name="b", status="sold")])
        events.record(session, "inventory.changed", ["inventory"], {"available": 99, "pending": 0, "sold": 0})
        await session.commit()
    await Relay(state, broker).drain()
    assert broker.published[0][2] == '{"available":1,"pending":0,"sold":1}'
    assert probe_of(state).gauges["inventory.pets|status=sold"] == 1


@pytest.mark.postgres
async def test_two_relays_on_one_postgresql_publish_every_row_once_in_order(pg_url: str) -> None:
    settings = Settings(database_url=pg_url, plugins=(), env="test")
    engines = [db.create_engine(settings) for _ in range(2)]
    await db.create_all(engines[0])
    states = [
        AppState(settings=settings, engine=e, sessions=db.create_sessionmaker(e), plugins=Plugins([])) for e in engines
    ]
    broker = RecordingBroker()  # shared: what the one Redis would receive from both instances
    relays = [Relay(s, broker) for s in states]
    try:

        async def writer() -> None:
            for n in range(0, 200, 10):
                await write(states[n % 2], 10, start=n)

        async def relaying(relay: Relay) -> None:
            while len(broker.published) < 200:
                await relay.drain()
                await asyncio.sleep(
                    0
                )  # yield the loop to the writer and the other relay: interleaving, not a synchronisation

        await asyncio.wait_for(asyncio.gather(writer(), *(relaying(r) for r in relays)), 60)
    finally:
        for engine in engines:
            await engine.dispose()
    sources = broker.sources()
    assert len(sources) == 200 and len(set(sources)) == 200
    assert sources == sorted(sources)
