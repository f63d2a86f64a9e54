"""petstore.db.sqlite: SQLite on the loop's thread, waiting for locks without holding the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from petstore import db
from petstore.config import Settings
from petstore.db import sqlite
from petstore.internals import InternalsChanged
from petstore.models import Pet
from tests.realtime.support import until
from tests.releases import check_all, simulate


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/lock.db", plugins=()))
    await db.create_all(engine)
    yield engine
    await engine.dispose()


async def pets(engine: AsyncEngine) -> list[str]:
    async with db.create_sessionmaker(engine)() as session:
        return list((await session.execute(select(Pet.name).order_by(Pet.name))).scalars())


async def test_a_writer_waits_for_the_lock_while_the_loop_runs_the_holder_to_its_commit(engine: AsyncEngine) -> None:
    """SQLite's own busy handler would sleep on the loop's thread, and the holder could never commit."""
    sessions = db.create_sessionmaker(engine)
    holder, waiter = sessions(), sessions()
    holder.add(Pet(name="first"))
    await holder.flush()  # holds the write lock until it commits
    waiter.add(Pet(name="second"))
    waiting = asyncio.create_task(waiter.commit())
    ticks = 0

    async def ticking() -> bool:
        nonlocal ticks
        ticks += 1
        return ticks > 3  # the loop keeps running other work while the writer waits

    await until(ticking, "the loop to run beside the waiting writer")
    assert not waiting.done()
    await holder.commit()
    await asyncio.wait_for(waiting, 10)
    await holder.close()
    await waiter.close()
    assert await pets(engine) == ["first", "second"]


async def test_a_lock_held_past_the_busy_timeout_fails_the_writer_and_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/held.db?timeout=0.05"
    engine = db.create_engine(Settings(database_url=url, plugins=()))
    await db.create_all(engine)
    sessions = db.create_sessionmaker(engine)
    try:
        async with sessions() as holder, sessions() as waiter:
            holder.add(Pet(name="held"))
            await holder.flush()
            waiter.add(Pet(name="refused"))
            with pytest.raises(OperationalError) as raised:
                await waiter.commit()
            assert isinstance(raised.value.orig, sqlite3.OperationalError)
            assert raised.value.orig.sqlite_errorcode == sqlite3.SQLITE_BUSY
            await waiter.rollback()
            await holder.commit()
        async with sessions() as session:
            assert (await session.execute(select(func.count()).select_from(Pet))).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_many_concurrent_writers_on_one_file_all_commit(engine: AsyncEngine) -> None:
    sessions = db.create_sessionmaker(engine)

    async def write(n: int) -> None:
        async with sessions() as session:
            session.add(Pet(name=f"p{n:02d}"))
            await session.flush()
            await asyncio.sleep(0)  # let the others try while this one holds the lock
            await session.commit()

    await asyncio.gather(*(write(n) for n in range(20)))
    assert await pets(engine) == [f"p{n:02d}" for n in range(20)]


def newer_sqlalchemy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLAlchemy whose adapter asks aiosqlite's connection whether it is open by another private name."""
    simulate(
        monkeypatch,
        "SQLAlchemy",
        "sqlalchemy.dialects.sqlite.aiosqlite",
        "self._connection._connection",
        "self._connection._running",
        "2.2.0",
    )


def test_a_sqlalchemy_that_reads_another_private_attribute_of_aiosqlite_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    newer_sqlalchemy(monkeypatch)
    with pytest.raises(InternalsChanged) as refused:
        check_all(sqlite.USES)
    message = str(refused.value)
    assert message.startswith("petstore.db.sqlite cannot run on SQLAlchemy 2.2.0")
    assert "reads self._connection._running, which petstore.db.sqlite.Connection does not provide" in message


async def test_the_check_runs_at_the_first_connection_before_any_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer_sqlalchemy(monkeypatch)
    engine = db.create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/new.db", plugins=()))
    try:
        with pytest.raises(InternalsChanged):
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert not (tmp_path / "new.db").exists()
