"""Schema migrations (Alembic), run by ``petstore migrate`` or :func:`migrate`.

Configured in code so that an installed package needs no ``alembic.ini`` on disk;
``petstore/alembic.ini`` exists only for developers writing a new revision::

    alembic -c petstore/alembic.ini revision --autogenerate -m "what changed"
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

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
    from a command or a thread, not from a running event loop.
    """
    command.upgrade(alembic_config(database_url), revision)
