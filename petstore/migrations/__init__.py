"""Schema migrations (Alembic), run by ``petstore migrate`` or :func:`migrate`.

The core's revisions live in ``versions/``; each plugin may own a branch of its own (the
``migrations()`` hook of :mod:`petstore.plugin`), given to Alembic as one more version location,
and :func:`migrate` upgrades every branch (``heads``). Configured in code so that an installed
package needs no ``alembic.ini`` on disk; ``petstore/alembic.ini`` exists only for developers
writing a new core revision, against a fresh database::

    alembic -c petstore/alembic.ini revision --autogenerate -m "what changed"

A plugin's revision is written the same way through this module's configuration, e.g.
``command.revision(alembic_config(url, [auth_migrations]), autogenerate=True, head="auth@head", message=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from petstore.plugin import PluginMigrations

HERE = Path(__file__).parent
#: Every branch's newest revision: the core's and each plugin's.
HEADS = "heads"
#: Indexes a revision makes on one database only, and only where it can, that the models do not
#: declare: PostgreSQL's trigram index on pet names (revision 0004, where ``pg_trgm`` can be
#: created). Comparing the schema with the models must neither count them as drift nor drop them.
DATABASE_SPECIFIC_INDEXES = frozenset({"ix_pet_name_trgm"})
#: The same for tables: SQLite's FTS5 table of pet names and the shadow tables FTS5 keeps beside
#: it (``pet_name_fts_data``, ``_idx``, ``_docsize``, ``_config``): :mod:`petstore.db.fulltext`.
DATABASE_SPECIFIC_TABLE_PREFIX = "pet_name_fts"
#: And PostgreSQL's count of committed changes to pets (revision 0006, :mod:`petstore.db.pet_version`).
DATABASE_SPECIFIC_TABLES = frozenset({"pet_version"})


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic's ``include_object`` hook for autogenerate and ``compare_metadata``: everything but
    the database-specific indexes and tables above, found in the database."""
    if not reflected or compare_to is not None or name is None:
        return True
    if type_ == "index":
        return name not in DATABASE_SPECIFIC_INDEXES
    if type_ == "table":
        return not name.startswith(DATABASE_SPECIFIC_TABLE_PREFIX) and name not in DATABASE_SPECIFIC_TABLES
    return True


def alembic_config(database_url: str, plugins: Sequence[PluginMigrations] = ()) -> Config:
    """Alembic's configuration for the core's revisions and those of ``plugins``."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    locations = [HERE / "versions", *(branch.versions for branch in plugins)]
    config.set_main_option("path_separator", "os")
    # "%" doubled: ConfigParser would read it as interpolation.
    config.set_main_option("version_locations", os.pathsep.join(str(p).replace("%", "%%") for p in locations))
    # Through attributes, not set_main_option: a password in the URL may contain "%" too.
    config.attributes["database_url"] = database_url
    config.attributes["plugin_metadata"] = [branch.metadata for branch in plugins]
    return config


def migrate(database_url: str, revision: str = HEADS, plugins: Sequence[PluginMigrations] = ()) -> None:
    """Bring the database at ``database_url`` up to ``revision`` (every branch's newest by default).

    Synchronous: the async work runs in its own event loop inside Alembic's env.py, so call it
    from a command or a thread; inside a running event loop, await :func:`migrate_async`.
    """
    command.upgrade(alembic_config(database_url, plugins), revision)


async def migrate_async(database_url: str, revision: str = HEADS, plugins: Sequence[PluginMigrations] = ()) -> None:
    """:func:`migrate` for code already in an event loop (async fixtures, start-up hooks)."""

    def upgrade(connection: Connection) -> None:
        config = alembic_config(database_url, plugins)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade)
    finally:
        await engine.dispose()
