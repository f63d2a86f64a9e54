"""Settings, read from ``PETSTORE_*`` environment variables and a ``.env`` file (SPEC §1).

``Settings()`` reads the environment; ``Settings(database_url=...)`` overrides it, which is how
tests build two apps with two configurations in one process.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from petstore.errors import ConfigurationError

logger = logging.getLogger("petstore.config")

DEFAULT_PLUGINS = ("plugins.auth", "plugins.ratelimit", "plugins.metrics")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PETSTORE_", env_file=".env", extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///./petstore.db"
    redis_url: str | None = None
    jwt_secret: str | None = Field(default=None, repr=False)
    plugins: Annotated[tuple[str, ...], NoDecode] = DEFAULT_PLUGINS
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ("http://127.0.0.1:8000", "http://localhost:8000")
    rate_limit: str = "100/minute"
    env: Literal["development", "production", "test"] = "development"

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

    @field_validator("redis_url", "jwt_secret", "limit_concurrency", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def check_production(self) -> None:
        """Refuse unsafe defaults when ``PETSTORE_ENV=production``, naming every problem at once."""
        if self.env != "production":
            return
        problems = []
        if not self.jwt_secret:
            problems.append("PETSTORE_JWT_SECRET is not set")
        elif len(self.jwt_secret) < 32:
            problems.append("PETSTORE_JWT_SECRET is shorter than 32 characters")
        if self.is_sqlite:
            problems.append("PETSTORE_DATABASE_URL points at SQLite; use postgresql+asyncpg://")
        if any(origin == "*" or not origin for origin in self.allowed_origins):
            problems.append("PETSTORE_ALLOWED_ORIGINS contains a wildcard")
        if problems:
            raise ConfigurationError("refusing to start with PETSTORE_ENV=production: " + "; ".join(problems))

    def secret_file(self) -> Path:
        """Where the development JWT secret is kept: beside the SQLite database, else in the working dir."""
        if self.is_sqlite and ":memory:" not in self.database_url:
            db_path = Path(self.database_url.split(":///", 1)[1])
            return db_path.parent / ".petstore-jwt-secret"
        return Path(".petstore-jwt-secret")

    def resolved_jwt_secret(self) -> str:
        """The signing key: configured, or (development only) generated once and kept on disk."""
        if self.jwt_secret:
            return self.jwt_secret
        if self.env == "production":
            raise ConfigurationError("PETSTORE_JWT_SECRET is required when PETSTORE_ENV=production")
        path = self.secret_file()
        if path.exists():
            return path.read_text().strip()
        secret = secrets.token_urlsafe(48)
        path.parent.mkdir(parents=True, exist_ok=True)
        # `serve --workers N` starts N processes at once: each writes a private temp file (0600 from
        # the start) and links it into place; link fails if another won, and then everyone uses its
        # secret, so tokens from one worker verify in all of them.
        temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            file.write(secret)
        try:
            os.link(temp, path)
        except FileExistsError:
            return path.read_text().strip()
        finally:
            temp.unlink(missing_ok=True)
        logger.warning("PETSTORE_JWT_SECRET is not set: generated a development secret in %s", path)
        return secret
