"""Issuing, verifying, refreshing and revoking tokens: everything the endpoints and the middleware share.

Access tokens carry ``typ=access``, refresh tokens ``typ=refresh``; each is refused where the
other is expected. Both carry ``fam``, the refresh family started at login, so revoking a family
ends its access tokens too. Who the user *is* (their role, whether they still exist, whether
their password changed since) is read from the database on every verification: a deleted
user's token stops working at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Table
from sqlalchemy.exc import SQLAlchemyError

from petstore.access import AuthFailed, Principal
from petstore.errors import PetstoreError
from petstore.models import MAX_ID, Role, User
from petstore.plugin import App
from plugins.auth.config import AuthSettings
from plugins.auth.store import Rotation, TokenStore
from plugins.tokens import KeySet, TokenError

ACCESS = "access"
REFRESH = "refresh"
#: The longest ``jti`` or ``fam`` accepted (ours have 24 characters): ``family:<id>`` stays within
#: the 64 characters of a revocation key.
MAX_TOKEN_ID_CHARS = 48


class BackendUnavailable(PetstoreError):
    """The database cannot answer; a token cannot be checked or issued right now (503, not 401)."""


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    expires_at: int
    refresh_token: str | None

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


def _new_id() -> str:
    return secrets.token_urlsafe(18)


def _bounded(claims: dict[str, Any]) -> bool:
    """The claims of ours that the plugin reads, of their type and within bounds (the time claims are
    checked by :class:`~plugins.tokens.KeySet`): an id the database can look up, token and family ids
    whose revocation keys fit their table."""
    uid = claims.get("uid")
    ids = (claims.get("jti"), claims.get("fam"))
    return (
        type(uid) is int  # not True, not 1.0
        and 0 <= uid <= MAX_ID
        and all(isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_ID_CHARS for value in ids)
    )


def credential_stamp(user: User) -> str:
    """Changes when the user's password does, or when the account is deleted and made again.

    A digest of the salted Argon2 hash: useless for guessing the password (the salt is inside
    what is digested), and it ties a token to this very account, not to a reused id or name.
    """
    return _stamp(user.password_hash)


def _stamp(password_hash: str) -> str:
    digest = hashlib.sha256(b"petstore-stamp:" + password_hash.encode()).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode()


def _still_theirs(claims: dict[str, Any], username: str | None, password_hash: str) -> None:
    """Refuses claims whose user (``username`` None: no user has their id) is gone or changed: a
    deleted user's id may be reused by someone new, and a password change ends every session
    that the old password opened."""
    if username is None or username != claims["sub"]:
        raise AuthFailed("unknown_user")
    if not hmac.compare_digest(str(claims.get("stp", "")), _stamp(password_hash)):
        raise AuthFailed("stale_credentials", "the password changed: log in again")


_USERS: Table = User.__table__  # type: ignore[attr-defined]
#: What checking an access token needs of its user, as of now: built once, run by the app's
#: reader (one statement, no session: a session and the ORM's load were a tenth of a POST's CPU).
_ACCOUNT = sa.select(_USERS.c.username, _USERS.c.role, _USERS.c.password_hash).where(_USERS.c.id == sa.bindparam("uid"))


class Authority:
    def __init__(self, config: AuthSettings, keys: KeySet, store: TokenStore, state: App) -> None:
        self.config = config
        self.keys = keys
        self.store = store
        self.state = state

    # ------------------------------------------------------------------ issuing

    def _claims(self, user: User, kind: str, family: str, ttl: int, now: int) -> dict[str, Any]:
        return {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": user.username,
            "uid": user.id,
            "role": user.role,
            "typ": kind,
            "fam": family,
            "stp": credential_stamp(user),
            "jti": _new_id(),
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
        }

    async def _pair(self, user: User, family: str, *, with_refresh: bool) -> TokenPair:
        now = int(time.time())
        access = self._claims(user, ACCESS, family, self.config.access_ttl_seconds, now)
        refresh_token = None
        if with_refresh:
            refresh = self._claims(user, REFRESH, family, self.config.refresh_ttl_seconds, now)
            refresh_token = self.keys.encode(refresh)
            await self._store(self.store.start_family(family, refresh["jti"], self.config.refresh_ttl_seconds))
        return TokenPair(self.keys.encode(access), self.config.access_ttl_seconds, access["exp"], refresh_token)

    async def issue(self, user: User, *, with_refresh: bool = True) -> TokenPair:
        """A fresh login: a new family, an access token and (unless ``with_refresh=False``) a refresh token."""
        return await self._pair(user, _new_id(), with_refresh=with_refresh)

    # ------------------------------------------------------------------ verifying

    def decode(self, token: str, kind: str) -> dict[str, Any]:
        """Signature and claims only (no store, no database); :class:`AuthFailed` when refused."""
        try:
            claims = self.keys.decode(
                token, audience=self.config.audience, issuer=self.config.issuer, leeway=self.config.leeway_seconds
            )
        except TokenError as exc:
            raise AuthFailed(exc.reason, exc.message) from None
        if claims.get("typ") != kind:
            raise AuthFailed("wrong_token_type", f"not an {kind} token" if kind == ACCESS else f"not a {kind} token")
        if not _bounded(claims):
            raise AuthFailed("bad_claims")
        return claims

    async def _store(self, operation: Any) -> Any:
        try:
            return await operation
        except (SQLAlchemyError, OSError) as exc:
            raise BackendUnavailable(type(exc).__name__) from None

    async def _live_user(self, claims: dict[str, Any]) -> User:
        try:
            async with self.state.sessions() as session:
                user = await session.get(User, claims["uid"])
        except (SQLAlchemyError, OSError) as exc:
            # Raised from middleware, where the core's 503 handler does not run: say 503 here.
            raise BackendUnavailable(type(exc).__name__) from None
        _still_theirs(claims, user.username if user else None, user.password_hash if user else "")
        assert user is not None
        return user

    async def verify(self, token: str) -> tuple[Principal, dict[str, Any]]:
        """The principal an access token stands for, and its claims; :class:`AuthFailed` when refused."""
        claims = self.decode(token, ACCESS)
        return await self.check(claims), claims

    async def check(self, claims: dict[str, Any]) -> Principal:
        """The principal of an access token's verified claims, as of now: refused when revoked,
        expired, or when its user is gone or changed (a stream ticket holds the claims of the token
        it was issued for, and is checked again this way when spent)."""
        if float(claims["exp"]) + self.config.leeway_seconds < time.time():
            raise AuthFailed("expired", "token expired")
        if await self._store(self.store.is_revoked(claims["jti"], claims["fam"])):
            raise AuthFailed("revoked", "token revoked")
        try:
            found = await self.state.reader.rows(_ACCOUNT, {"uid": claims["uid"]})
        except (SQLAlchemyError, OSError) as exc:
            raise BackendUnavailable(type(exc).__name__) from None
        username, role, password_hash = found[0] if found else (None, None, "")
        _still_theirs(claims, username, password_hash)
        principal = Principal.for_role(
            int(claims["uid"]),
            username,
            Role(role),
            expires_at=float(claims["exp"]),
            token_id=claims["jti"],
            session=claims["fam"],
        )
        return principal

    # ------------------------------------------------------------------ refreshing and revoking

    async def refresh(self, token: str) -> TokenPair:
        """Spend a refresh token for a new pair; reusing a spent one revokes its family."""
        claims = self.decode(token, REFRESH)
        if await self._store(self.store.is_revoked(claims["jti"], claims["fam"])):
            raise AuthFailed("revoked", "token revoked")
        user = await self._live_user(claims)
        now = int(time.time())
        refresh = self._claims(user, REFRESH, claims["fam"], self.config.refresh_ttl_seconds, now)
        outcome = await self._store(
            self.store.rotate(claims["fam"], claims["jti"], refresh["jti"], self._family_life(), self._access_life())
        )
        if outcome is Rotation.reused:
            raise AuthFailed("refresh_reused", "refresh token already used: every token of this login is revoked")
        if outcome is not Rotation.ok:
            raise AuthFailed("revoked", "token revoked")
        access = self._claims(user, ACCESS, claims["fam"], self.config.access_ttl_seconds, now)
        return TokenPair(
            self.keys.encode(access), self.config.access_ttl_seconds, access["exp"], self.keys.encode(refresh)
        )

    def _family_life(self) -> int:
        # The newest refresh token of a family expires at most this long from now.
        return self.config.refresh_ttl_seconds + self.config.leeway_seconds

    def _access_life(self) -> int:
        # How long an access token issued before now can still be presented. A revoked family's
        # refresh tokens are refused by the database (its row says revoked), so its revocation
        # entry, which every instance keeps in memory, need only outlive its access tokens.
        return self.config.access_ttl_seconds + self.config.leeway_seconds

    async def user_changed(self, user_id: int) -> None:
        """The sessions the account opened until now end everywhere (its tokens are refused already)."""
        await self._store(self.store.end_user_sessions(user_id, self._access_life()))

    async def logout(self, claims: dict[str, Any]) -> None:
        """Revoke this access token and its whole family, for as long as any of them could live."""
        remaining = int(claims["exp"]) - int(time.time()) + self.config.leeway_seconds
        await self._store(self.store.revoke(claims["jti"], remaining, claims["fam"], self._access_life()))
