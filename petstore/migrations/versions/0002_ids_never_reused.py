"""Ids are never reused: SQLite's pet, order, user and outbox tables become AUTOINCREMENT.

Without AUTOINCREMENT SQLite gives a new row the largest id in use plus one, so deleting the
newest pet hands its id to the next one: a dashboard watching ``pet:{id}`` sees the deleted pet
come back as another and old orders point at it; an outbox id seen again is dropped by the
broker as a repeat. SQLite cannot add AUTOINCREMENT to a table, so each is rebuilt (batch mode)
with its rows, indexes and constraints. PostgreSQL's sequences never go back by themselves:
nothing to do there (``petstore.db.sync_id_sequence`` keeps them from being moved back).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("pet", "purchase_order", "users", "outbox")
#: petstore.db.SEQUENCE_CEILING (2**52, half of the largest id a JavaScript number holds), written
#: out: a revision must not change when the code does.
SEQUENCE_CEILING = 2**52


def _rebuild(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # With foreign keys on, dropping the old pet table would cascade to pet_tag and the old users
    # table would empty purchase_order.user_id. The pragma cannot change inside a transaction.
    if bind.execute(sa.text("PRAGMA foreign_keys")).scalar():
        raise RuntimeError(
            "revision 0002 rebuilds tables: run it with SQLite's foreign keys off (petstore migrate does)"
        )
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass
    if autoincrement:
        # Copying the rows set each table's counter to its largest id; one a client chose at or
        # above the ceiling must not be where generated ids go on from (see petstore.db).
        for table in TABLES:
            bind.execute(
                sa.text(
                    "UPDATE sqlite_sequence SET seq = "  # noqa: S608 (table is ours)
                    f'(SELECT COALESCE(max(id), 0) FROM "{table}" WHERE id < :ceiling) WHERE name = :table'
                ),
                {"ceiling": SEQUENCE_CEILING, "table": table},
            )
    problems = bind.execute(sa.text("PRAGMA foreign_key_check")).all()
    if problems:
        raise RuntimeError(f"revision 0002: foreign keys broken after the rebuild: {problems[:5]}")


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
