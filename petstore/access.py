"""Who may do what (SPEC §2), expressed as Starlette scopes that operations need.

The core never authenticates anyone. An auth plugin puts a :class:`Principal` in
``scope["user"]`` and its scopes in ``scope["auth"]`` (Starlette's ``AuthenticationMiddleware``
does exactly that); the endpoints only read them. Each operation declares the scope it needs
(:mod:`petstore.operations`), and its route checks it with :func:`require` before the handler
runs. Without an auth plugin every request is anonymous, so reads work and writes answer 401.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.authentication import AuthCredentials, BaseUser
from starlette.requests import HTTPConnection

from petstore.errors import Forbidden, PetstoreError, Unauthorized
from petstore.models import Role

AUTHENTICATED = "authenticated"
PLACE_ORDERS = "orders:place"  # customer, staff, admin
ALL_ORDERS = "orders:all"  # read and change every order: staff, admin
WRITE_PETS = "pets:write"  # staff, admin
ALL_USERS = "users:all"  # admin

ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.customer: frozenset({AUTHENTICATED, PLACE_ORDERS}),
    Role.staff: frozenset({AUTHENTICATED, PLACE_ORDERS, ALL_ORDERS, WRITE_PETS}),
    Role.admin: frozenset({AUTHENTICATED, PLACE_ORDERS, ALL_ORDERS, WRITE_PETS, ALL_USERS}),
}


class AuthFailed(PetstoreError):
    """A presented credential is bad; ``reason`` is a short label (``expired``, ``revoked``, ...)."""

    def __init__(self, reason: str, message: str = "invalid token") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Principal(BaseUser):
    """An authenticated user, as auth plugins describe them to the core."""

    user_id: int
    username: str
    role: Role
    scopes: frozenset[str] = field(default_factory=frozenset)
    #: When the credential stops being valid (Unix time), so live connections can be ended then.
    expires_at: float | None = None
    token_id: str | None = None
    #: The login this credential belongs to (every token a login and its refreshes issued).
    session: str | None = None
    #: When the credential was checked (Unix time): sessions opened after a change to the account
    #: stand, those opened before it end (``user_changed``).
    authenticated_at: float = field(default_factory=time.time)

    @classmethod
    def for_role(cls, user_id: int, username: str, role: Role, **kwargs: object) -> Principal:
        return cls(user_id=user_id, username=username, role=role, scopes=ROLE_SCOPES[role], **kwargs)  # type: ignore[arg-type]

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.username

    @property
    def credentials(self) -> AuthCredentials:
        return AuthCredentials(sorted(self.scopes))


def principal(conn: HTTPConnection) -> Principal | None:
    """The authenticated principal of a request or WebSocket, or None when anonymous."""
    user = conn.scope.get("user")
    return user if isinstance(user, Principal) else None


def scopes(conn: HTTPConnection) -> frozenset[str]:
    auth = conn.scope.get("auth")
    return frozenset(auth.scopes) if isinstance(auth, AuthCredentials) else frozenset()


def require(conn: HTTPConnection, scope: str) -> Principal:
    """The principal, if it holds ``scope``: 401 when anonymous, 403 when the role is not enough."""
    who = principal(conn)
    if who is None:
        raise Unauthorized()
    if scope not in scopes(conn):
        raise Forbidden(f"your role ({who.role}) may not do this")
    return who


def may(conn: HTTPConnection, scope: str) -> bool:
    return scope in scopes(conn)
