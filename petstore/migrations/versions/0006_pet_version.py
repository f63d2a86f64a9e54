"""PostgreSQL: ``pet_version``, the count of committed changes to pets that tells the search's
kept count of matches whether it still holds (``petstore.db.pet_version`` says why and how).

A one-row table and a deferred constraint trigger on ``pet`` and ``pet_tag`` that adds one per
transaction as it commits (and a statement trigger for ``TRUNCATE``). SQLite: nothing, its own
``PRAGMA data_version`` does the same.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Written out, not imported: a revision must not change when the code does.
STATEMENTS = (
    "CREATE TABLE pet_version (id integer PRIMARY KEY CHECK (id = 1), n bigint NOT NULL)",
    "INSERT INTO pet_version (id, n) VALUES (1, 0)",
    """CREATE FUNCTION petstore_pet_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('petstore.pet_version_bumped', true) IS DISTINCT FROM txid_current()::text THEN
        PERFORM set_config('petstore.pet_version_bumped', txid_current()::text, true);
        UPDATE pet_version SET n = n + 1 WHERE id = 1;
    END IF;
    RETURN NULL;
END
$$""",
    "CREATE CONSTRAINT TRIGGER pet_version_bump AFTER INSERT OR UPDATE OR DELETE ON pet "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION petstore_pet_version_bump()",
    "CREATE CONSTRAINT TRIGGER pet_version_bump AFTER INSERT OR UPDATE OR DELETE ON pet_tag "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION petstore_pet_version_bump()",
    "CREATE TRIGGER pet_version_truncate AFTER TRUNCATE ON pet "
    "FOR EACH STATEMENT EXECUTE FUNCTION petstore_pet_version_bump()",
    "CREATE TRIGGER pet_version_truncate AFTER TRUNCATE ON pet_tag "
    "FOR EACH STATEMENT EXECUTE FUNCTION petstore_pet_version_bump()",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in STATEMENTS:
        op.execute(sa.text(statement))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("pet", "pet_tag"):
        op.execute(sa.text(f"DROP TRIGGER IF EXISTS pet_version_bump ON {table}"))
        op.execute(sa.text(f"DROP TRIGGER IF EXISTS pet_version_truncate ON {table}"))
    op.execute(sa.text("DROP FUNCTION IF EXISTS petstore_pet_version_bump()"))
    op.execute(sa.text("DROP TABLE IF EXISTS pet_version"))
