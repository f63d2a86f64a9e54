"""Indexes for the pet search (``GET /api/v3/pet/search``): its orders, its tag filter, and on
PostgreSQL a trigram index for ``q``.

- ``ix_pet_name_id`` (name, id): ``sort=name`` / ``-name`` and their keyset cursors walk it
  instead of sorting the table (SQLite, 100,000 pets: 10 ms to 0.05 ms a page; PostgreSQL 35 ms
  to 0.3 ms).
- ``ix_pet_status_id`` (status, id) replaces ``ix_pet_status``: a status's pets in id order, the
  default sort, on PostgreSQL too (on SQLite an index already ends with the rowid).
- ``ix_pet_tag_tag_id`` (tag_id, pet_id): a tag's pets; the primary key (pet_id, tag_id) only
  finds a pet's tags.
- PostgreSQL: ``ix_pet_name_trgm``, a GIN index with ``gin_trgm_ops`` (``pg_trgm``), which serves
  ``name ILIKE '%q%'`` for ``q`` of three characters or more: a name that few pets or none have
  is found, and counted, without reading the table (100,000 pets: 30 to 90 ms to under 1 ms).
  ``pg_trgm`` is a trusted extension (PostgreSQL 13+): a database owner may create it. Where it
  cannot be created (not installed, or not allowed), the revision says so in a warning and goes
  on without the index: the search still answers, reading the table for ``q``. Once an
  administrator has created the extension, the index is one statement (docs/rest.md).

- SQLite: ``pet_name_fts``, an FTS5 table with the ``trigram`` tokenizer, external content (it
  holds the index, ``pet`` the names) kept in step by three triggers: SQLite has no index for
  ``LIKE '%q%'``, and this one answers ``q`` of three characters or more, and counts its matches,
  without reading the table (100,000 pets: a 30-80 ms count to under 7 ms, see
  ``petstore.db.fulltext``). Where SQLite lacks FTS5 or its trigram tokenizer (before 3.34), the
  revision says so in a warning and goes on without it, as for ``pg_trgm``.

Category names already have ``ix_category_name`` and pets ``ix_pet_category_id``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("petstore.migrations")

#: Written out, not imported: a revision must not change when the code does.
TRIGRAM_INDEX = "ix_pet_name_trgm"
FTS_TABLE = "pet_name_fts"
FTS_STATEMENTS = (
    "CREATE VIRTUAL TABLE pet_name_fts USING fts5(name, content='pet', content_rowid='id', "
    "tokenize='trigram case_sensitive 0')",
    "CREATE TRIGGER pet_name_fts_insert AFTER INSERT ON pet BEGIN "
    "INSERT INTO pet_name_fts (rowid, name) VALUES (new.id, new.name); END",
    "CREATE TRIGGER pet_name_fts_delete AFTER DELETE ON pet BEGIN "
    "INSERT INTO pet_name_fts (pet_name_fts, rowid, name) VALUES ('delete', old.id, old.name); END",
    "CREATE TRIGGER pet_name_fts_update AFTER UPDATE OF name ON pet BEGIN "
    "INSERT INTO pet_name_fts (pet_name_fts, rowid, name) VALUES ('delete', old.id, old.name); "
    "INSERT INTO pet_name_fts (rowid, name) VALUES (new.id, new.name); END",
    "INSERT INTO pet_name_fts (pet_name_fts) VALUES ('rebuild')",
)


def _trigram_extension(bind: sa.Connection) -> bool:
    """Whether ``pg_trgm`` is there, created here if need be (in a savepoint: a refusal must not
    abort the revision's transaction)."""
    if bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first() is not None:
        return True
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        logger.warning(
            "revision 0004: no trigram index on pet.name, the pg_trgm extension cannot be created (%s); "
            "searching names by q reads the whole pet table. To add it later, as a superuser or the "
            "database owner: CREATE EXTENSION pg_trgm; CREATE INDEX %s ON pet USING gin (name gin_trgm_ops);",
            reason,
            TRIGRAM_INDEX,
        )
        return False
    return True


def _sqlite_name_index(bind: sa.Connection) -> None:
    try:
        bind.exec_driver_sql(FTS_STATEMENTS[0])
    except sa.exc.OperationalError as exc:  # no FTS5, or no trigram tokenizer (SQLite < 3.34)
        logger.warning(
            "revision 0004: no trigram index of pet names, this SQLite cannot create one (%s); "
            "searching names by q reads the whole pet table",
            str(exc.orig).strip() if exc.orig is not None else type(exc).__name__,
        )
        return
    for statement in FTS_STATEMENTS[1:]:
        bind.exec_driver_sql(statement)


def upgrade() -> None:
    op.create_index("ix_pet_name_id", "pet", ["name", "id"])
    op.create_index("ix_pet_status_id", "pet", ["status", "id"])
    op.drop_index("ix_pet_status", table_name="pet")
    op.create_index("ix_pet_tag_tag_id", "pet_tag", ["tag_id", "pet_id"])
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _sqlite_name_index(bind)
    if bind.dialect.name == "postgresql" and _trigram_extension(bind):
        op.create_index(TRIGRAM_INDEX, "pet", ["name"], postgresql_using="gin", postgresql_ops={"name": "gin_trgm_ops"})


def downgrade() -> None:
    # The extension stays: other databases' objects, or an administrator's, may use it.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text(f"DROP INDEX IF EXISTS {TRIGRAM_INDEX}"))
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("insert", "delete", "update"):
            op.execute(sa.text(f"DROP TRIGGER IF EXISTS {FTS_TABLE}_{trigger}"))
        op.execute(sa.text(f"DROP TABLE IF EXISTS {FTS_TABLE}"))
    op.drop_index("ix_pet_tag_tag_id", table_name="pet_tag")
    op.create_index("ix_pet_status", "pet", ["status"])
    op.drop_index("ix_pet_status_id", table_name="pet")
    op.drop_index("ix_pet_name_id", table_name="pet")
