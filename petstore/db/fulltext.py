"""SQLite's trigram index of pet names: an FTS5 table, for ``q`` of ``GET /pet/search``.

SQLite has no index that serves ``LIKE '%rex%'``: without one, a name that few pets have is
found, and the matches counted, by reading every row. An FTS5 table with the ``trigram``
tokenizer answers a substring of three characters or more from its index instead (100,000
pets: 30-80 ms to under 4 ms for the count; docs/rest.md has the figures). It is an
*external-content* table (``content='pet'``): it keeps only the index, and three triggers keep it
in step with ``pet``. ``case_sensitive 0`` folds case, every Unicode letter's, not only ASCII's
as ``LIKE`` does.

Revision 0004 creates it (its SQL written out there, as a revision must not change with the code);
:func:`create` makes the same for databases made from the models (:func:`petstore.db.create_all`).
Each new connection looks once whether the database has the table (:func:`detect`, from the
engine's ``connect`` event) and says so in its ``info``; a search on a connection without it reads
the table with ``LIKE``, slower and still right. A later revision that rebuilds ``pet`` (batch
mode) drops the triggers with the old table and must create them again.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Integer, column, text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.selectable import TextualSelect

TABLE = "pet_name_fts"
#: The key of ``Connection.info`` that says whether this connection's database has the table.
INFO_KEY = "petstore.pet_name_fts"
#: The trigram tokenizer reads three characters at a time: a shorter ``q`` has no trigram to look up.
SHORTEST = 3

#: What revision 0004 runs on SQLite (the same statements are written out there), written out
#: here too, plain SQL: what a reader checks against the revision.
STATEMENTS = (
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


def trigram_supported() -> bool:
    """Whether this process's SQLite has FTS5 with the trigram tokenizer (SQLite 3.34+, built with FTS5)."""
    probe = sqlite3.connect(":memory:")
    try:
        probe.execute("CREATE VIRTUAL TABLE probe USING fts5(name, tokenize='trigram')")
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()
    return True


def create(connection: Connection) -> None:
    """The table and its triggers, on a SQLite database made from the models (where SQLite can),
    unless it has them already: like ``create_all``, it may run again on the same database."""
    if connection.dialect.name != "sqlite" or not trigram_supported():
        return
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pet_name_fts'"
    if connection.exec_driver_sql(exists).first() is None:
        for statement in STATEMENTS:
            connection.exec_driver_sql(statement)


def detect(dbapi_connection: Any) -> bool:
    """Whether the database of this (DB-API) connection has the table."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))
        return cursor.fetchone() is not None
    finally:
        cursor.close()


def phrase(q: str) -> str:
    """``q`` as one FTS5 string: a phrase, its trigrams in a row, so a substring match."""
    return '"' + q.replace('"', '""') + '"'


def matching(q: str) -> TextualSelect:
    """The ids of the pets whose name holds ``q`` (of :data:`SHORTEST` characters or more), in any case."""
    query = text("SELECT rowid FROM pet_name_fts WHERE pet_name_fts MATCH :phrase").bindparams(phrase=phrase(q))
    return query.columns(column("rowid", Integer))
