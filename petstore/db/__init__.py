"""The async engine, sessions, and schema set-up.

SQLite by default (``sqlite+aiosqlite`` URLs, run on the loop's thread: :mod:`petstore.db.sqlite`),
PostgreSQL (asyncpg) in production; the URL decides. Migrations
live in ``petstore/migrations/`` and run with ``petstore migrate``; :mod:`petstore.db.queries`
holds the reads that several parts of the app share.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from sqlalchemy import URL, event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Mapper
from sqlmodel import SQLModel

from petstore.config import Settings
from petstore.db import fulltext, pet_version, sqlite
from petstore.db.reader import in_memory
from petstore.models import MAX_ID, Category, Order, Pet, Tag, User


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        url = make_url(settings.database_url)

        async def connect() -> sqlite.Connection:
            return sqlite.connect_url(engine.sync_engine.dialect, url)

        # SQLite runs on the loop's thread (petstore.db.sqlite). No rollback when a connection goes
        # back to the pool: sessions and connections end their own transactions (commit, or
        # rollback on close), so it would be one more call per request for nothing.
        engine = create_async_engine(url, async_creator=connect, pool_reset_on_return=None, **_sqlite_pool(url))

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Foreign keys are off by default in SQLite; WAL lets readers run beside the writer.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
            _record.info[fulltext.INFO_KEY] = fulltext.detect(dbapi_connection)

        return engine
    return create_async_engine(settings.database_url, pool_size=10, max_overflow=20, pool_pre_ping=True)


#: SQLite connections kept open. SQLAlchemy's async context managers close a connection in a task
#: of their own (so that a cancellation cannot abandon it half way), one loop turn after the
#: request let go of it: under load, as many connections are out at once as requests finish in
#: a turn. With SQLAlchemy's default of 5, every one past that was a new connection (open, three
#: PRAGMAs, the full-text probe) closed again at once: a third of the reads at 20 concurrent
#: requests. An idle SQLite connection costs a file handle and a few KB.
SQLITE_POOL_SIZE = 32


def _sqlite_pool(url: URL) -> dict[str, Any]:
    # An in-memory database gets SQLAlchemy's single-connection pool, which takes no size.
    return {} if in_memory(url) else {"pool_size": SQLITE_POOL_SIZE, "max_overflow": 2 * SQLITE_POOL_SIZE}


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_all(engine: AsyncEngine) -> None:
    """Create every table directly from the models (tests and throwaway databases; prefer migrations)."""
    import petstore.models  # noqa: F401  (registers the tables)

    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
        await conn.run_sync(fulltext.create)  # what revision 0004 adds beside the models on SQLite
        await conn.run_sync(pet_version.create)  # and revision 0006 on PostgreSQL


#: Client-chosen ids at or above this do not move the id sequences, so generated ids stay below
#: it and thus within ``MAX_ID`` (2**53 - 1, what a JavaScript client holds exactly). Without the
#: cap, one row with id ``MAX_ID`` would move the sequences to the last id a client can read, and
#: the next generated ids past it; with it, they keep 2**52 ids of room, never reached in practice,
#: and never run into the ids clients chose at the top of the range.
SEQUENCE_CEILING = (MAX_ID + 1) // 2


async def sync_id_sequence(session: AsyncSession, table: str) -> None:
    """After a row was inserted with a client-chosen id, move PostgreSQL's sequence past it, never back.

    Never back: setting it to the largest id in use would hand out again the ids of the newest
    rows deleted since, which clients may still hold (``pet:{id}`` rooms, an order's ``petId``).
    """
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(
            text(
                "SELECT setval(seq, GREATEST(COALESCE(pg_sequence_last_value(seq), 0), "  # noqa: S608 (table is ours)
                f'(SELECT COALESCE(MAX(id), 0) FROM "{table}" WHERE id < :ceiling), 1)) '
                f"FROM CAST(pg_get_serial_sequence('{table}', 'id') AS regclass) AS seq"
            ),
            {"ceiling": SEQUENCE_CEILING},
        )


# SQLite: the tables of models.NEVER_REUSE_IDS are AUTOINCREMENT, so sqlite_sequence keeps the
# largest id each ever had. SQLite itself would give a new row max(that, largest id in use) + 1:
# one client-chosen id of MAX_ID and the generated ids go on past what a client can hold, one
# below it and they run on among the clients' own. So a new row's id is chosen in its INSERT
# (one statement, under SQLite's write lock, as SQLite would) from the ids below the ceiling, and
# a client-chosen id at or above it leaves sqlite_sequence as it found it.
_NEXT_SQLITE_ID = (
    "(SELECT max("
    "COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}' AND seq < {ceiling}), 0), "
    'COALESCE((SELECT max(id) FROM "{table}" WHERE id < {ceiling}), 0)) + 1)'
)
_SAVED_SEQUENCES = "petstore.sqlite_sequence"


def _before_insert(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    if connection.dialect.name != "sqlite":
        return
    table = mapper.local_table.name  # type: ignore[attr-defined]
    if target.id is None:
        target.id = text(_NEXT_SQLITE_ID.format(table=table, ceiling=SEQUENCE_CEILING))
    elif target.id >= SEQUENCE_CEILING:
        seq = connection.execute(text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}).scalar()
        connection.info.setdefault(_SAVED_SEQUENCES, {}).setdefault(table, seq or 0)


def _after_insert(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    table = mapper.local_table.name  # type: ignore[attr-defined]
    saved = connection.info.get(_SAVED_SEQUENCES, {}).pop(table, None)
    if saved is not None:
        connection.execute(
            text(
                "UPDATE sqlite_sequence SET seq = max(:saved, "  # noqa: S608 (table is ours)
                f'(SELECT COALESCE(max(id), 0) FROM "{table}" WHERE id < :ceiling)) WHERE name = :t'
            ),
            {"saved": saved, "ceiling": SEQUENCE_CEILING, "t": table},
        )


# Categories and tags too: not AUTOINCREMENT (never deleted), but SQLite would still give the
# next one the largest id in use plus one, past MAX_ID after a client chose it.
for _model in (Pet, Order, User, Category, Tag):
    event.listen(_model, "before_insert", _before_insert)
    event.listen(_model, "after_insert", _after_insert)


#: How long readiness waits for SQLite's write lock: longer than any write petstore makes, far
#: shorter than the busy timeout a writer waits before its 503.
LOCK_PROBE_SECONDS = 0.5


async def ping(engine: AsyncEngine) -> bool:
    """Raise if the database does not answer; False if it answers but cannot take a write now.

    On SQLite a lock held by some other connection (a stuck transaction, a backup, a shell) leaves
    reads working while every write waits, then fails: the probe takes the write lock with
    ``BEGIN IMMEDIATE``, without waiting on SQLite's side (petstore's connections run on the
    event loop's thread), retries for LOCK_PROBE_SECONDS, and releases it at once. PostgreSQL
    locks rows, not the database: ``SELECT 1`` says it all.
    """
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        if engine.dialect.name != "sqlite":
            return True
        driver = (await conn.get_raw_connection()).driver_connection
        raw = driver.sqlite_connection if isinstance(driver, sqlite.Connection) else None
        if raw is None:
            return True  # not petstore's inline driver: no probe that could hold the loop
        return await _sqlite_writable(raw)


async def _sqlite_writable(conn: sqlite3.Connection) -> bool:
    if conn.in_transaction:
        return True  # not this probe's to end; cannot happen right after connect()
    deadline = time.monotonic() + LOCK_PROBE_SECONDS
    pause = 0.005
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
            continue
        conn.execute("ROLLBACK")
        return True
