"""Settings, read from ``PETSTORE_*`` environment variables and a ``.env`` file (SPEC §1).

``Settings()`` reads the environment; ``Settings(database_url=...)`` overrides it, which is how
tests build two apps with two configurations in one process.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from petstore import redis_url

logger = logging.getLogger("petstore.config")

DEFAULT_PLUGINS = ("plugins.auth", "plugins.ratelimit", "plugins.metrics")
PREFIX = "PETSTORE_"
#: How alike (difflib's ratio, after the prefix) an unknown name must be to a known one to be
#: called its misspelling: RATE_LIMT and RATE_LIMIT are, LISTEN (haproxy's) and ENV are not.
MISSPELLING_CUTOFF = 0.8


def own_origins(port: int) -> tuple[str, str]:
    """The origins of a dashboard served by this machine on ``port``: ``PETSTORE_ALLOWED_ORIGINS``'s
    default, for the port ``petstore serve`` listens on (8000 unless told)."""
    return (f"http://127.0.0.1:{port}", f"http://localhost:{port}")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PETSTORE_", env_file=".env", extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///./petstore.db"
    redis_url: str | None = None
    plugins: Annotated[tuple[str, ...], NoDecode] = DEFAULT_PLUGINS
    #: Unset, ``petstore serve --port N`` allows the origins of port N (:func:`own_origins`).
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = own_origins(8000)
    rate_limit: str = "100/minute"
    env: Literal["development", "production", "test"] = "development"
    #: ``json``: one JSON object per log line (:mod:`petstore.logs`); unset: JSON in production.
    log_format: Literal["text", "json"] | None = None

    # Beyond SPEC §1: operational knobs with safe defaults.
    media_dir: Path = Path("./media")
    max_image_bytes: int = 5 * 1024 * 1024
    max_body_bytes: int = 1024 * 1024
    history_size: int = 1000
    history_ttl_seconds: int = 24 * 3600
    ws_queue_size: int = 256
    ws_max_subscriptions: int = 100
    ws_max_message_bytes: int = 64 * 1024
    ws_heartbeat_seconds: int = 25
    ws_auth_timeout_seconds: float = 10.0
    #: From SIGTERM to exit, at most this long whatever the clients do (petstore.server.shutdown).
    shutdown_timeout: float = Field(default=10.0, gt=0)
    # What a client may make the HTTP layer hold (petstore.server.uvicorn_http, petstore.cli._protocols).
    #: The request line and headers together, at most this many bytes (431 beyond). The upper
    #: bound keeps what the parser copies while a header grows small.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    #: A request's line and headers must all arrive within this long of its first byte (408 beyond).
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    #: While a request's body is incomplete, at most this long without a byte of it (408, or a close).
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    #: An idle keep-alive connection is closed after this long (uvicorn's ``timeout_keep_alive``).
    keep_alive_seconds: int = Field(default=5, ge=1, le=3600)
    #: Connections (HTTP and WebSocket) at once (uvicorn's ``limit_concurrency``): at it, a new one
    #: closes the one waiting longest for its client's headers or idle, else requests get 503.
    #: Unset: a little under the process's limit on open files (petstore.cli.default_concurrency).
    limit_concurrency: int | None = Field(default=None, ge=1)

    @field_validator("plugins", "allowed_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("database_url")
    @classmethod
    def _driver_installed(cls, value: str) -> str:
        # asyncpg is the [postgres] extra: without it SQLAlchemy would fail later, deep in a traceback.
        if value.split(":", 1)[0] == "postgresql+asyncpg" and importlib.util.find_spec("asyncpg") is None:
            raise ValueError("the asyncpg driver is not installed: pip install 'petstore[postgres]'")
        return value

    @field_validator("redis_url", "limit_concurrency", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_form(cls, value: str | None) -> str | None:
        if value is not None:
            redis_url.parse(value)  # one of SPEC §1's forms, or a ValueError naming the mistake
        return value

    @property
    def effective_log_format(self) -> Literal["text", "json"]:
        """``PETSTORE_LOG_FORMAT``, else JSON in production (for a log pipeline), text elsewhere."""
        if self.log_format is not None:
            return self.log_format
        return "json" if self.env == "production" else "text"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def production_problems(self) -> list[str]:
        """What is unsafe about these settings when ``PETSTORE_ENV=production`` (nothing otherwise).

        The core's part: plugins refuse their own unsafe settings when they load (the auth plugin
        a missing or short ``PETSTORE_JWT_SECRET``); :func:`petstore.app.load_checked_plugins`
        reports them together.
        """
        if self.env != "production":
            return []
        problems = []
        if self.is_sqlite:
            problems.append("PETSTORE_DATABASE_URL points at SQLite; use postgresql+asyncpg://")
        if any(origin == "*" or not origin for origin in self.allowed_origins):
            problems.append("PETSTORE_ALLOWED_ORIGINS contains a wildcard")
        return problems


def variables(settings: type[BaseSettings]) -> list[str]:
    """The environment variables a pydantic settings class reads (its prefix and each field's name)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return [f"{prefix}{name}".upper() for name in settings.model_fields]


#: What the core reads: :class:`Settings`, the demo seed (``petstore seed``, ``scripts/serve``) and
#: ``petstore watch``. Plugins declare their own (``environment()``, :mod:`petstore.plugin`).
CORE_VARIABLES = frozenset(
    [*variables(Settings), "PETSTORE_DEMO_PASSWORD", "PETSTORE_DEMO_PETS", "PETSTORE_VENV", "PETSTORE_TOKEN"]
)


def misspelled(environ: Mapping[str, str], known: Iterable[str]) -> list[tuple[str, str]]:
    """``(set, meant)`` for each ``PETSTORE_*`` variable of ``environ`` that no one reads but that is
    close to one that someone does: most likely a typo, which would otherwise be silently ignored."""
    known = {name.upper() for name in known}
    suffixes = {name[len(PREFIX) :]: name for name in known if name.startswith(PREFIX)}
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIX) or upper in known:
            continue
        close = difflib.get_close_matches(upper[len(PREFIX) :], suffixes, n=1, cutoff=MISSPELLING_CUTOFF)
        if close:
            found.append((name, suffixes[close[0]]))
    return found
