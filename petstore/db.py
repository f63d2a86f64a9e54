"""The async engine, sessions, and schema set-up.

SQLite by default (``sqlite+aiosqlite`` URLs, run on the loop's thread: :mod:`petstore.sqlite`),
PostgreSQL (asyncpg) in production; the URL decides. Migrations
live beside this module in ``migrations/`` and run with ``petstore migrate``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

from petstore import sqlite
from petstore.config import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        url = make_url(settings.database_url)

        async def connect() -> sqlite.Connection:
            args, kwargs = engine.sync_engine.dialect.create_connect_args(url)
            return sqlite.connect(args, {"timeout": 30, **kwargs})  # the URL may set ?timeout=seconds

        # SQLite runs on the loop's thread (petstore.sqlite). No rollback when a connection goes
        # back to the pool: sessions and connections end their own transactions (commit, or
        # rollback on close), so it would be one more call per request for nothing.
        engine = create_async_engine(url, async_creator=connect, pool_reset_on_return=None)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Foreign keys are off by default in SQLite; WAL lets readers run beside the writer.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_async_engine(settings.database_url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_all(engine: AsyncEngine) -> None:
    """Create every table directly from the models (tests and throwaway databases; prefer migrations)."""
    import petstore.models  # noqa: F401  (registers the tables)

    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)


#: Client-chosen ids at or above this do not move the id sequences. Without the cap, one row with
#: id 2**63 - 1 would move PostgreSQL's sequence to its end and every later insert would fail;
#: with it, the sequence keeps 2**62 ids of room and never reaches such rows in practice.
SEQUENCE_CEILING = 2**62


async def sync_id_sequence(session: AsyncSession, table: str) -> None:
    """After a row was inserted with a client-chosen id, move PostgreSQL's sequence past it."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 (table is ours)
                f'GREATEST((SELECT COALESCE(MAX(id), 0) FROM "{table}" WHERE id < :ceiling), 1))'
            ),
            {"ceiling": SEQUENCE_CEILING},
        )


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
