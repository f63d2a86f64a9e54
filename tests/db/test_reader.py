"""petstore.db.reader: the hot reads on SQLite go around the engine, and see what the engine committed."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import bindparam, event, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from petstore import db
from petstore.config import Settings
from petstore.db import answers
from petstore.db import reader as reader_module
from petstore.db.reader import Reader
from petstore.errors import database_unavailable
from petstore.models import Pet
from tests.services import PostgresServer

pytestmark = pytest.mark.filterwarnings("error")

BY_ID = answers.pet_by_id("sqlite")
NAMES = select(Pet.name).where(Pet.status == bindparam("status")).order_by(Pet.id)  # type: ignore[arg-type]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/read.db", plugins=()))
    await db.create_all(engine)
    yield engine
    await engine.dispose()


async def add_pets(engine: AsyncEngine, *names: str) -> list[int]:
    async with db.create_sessionmaker(engine)() as session:
        pets = [Pet(name=name, tags=[]) for name in names]
        session.add_all(pets)
        await session.commit()
        return [pet.id for pet in pets if pet.id is not None]


def counting(engine: AsyncEngine) -> list[str]:
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    return statements


async def test_on_a_sqlite_file_a_read_runs_on_its_own_connection_not_the_engines(engine: AsyncEngine) -> None:
    [rex] = await add_pets(engine, "Rex")
    reader = Reader(engine)
    through_engine = counting(engine)
    try:
        [answer] = await reader.column(BY_ID, {"pet_id": rex})
        assert await reader.column(NAMES, {"status": "available"}) == ["Rex"]
    finally:
        await reader.aclose()
    assert answer.startswith(f'{{"id":{rex},"name":"Rex"')
    assert through_engine == []


async def test_every_commit_of_the_engine_is_in_the_next_read(engine: AsyncEngine) -> None:
    """No snapshot is kept between reads: each one is a statement of its own (autocommit)."""
    [rex] = await add_pets(engine, "Rex")
    reader = Reader(engine)
    try:
        for n in range(5):
            async with engine.begin() as connection:
                await connection.execute(update(Pet).where(Pet.id == rex).values(name=f"Rex {n}"))  # type: ignore[arg-type]
            assert await reader.column(NAMES, {"status": "available"}) == [f"Rex {n}"]
        await add_pets(engine, "Fido")
        assert await reader.column(NAMES, {"status": "available"}) == ["Rex 4", "Fido"]
    finally:
        await reader.aclose()


async def test_a_commit_by_another_process_on_the_file_is_in_the_next_read(engine: AsyncEngine, tmp_path: Path) -> None:
    reader = Reader(engine)
    try:
        assert await reader.column(NAMES, {"status": "sold"}) == []
        other = sqlite3.connect(tmp_path / "read.db")  # another worker, as far as the file knows
        other.execute("INSERT INTO pet (name, status, photo_urls) VALUES ('Elsewhere', 'sold', '[]')")
        other.commit()
        other.close()
        assert await reader.column(NAMES, {"status": "sold"}) == ["Elsewhere"]
    finally:
        await reader.aclose()


async def test_the_readers_connection_cannot_write(engine: AsyncEngine) -> None:
    reader = Reader(engine)
    try:
        await reader.column(NAMES, {"status": "available"})
        raw = reader._open().sqlite_connection
        assert raw is not None
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            raw.execute("DELETE FROM pet")
    finally:
        await reader.aclose()


async def test_an_in_list_parameter_goes_through_the_engine(engine: AsyncEngine) -> None:
    await add_pets(engine, "Rex", "Fido")
    listed = select(Pet.name).where(Pet.name.in_(bindparam("names", expanding=True))).order_by(Pet.id)  # type: ignore[attr-defined]
    reader = Reader(engine)
    through_engine = counting(engine)
    try:
        assert await reader.column(listed, {"names": ["Fido", "Nobody"]}) == ["Fido"]
    finally:
        await reader.aclose()
    assert len(through_engine) == 1


async def test_an_in_memory_database_is_read_through_the_engine() -> None:
    """Another connection to ``:memory:`` would be another, empty, database."""
    engine = db.create_engine(Settings(database_url="sqlite+aiosqlite:///:memory:", plugins=()))
    try:
        await db.create_all(engine)
        await add_pets(engine, "Rex")
        reader = Reader(engine)
        through_engine = counting(engine)
        assert await reader.column(NAMES, {"status": "available"}) == ["Rex"]
        assert len(through_engine) == 1
        await reader.aclose()
    finally:
        await engine.dispose()


async def test_closed_it_opens_again_on_the_next_read(engine: AsyncEngine) -> None:
    await add_pets(engine, "Rex")
    reader = Reader(engine)
    assert await reader.column(NAMES, {"status": "available"}) == ["Rex"]
    await reader.aclose()
    assert await reader.column(NAMES, {"status": "available"}) == ["Rex"]
    await reader.aclose()


# ---------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(Settings(database_url=pg_url, plugins=()))
    await db.create_all(engine)
    yield engine
    await engine.dispose()


@pytest.mark.postgres
async def test_on_postgresql_a_read_runs_on_the_readers_own_pool_and_sees_every_commit(pg_engine: AsyncEngine) -> None:
    [rex] = await add_pets(pg_engine, "Rex")
    reader = Reader(pg_engine)
    through_engine = counting(pg_engine)
    try:
        [answer] = await reader.column(answers.pet_by_id("postgresql"), {"pet_id": rex})
        assert json.loads(answer) == {"id": rex, "name": "Rex", "photoUrls": [], "tags": [], "status": "available"}
        assert await reader.column(answers.pet_by_id("postgresql"), {"pet_id": rex + 1}) == []
        assert through_engine == []
        for n in range(3):  # autocommit: no snapshot outlives a read
            async with pg_engine.begin() as connection:
                await connection.execute(update(Pet).where(Pet.id == rex).values(name=f"Rex {n}"))  # type: ignore[arg-type]
            assert await reader.column(NAMES, {"status": "available"}) == [f"Rex {n}"]
    finally:
        await reader.aclose()


@pytest.mark.postgres
async def test_on_postgresql_an_outage_is_the_engines_error_and_the_reader_recovers_after_it() -> None:
    """A read while PostgreSQL is down raises what the engine would (OperationalError: a 503);
    once it is back, the pool's connections lost in the restart are replaced, not handed out."""
    with PostgresServer() as server:
        engine = db.create_engine(Settings(database_url=server.async_url("postgres"), plugins=()))
        reader = Reader(engine)
        try:
            await db.create_all(engine)
            await add_pets(engine, "Rex")
            assert await reader.column(NAMES, {"status": "available"}) == ["Rex"]
            await asyncio.to_thread(server.stop)
            with pytest.raises(OperationalError) as refused:
                await reader.column(NAMES, {"status": "available"})
            assert database_unavailable(refused.value)
            await asyncio.to_thread(server.start)
            assert await reader.column(NAMES, {"status": "available"}) == ["Rex"]
        finally:
            await reader.aclose()
            await engine.dispose()


async def test_kept_answers_are_bounded_by_their_size_and_a_commit_forgets_them(engine: AsyncEngine) -> None:
    """``kept``: an answer is computed once while nothing commits; the least recently used make
    room within KEPT_SIZE, one larger than the whole is never kept, and a commit forgets them all."""
    computed: list[str] = []

    def compute(key: str, size: int) -> Callable[[bool], Awaitable[tuple[list[int], None]]]:
        async def answer(versioned: bool) -> tuple[list[int], None]:
            computed.append(key)
            return [0] * size, None

        return answer

    reader = Reader(engine)
    try:
        half = reader_module.KEPT_SIZE // 2
        for key in ("a", "b", "a"):
            assert len(await reader.kept(key, compute(key, half), size=len)) == half
        assert computed == ["a", "b"]
        await reader.kept("c", compute("c", half), size=len)  # room made by b, used least lately
        await reader.kept("a", compute("a", half), size=len)
        await reader.kept("b", compute("b", half), size=len)
        assert computed == ["a", "b", "c", "b"]
        for _ in range(2):
            await reader.kept("huge", compute("huge", reader_module.KEPT_SIZE + 1), size=len)
        assert computed.count("huge") == 2
        await reader.kept("b", compute("b", half), size=len)  # the huge one made no room
        assert computed.count("b") == 2
        await add_pets(engine, "Rex")
        await reader.kept("b", compute("b", half), size=len)
        assert computed.count("b") == 3
    finally:
        await reader.aclose()
