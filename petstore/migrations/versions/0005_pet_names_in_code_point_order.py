"""Pet names in one order on every database: by code point, as SQLite's BINARY collation has them.

``sort=name`` on PostgreSQL followed the database's collation: ``en_US.UTF-8`` or an ICU locale
put ``apple`` before ``Zebra`` where SQLite puts ``Zebra`` first, and a client placing a live row
(the dashboard) could not know which. The search now orders by ``name COLLATE "C"`` there (byte
order of UTF-8, which is code point order), and ``ix_pet_name_id`` is rebuilt with that collation
so that it still serves the order and its keyset cursors. SQLite: nothing to do.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild(collation: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_pet_name_id", table_name="pet")
    op.create_index("ix_pet_name_id", "pet", ["name", "id"], postgresql_ops={"name": collation} if collation else {})


def upgrade() -> None:
    _rebuild('COLLATE "C"')


def downgrade() -> None:
    _rebuild("")
