"""The outbox keeps the trace context of the work that wrote each event (nullable).

A tracing plugin (``plugins.tracing``) follows an event from the request that made the change to
its publish and to every instance's delivery with it: the core stores what the plugin hands it
(``trace_context()`` in ``petstore.plugin``) as JSON beside the row, and null without one. A plain
nullable column: existing rows stay as they are, and no index is needed (the relay reads it
with the row it already reads).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("trace_context", sa.JSON(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table: keep it AUTOINCREMENT, as 0002 made it.
    with op.batch_alter_table("outbox", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("trace_context")
