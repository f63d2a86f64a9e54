"""Schema migrations (Alembic), run by ``petstore migrate`` or :func:`migrate`.

Configured in code so that an installed package needs no ``alembic.ini`` on disk;
``petstore/alembic.ini`` exists only for developers writing a new revision::

    alembic -c petstore/alembic.ini revision --autogenerate -m "what changed"
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

HERE = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    # Through attributes, not set_main_option: a password in the URL may contain "%", which
    # ConfigParser would try to interpolate.
    config.attributes["database_url"] = database_url
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` up to ``revision`` (the newest by default).

    Synchronous: the async work runs in its own event loop inside Alembic's env.py, so call it
    from a command or a thread; inside a running event loop, await :func:`migrate_async`.
    """
    command.upgrade(alembic_config(database_url), revision)


async def migrate_async(database_url: str, revision: str = "head") -> None:
    """:func:`migrate` for code already in an event loop (async fixtures, start-up hooks)."""

    def upgrade(connection: Connection) -> None:
        config = alembic_config(database_url)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade)
    finally:
        await engine.dispose()
