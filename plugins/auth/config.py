"""The auth plugin's own settings (``PETSTORE_JWT_*``), and the key set they describe.

HS256 with ``PETSTORE_JWT_SECRET`` is the default: required when ``PETSTORE_ENV=production``
(at least 32 characters), otherwise generated once and kept beside the SQLite database (or in
the working directory) with a warning. For RS256/ES256, point
``PETSTORE_JWT_PRIVATE_KEY_FILE`` at a PEM private key; during a rotation list the previous
public keys in ``PETSTORE_JWT_PUBLIC_KEYS`` (``path`` or ``kid=path``, comma-separated) so that
tokens signed before the switch stay valid until they expire. ``PETSTORE_JWT_PREVIOUS_SECRETS``
does the same for HS256. ``PETSTORE_JWT_REVOCATION_POLL_SECONDS`` (5 by default) bounds how long
a token revoked on another instance is still accepted here while Redis is away.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from petstore.config import Settings
from petstore.errors import ConfigurationError
from plugins.tokens import KeySet

logger = logging.getLogger("plugins.auth.config")

#: The shortest HS256 secret production accepts (RFC 7518 §3.2: a key as long as the hash).
MIN_SECRET_LENGTH = 32


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PETSTORE_JWT_", env_file=".env", extra="ignore", frozen=True)

    #: ``PETSTORE_JWT_SECRET``: the HS256 signing key.
    secret: str | None = Field(default=None, repr=False)
    algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    private_key_file: Path | None = None
    key_id: str | None = None
    public_keys: Annotated[tuple[str, ...], NoDecode] = ()
    previous_secrets: Annotated[tuple[str, ...], NoDecode] = Field(default=(), repr=False)
    issuer: str = "petstore"
    audience: str = "petstore-api"
    access_ttl_seconds: int = Field(default=15 * 60, gt=0)
    refresh_ttl_seconds: int = Field(default=14 * 24 * 3600, gt=0)
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    #: How often each instance reads new revocations from the database: during a Redis outage (or
    #: without Redis) the longest a token revoked on another instance is still accepted here.
    revocation_poll_seconds: float = Field(default=5.0, gt=0, le=300)

    @field_validator("public_keys", "previous_secrets", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("secret", "private_key_file", "key_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def key_set(self, settings: Settings) -> KeySet:
        """The keys to sign and verify with; a clear :class:`ConfigurationError` when they are unusable."""
        try:
            if self.algorithm == "HS256":
                return KeySet.hmac(self.resolved_secret(settings), self.previous_secrets)
            if self.private_key_file is None:
                raise ConfigurationError(f"PETSTORE_JWT_ALGORITHM={self.algorithm} needs PETSTORE_JWT_PRIVATE_KEY_FILE")
            previous = []
            for entry in self.public_keys:
                kid, sep, path = entry.partition("=")
                previous.append((kid if sep else None, Path(path if sep else entry).read_text()))
            return KeySet.asymmetric(self.algorithm, self.private_key_file.read_text(), self.key_id, previous)
        except OSError as exc:
            raise ConfigurationError(f"cannot read a JWT key file: {exc.strerror}: {exc.filename}") from None
        except ValueError as exc:
            raise ConfigurationError(f"unusable JWT key: {exc}") from None

    def secret_file(self, settings: Settings) -> Path:
        """Where the development JWT secret is kept: beside the SQLite database, else in the working dir."""
        if settings.is_sqlite and ":memory:" not in settings.database_url:
            db_path = Path(settings.database_url.split(":///", 1)[1])
            return db_path.parent / ".petstore-jwt-secret"
        return Path(".petstore-jwt-secret")

    def resolved_secret(self, settings: Settings) -> str:
        """The signing key: configured, or (development only) generated once and kept on disk."""
        if settings.env == "production":
            if not self.secret:
                raise ConfigurationError("PETSTORE_JWT_SECRET is not set (required when PETSTORE_ENV=production)")
            if len(self.secret) < MIN_SECRET_LENGTH:
                raise ConfigurationError(f"PETSTORE_JWT_SECRET is shorter than {MIN_SECRET_LENGTH} characters")
        if self.secret:
            return self.secret
        path = self.secret_file(settings)
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
