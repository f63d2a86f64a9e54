"""Alembic environment: async, for aiosqlite and asyncpg alike.

``migrate_async`` hands over an open connection in ``config.attributes["connection"]``;
otherwise the URL comes from ``config.attributes["database_url"]`` (set by :func:`petstore.migrations.migrate`),
else from ``sqlalchemy.url`` in ``alembic.ini``, else from ``PETSTORE_DATABASE_URL``, so the same
file serves ``petstore migrate`` and a developer's ``alembic -c petstore/alembic.ini revision --autogenerate``.
The tables compared by autogenerate are the core's models plus those of every plugin branch
that :func:`petstore.migrations.alembic_config` was given (``config.attributes["plugin_metadata"]``).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import petstore.models  # noqa: F401  (registers every table on SQLModel.metadata)
from petstore.config import Settings
from petstore.migrations import include_object

config = context.config
target_metadata = [SQLModel.metadata, *config.attributes.get("plugin_metadata", ())]


def _database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    return str(url) if url else Settings().database_url


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None else (url or "").split(":", 1)[0]
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        compare_type=True,
        include_object=include_object,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=dialect.startswith("sqlite"),
    )


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    # NullPool: a one-shot command should leave no pooled connection behind.
    engine = create_async_engine(_database_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
elif (given := config.attributes.get("connection")) is not None:
    # migrate_async(): the caller's event loop already holds a connection, run on it.
    _run_sync(given)
else:
    asyncio.run(run_migrations_online())
