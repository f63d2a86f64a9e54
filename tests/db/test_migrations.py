"""Alembic migrations: a fresh database upgraded to head has exactly the schema of the models."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import petstore.models  # noqa: F401  (registers the tables)
from petstore.cli import main
from petstore.migrations import alembic_config, include_object, migrate, migrate_async
from plugins.auth.schema import MIGRATIONS as AUTH_MIGRATIONS
from tests.services import PostgresServer

HEAD = "0006"
FTS = "pet_name_fts"
TABLES = {"category", "tag", "pet", "pet_tag", "users", "purchase_order", "outbox", "alembic_version"}


def core_tables(url: str) -> set[str]:
    """The core's tables, with PostgreSQL's count of changes to pets (revision 0006, petstore.db.pet_version)."""
    return TABLES | ({"pet_version"} if url.startswith("postgresql") else set())


def _inspect(url: str) -> dict[str, Any]:
    """Schema differences from the models, the tables, the indexes and the revision, read in one connection."""

    def read(connection: Connection) -> dict[str, Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include_object})
        inspector = inspect(connection)
        tables = set(inspector.get_table_names())
        return {
            "diff": compare_metadata(context, SQLModel.metadata),
            "tables": {table for table in tables if not table.startswith(FTS)},  # SQLite's name index apart
            "fts_tables": {table for table in tables if table.startswith(FTS)},
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
    # PostgreSQL's count of changes to pets (revision 0006, petstore.db.pet_version) is its own.
    assert schema["tables"] == core_tables(url)
    if url.startswith("sqlite"):  # SQLite's trigram table of names, and the shadow tables of FTS5
        assert schema["fts_tables"] == {FTS, f"{FTS}_data", f"{FTS}_idx", f"{FTS}_docsize", f"{FTS}_config"}
    else:
        assert schema["fts_tables"] == set()
    assert {
        "ix_pet_status_id",
        "ix_pet_name_id",
        "ix_pet_tag_tag_id",
        "ix_pet_category_id",
        "ix_category_name",
        "ix_tag_name",
        "ix_purchase_order_pet_id",
        "ix_purchase_order_user_id",
        "ix_outbox_unpublished",
    } <= schema["indexes"]
    assert schema["revision"] == HEAD


def test_fresh_sqlite_upgraded_to_head_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    migrate(url)
    _assert_matches_models(url)


@pytest.mark.postgres
def test_fresh_postgresql_upgraded_to_head_matches_the_models(pg_url: str) -> None:
    migrate(pg_url)
    _assert_matches_models(pg_url)


def test_0003_adds_a_null_trace_context_to_existing_outbox_rows_and_its_downgrade_keeps_autoincrement(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'trace.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0002")

    def run(sql: str) -> list[Any]:
        async def go() -> list[Any]:
            engine = create_async_engine(url)
            try:
                async with engine.begin() as connection:
                    result = await connection.exec_driver_sql(sql)
                    return list(result.all()) if result.returns_rows else []
            finally:
                await engine.dispose()

        return asyncio.run(go())

    run(
        "INSERT INTO outbox (event, rooms, data, created_at) "
        "VALUES ('pet.deleted', '[\"pets\"]', '{\"id\": 1}', '2026-12-03 00:00:00')"
    )
    command.upgrade(config, "head")
    assert run("SELECT id, event, trace_context FROM outbox") == [(1, "pet.deleted", None)]
    command.downgrade(config, "0002")
    assert run("SELECT id, event FROM outbox") == [(1, "pet.deleted")]
    (table_sql,) = run("SELECT sql FROM sqlite_master WHERE name = 'outbox'")[0]
    assert "AUTOINCREMENT" in table_sql and "trace_context" not in table_sql


def _run_sql(url: str, sql: str) -> list[Any]:
    async def go() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                result = await connection.exec_driver_sql(sql)
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_0004_swaps_the_status_index_for_status_and_id_and_its_downgrade_restores_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'search.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0003")
    _run_sql(url, "INSERT INTO pet (id, name, status, photo_urls) VALUES (7, 'Rex', 'sold', '[]')")
    command.upgrade(config, "head")
    indexes = _inspect(url)["indexes"]
    assert {"ix_pet_name_id", "ix_pet_status_id", "ix_pet_tag_tag_id"} <= indexes and "ix_pet_status" not in indexes
    assert _run_sql(url, "SELECT id, name, status FROM pet") == [(7, "Rex", "sold")]
    assert _run_sql(url, f"SELECT rowid FROM {FTS} WHERE {FTS} MATCH '\"REX\"'") == [(7,)]  # the pets already there
    command.downgrade(config, "0003")
    schema = _inspect(url)
    assert "ix_pet_status" in schema["indexes"]
    assert not {"ix_pet_name_id", "ix_pet_status_id", "ix_pet_tag_tag_id"} & schema["indexes"]
    assert schema["fts_tables"] == set()
    assert _run_sql(url, "SELECT name FROM sqlite_master WHERE type = 'trigger'") == []
    assert _run_sql(url, "SELECT id, name, status FROM pet") == [(7, "Rex", "sold")]


def test_on_sqlite_the_name_index_follows_every_insert_rename_and_delete_and_matches_the_models_one(
    tmp_path: Path,
) -> None:
    migrated = f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"
    migrate(migrated)

    def matches(url: str, q: str) -> list[int]:
        return [row[0] for row in _run_sql(url, f"SELECT rowid FROM {FTS} WHERE {FTS} MATCH '\"{q}\"' ORDER BY rowid")]

    _run_sql(migrated, "INSERT INTO pet (id, name, status, photo_urls) VALUES (1, 'Éclair', 'sold', '[]')")
    _run_sql(migrated, "INSERT INTO pet (id, name, status, photo_urls) VALUES (2, 'Rexford', 'sold', '[]')")
    assert matches(migrated, "éCL") == [1] and matches(migrated, "xfo") == [2]  # any case, Unicode too
    _run_sql(migrated, "UPDATE pet SET name = 'Maxford' WHERE id = 2")
    assert matches(migrated, "rex") == [] and matches(migrated, "axf") == [2]
    _run_sql(migrated, "UPDATE pet SET status = 'available' WHERE id = 2")  # not its name: nothing to do
    assert matches(migrated, "axf") == [2]
    _run_sql(migrated, "DELETE FROM pet WHERE id = 1")
    assert matches(migrated, "cla") == []
    assert _run_sql(migrated, f"INSERT INTO {FTS} ({FTS}, rank) VALUES ('integrity-check', 1)") == []

    created = f"sqlite+aiosqlite:///{tmp_path / 'created.db'}"
    asyncio.run(_create_all(created))
    asyncio.run(_create_all(created))  # again, as create_all may be: nothing to do
    schema = "SELECT type, name, sql FROM sqlite_master WHERE name LIKE 'pet_name_fts%' ORDER BY name"
    assert _run_sql(created, schema) == _run_sql(migrated, schema) != []


async def _create_all(url: str) -> None:
    from petstore import db
    from petstore.config import Settings

    engine = db.create_engine(Settings(database_url=url, plugins=(), env="test"))
    try:
        await db.create_all(engine)
    finally:
        await engine.dispose()


@pytest.mark.postgres
def test_on_postgresql_names_get_a_trigram_index_that_a_substring_search_uses(pg_url: str) -> None:
    migrate(pg_url)
    (definition,) = _run_sql(pg_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_pet_name_trgm'")[0]
    assert "USING gin" in definition and "gin_trgm_ops" in definition
    # Names that differ as real names do (md5 digits): a substring few names hold is what the index
    # is for.
    _run_sql(
        pg_url,
        "INSERT INTO pet (name, status, photo_urls) "
        "SELECT 'Pet ' || md5(n::text), 'available', '[]' FROM generate_series(1, 50000) n",
    )
    # A bulk insert leaves the new entries in the GIN index's pending list (fastupdate), which every
    # scan must read through, and the planner prices that in: until autovacuum (or this) moves them
    # into the index proper, a seq scan is cheaper. Whether autovacuum had run decided this test.
    _run_sql(pg_url, "SELECT gin_clean_pending_list('ix_pet_name_trgm')")
    _run_sql(pg_url, "ANALYZE pet")
    fragment = hashlib.md5(b"4321").hexdigest()[3:11].upper()  # case-insensitively, mid-name
    plan = _run_sql(pg_url, f"EXPLAIN SELECT id FROM pet WHERE name ILIKE '%{fragment}%'")
    assert any("ix_pet_name_trgm" in line for (line,) in plan), plan
    _assert_matches_models(pg_url)  # the index is the revision's alone, not drift from the models
    command.downgrade(alembic_config(pg_url), "0003")
    assert _run_sql(pg_url, "SELECT 1 FROM pg_indexes WHERE indexname = 'ix_pet_name_trgm'") == []


@pytest.mark.postgres
def test_without_the_right_to_create_pg_trgm_the_revision_warns_and_goes_on_without_the_index(
    postgres_server: PostgresServer, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A role that may create tables but not extensions: the schema is complete but for that index."""
    database = pg_url.rsplit("/", 1)[1]
    role = f"no_ext_{database[-12:]}"
    postgres_server.psql(f"CREATE ROLE {role} LOGIN")
    postgres_server.psql(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}", dbname=database)
    url = pg_url.replace(f"//{postgres_server.superuser}@", f"//{role}@")
    try:
        with caplog.at_level(logging.WARNING, logger="petstore.migrations"):
            migrate(url)
        assert "pg_trgm extension cannot be created" in caplog.text and "CREATE INDEX ix_pet_name_trgm" in caplog.text
        assert "ix_pet_name_trgm" not in _inspect(url)["indexes"]
        _assert_matches_models(url)
    finally:
        postgres_server.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        postgres_server.psql(f"DROP ROLE IF EXISTS {role}")


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
    assert schema["revision"] == HEAD


@pytest.mark.postgres
async def test_migrate_async_on_postgresql(pg_url: str) -> None:
    await migrate_async(pg_url)
    schema = await asyncio.to_thread(_inspect, pg_url)
    assert schema["diff"] == []
    assert schema["revision"] == HEAD


# ------------------------------------------------------------------------------ plugin branches
# A plugin's tables come from its own Alembic branch (the migrations() hook), run by `petstore
# migrate` beside the core's: here the auth plugin's, on both databases.

AUTH_TABLES = {"auth_revocation", "auth_refresh_family"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'plugins.db'}"


@pytest.fixture
def cli_env(any_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """`petstore migrate`'s environment: ``any_url``, with the auth plugin loaded."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETSTORE_DATABASE_URL", any_url)
    monkeypatch.setenv("PETSTORE_PLUGINS", "plugins.auth")
    monkeypatch.setenv("PETSTORE_JWT_SECRET", "migrations-test-secret-0123456789abcdef")
    monkeypatch.setenv("PETSTORE_ENV", "test")
    return any_url


def _with_plugins(url: str) -> dict[str, Any]:
    """Like _inspect, compared with the core's models and the auth plugin's tables, and every head."""

    def read(connection: Connection) -> dict[str, Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include_object})
        inspector = inspect(connection)
        tables = set(inspector.get_table_names())
        return {
            "diff": compare_metadata(context, [SQLModel.metadata, AUTH_MIGRATIONS.metadata]),  # type: ignore[arg-type]
            "tables": {table for table in tables if not table.startswith(FTS)},  # SQLite's name index apart
            "fts_tables": {table for table in tables if table.startswith(FTS)},
            "indexes": {ix["name"] for table in tables for ix in inspector.get_indexes(table)},
            "heads": set(context.get_current_heads()),
        }

    async def run() -> dict[str, Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _all_heads() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config("unused://", [AUTH_MIGRATIONS])).get_heads())


def test_the_auth_branch_is_its_own_base_beside_the_core() -> None:
    script = ScriptDirectory.from_config(alembic_config("unused://", [AUTH_MIGRATIONS]))
    (base,) = [rev for rev in script.get_bases() if "auth" in rev]
    revision = script.get_revision(base)
    assert revision is not None and revision.branch_labels == {"auth"} and revision.dependencies is None
    core_only = ScriptDirectory.from_config(alembic_config("unused://"))
    assert len(_all_heads()) == len(set(core_only.get_heads())) + 1


def test_petstore_migrate_creates_the_plugin_tables_and_they_match_its_models(cli_env: str) -> None:
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0  # again: nothing to do
    schema = _with_plugins(cli_env)
    assert schema["diff"] == []
    assert schema["tables"] == core_tables(cli_env) | AUTH_TABLES
    assert {"ix_auth_revocation_created_at", "ix_auth_revocation_expires_at"} <= schema["indexes"]
    assert schema["heads"] == _all_heads() and "auth_0001" in schema["heads"]


def test_a_plugin_branch_downgrades_alone_and_with_the_core(cli_env: str) -> None:
    assert main(["migrate"]) == 0
    config = alembic_config(cli_env, [AUTH_MIGRATIONS])
    command.downgrade(config, "auth@base")
    schema = _with_plugins(cli_env)
    assert schema["tables"] == core_tables(cli_env)  # the core's tables untouched
    assert "auth_0001" not in schema["heads"]
    assert main(["migrate"]) == 0
    command.downgrade(config, "base")
    assert _with_plugins(cli_env)["tables"] == {"alembic_version"}
    assert main(["migrate"]) == 0
    assert _with_plugins(cli_env)["tables"] == core_tables(cli_env) | AUTH_TABLES


def test_migrating_without_a_plugin_whose_branch_the_database_holds_is_one_clear_line(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("PETSTORE_PLUGINS", "")
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("petstore: error: cannot migrate:") and "auth_0001" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.postgres
def test_0005_orders_names_by_code_point_on_postgresql_and_its_downgrade_restores_the_collation(pg_url: str) -> None:
    migrate(pg_url)
    definition = "SELECT pg_get_indexdef('ix_pet_name_id'::regclass)"
    assert 'name COLLATE "C", id' in _run_sql(pg_url, definition)[0][0]
    command.downgrade(alembic_config(pg_url), "0004")
    assert "COLLATE" not in _run_sql(pg_url, definition)[0][0]
    command.upgrade(alembic_config(pg_url), "head")
    _assert_matches_models(pg_url)


@pytest.mark.postgres
def test_0006_counts_each_committed_change_to_pets_once_whatever_it_touched(pg_url: str) -> None:
    """pet_version: one per transaction that changed pet or pet_tag, at its commit; none for a
    rollback or for other tables; and its downgrade leaves no trace."""
    migrate(pg_url)
    version = "SELECT n FROM pet_version"
    assert _run_sql(pg_url, version) == [(0,)]
    _run_sql(pg_url, "INSERT INTO tag (id, name) VALUES (1, 'calm')")  # not a pet: no change counted
    _run_sql(
        pg_url,  # one transaction of many rows, in two tables: one change
        "WITH p AS (INSERT INTO pet (name, status, photo_urls) SELECT 'p' || n, 'sold', '[]' "
        "FROM generate_series(1, 50) n RETURNING id) INSERT INTO pet_tag (pet_id, tag_id) SELECT id, 1 FROM p",
    )
    assert _run_sql(pg_url, version) == [(1,)]
    _run_sql(pg_url, "UPDATE pet SET status = 'available' WHERE name = 'p1'")
    _run_sql(pg_url, "DELETE FROM pet_tag WHERE pet_id = (SELECT min(id) FROM pet)")
    assert _run_sql(pg_url, version) == [(3,)]
    with pytest.raises(Exception, match="rolled back"):
        _run_sql(pg_url, "DO $$ BEGIN DELETE FROM pet; RAISE EXCEPTION 'rolled back'; END $$")
    _run_sql(pg_url, "TRUNCATE pet_tag")
    assert _run_sql(pg_url, version) == [(4,)]
    command.downgrade(alembic_config(pg_url), "0005")
    assert _run_sql(pg_url, "SELECT to_regclass('pet_version'), to_regproc('petstore_pet_version_bump')") == [
        (None, None)
    ]
    _run_sql(pg_url, "UPDATE pet SET status = 'pending'")  # no trigger left to fail
