"""PostgreSQL's count of committed changes to pets: what tells a kept answer it still holds.

:meth:`petstore.db.reader.Reader.kept` keeps answers that change only when pets do (the search's
count of matches) until the database moves. SQLite says so itself (``PRAGMA data_version``).
PostgreSQL has no cheap mark that follows *visibility*: sequences are taken in transaction order,
not commit order, and a transaction becomes visible a moment after its commit record moves the
WAL position, so neither can say that a count read now is still what a new snapshot would count.

So a one-row table, ``pet_version``, counts the transactions that changed ``pet`` or ``pet_tag``:
a trigger adds one, once per transaction, as the transaction commits (a deferred constraint
trigger; a transaction-local setting remembers that it did). The row's lock is held from there to
the end of the commit, so the transactions that change pets add their ones in the order they
become visible: a snapshot that sees ``n`` sees exactly the first ``n`` of them. A count read in
the same statement as ``n`` (:data:`SEEN`) therefore holds for as long as ``n`` stays: every
request reads ``n`` first (one index lookup), and counts again when it moved.

What it costs a write: one row update per transaction, at commit, and commits of pet changes
wait for one another for that update's moment (not for the whole transaction: the lock is the
last a transaction takes, so it cannot deadlock). ``TRUNCATE`` adds one as well.

Revision 0006 creates it (its SQL written out there); :func:`create` makes the same for
databases made from the models (:func:`petstore.db.create_all`). A database without the table
(a revision before 0006) keeps nothing and counts every time.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

TABLE = "pet_version"
#: The version now, as the reader reads it.
READ = "SELECT n FROM pet_version WHERE id = 1"
#: The version a statement's own snapshot sees, as a column of it.
SEEN = "(SELECT n FROM pet_version WHERE id = 1)"

#: What revision 0006 runs on PostgreSQL (written out there too).
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


def create(connection: Connection) -> None:
    """Make the table and its triggers on PostgreSQL, unless there (for ``run_sync``; nothing elsewhere)."""
    if connection.dialect.name != "postgresql":
        return
    if connection.execute(text(f"SELECT to_regclass('{TABLE}')")).scalar() is not None:
        return
    for statement in STATEMENTS:
        connection.execute(text(statement))
