"""Alembic migrations: a fresh database upgraded to head has exactly the schema of the models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import petstore.models  # noqa: F401  (registers the tables)
from petstore.migrations import alembic_config, migrate, migrate_async

TABLES = {"category", "tag", "pet", "pet_tag", "users", "purchase_order", "outbox", "alembic_version"}


def _inspect(url: str) -> dict[str, Any]:
    """Schema differences from the models, the tables, the indexes and the revision, read in one connection."""

    def read(connection: Connection) -> dict[str, Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        inspector = inspect(connection)
        tables = set(inspector.get_table_names())
        return {
            "diff": compare_metadata(context, SQLModel.metadata),
            "tables": tables,
            "indexes": {ix["name"] for table in tables for ix in inspector.get_indexes(table)},
            "revision": context.get_current_revision(),
        }

    async def run() -> dict[str, Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _assert_matches_models(url: str) -> None:
    schema = _inspect(url)
    assert schema["diff"] == []
    assert schema["tables"] == TABLES
    assert {
        "ix_pet_status",
        "ix_pet_category_id",
        "ix_category_name",
        "ix_tag_name",
        "ix_purchase_order_pet_id",
        "ix_purchase_order_user_id",
        "ix_outbox_unpublished",
    } <= schema["indexes"]
    assert schema["revision"] == "0002"


def test_fresh_sqlite_upgraded_to_head_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    migrate(url)
    _assert_matches_models(url)


@pytest.mark.postgres
def test_fresh_postgresql_upgraded_to_head_matches_the_models(pg_url: str) -> None:
    migrate(pg_url)
    _assert_matches_models(pg_url)


def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'twice.db'}"
    migrate(url)
    migrate(url)
    _assert_matches_models(url)


@pytest.mark.postgres
def test_downgrade_to_base_removes_every_table_and_upgrade_restores_them(pg_url: str) -> None:
    migrate(pg_url)
    command.downgrade(alembic_config(pg_url), "base")
    assert _inspect(pg_url)["tables"] == {"alembic_version"}
    migrate(pg_url)
    _assert_matches_models(pg_url)


async def test_migrate_async_runs_inside_a_running_event_loop(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'in-loop.db'}"
    await migrate_async(url)
    await migrate_async(url)
    schema = await asyncio.to_thread(_inspect, url)  # _inspect runs its own loop: keep it off this one
    assert schema["diff"] == []
    assert schema["revision"] == "0002"


@pytest.mark.postgres
async def test_migrate_async_on_postgresql(pg_url: str) -> None:
    await migrate_async(pg_url)
    schema = await asyncio.to_thread(_inspect, pg_url)
    assert schema["diff"] == []
    assert schema["revision"] == "0002"
