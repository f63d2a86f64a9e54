"""Starlette's authentication machinery, fed with our tokens, for HTTP and WebSocket alike.

:class:`TokenBackend` turns ``Authorization: Bearer`` into a :class:`~petstore.access.Principal`
(``scope["user"]``) and its scopes (``scope["auth"]``). No header: anonymous. A bad token is
refused right here, because exception handlers do not run for errors raised in middleware: 401
with ``WWW-Authenticate: Bearer`` and the JSON error shape, over HTTP and on a WebSocket upgrade
alike (the ASGI denial-response extension; a server without it gets a close 1008 instead).

Two exceptions. On the login routes (``ignore_on``) the header is not even read: a client whose
session ended must be able to log in again, whatever stale token it still sends. On the event
stream (``stream_path``) a request without the header may bring a single-use ``ticket`` in its
query instead (:mod:`plugins.auth.tickets`), since a browser's ``EventSource`` cannot send headers.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Collection

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
    UnauthenticatedUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from petstore.access import AuthFailed, Principal
from petstore.errors import error_response, unavailable_response
from petstore.realtime.ws import TRY_AGAIN_LATER, deny_websocket
from petstore.routing import route_path
from plugins.auth.authority import Authority, BackendUnavailable
from plugins.auth.tickets import StreamTickets, TicketsUnavailable

logger = logging.getLogger("plugins.auth")

#: How long between two log lines about the database being down while checking tokens.
LOG_INTERVAL_SECONDS = 30.0


class TokenRefused(AuthenticationError):
    def __init__(self, failure: AuthFailed) -> None:
        super().__init__(failure.message)
        self.failure = failure


class StoreDown(AuthenticationError):
    pass


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None without one; AuthFailed if malformed."""
    header = conn.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailed("malformed", "use Authorization: Bearer <token>")
    return token.strip()


class TokenBackend(AuthenticationBackend):
    def __init__(
        self,
        authority: Callable[[], Authority | None],
        observe: Callable[[str], None],
        *,
        ignore_on: Collection[str] = (),
        stream_path: str | None = None,
        tickets: Callable[[], StreamTickets | None] = lambda: None,
    ) -> None:
        self._authority = authority
        self._observe = observe
        self._last_store_log = -math.inf
        #: Paths where ``Authorization`` is not read at all (the login routes).
        self.ignore_on = frozenset(ignore_on)
        self.stream_path = stream_path
        self._tickets = tickets

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if route_path(conn.scope) in self.ignore_on:
            return None
        authority = self._authority()
        try:
            token = bearer_token(conn)
            if token is None:
                ticket = self._ticket(conn)
                if ticket is None:
                    return None
                if authority is None:
                    raise StoreDown("authentication is not ready")
                principal = await self._spend(authority, ticket)
            else:
                if authority is None:  # not started: no lifespan ran, so nothing can be verified
                    raise StoreDown("authentication is not ready")
                principal, _ = await authority.verify(token)
        except AuthFailed as failure:
            self._observe(failure.reason)
            raise TokenRefused(failure) from None
        except BackendUnavailable as exc:
            now = time.monotonic()
            if now - self._last_store_log >= LOG_INTERVAL_SECONDS:
                self._last_store_log = now
                logger.warning("auth: database unreachable while checking a token (%s): answering 503", exc)
            self._observe("store_unavailable")
            raise StoreDown("cannot check the token right now") from None
        return principal.credentials, principal

    def _ticket(self, conn: HTTPConnection) -> str | None:
        """The stream ticket of a GET of the event stream, if it brings one."""
        scope = conn.scope
        if scope["type"] != "http" or route_path(scope) != self.stream_path or scope["method"] != "GET":
            return None
        return conn.query_params.get("ticket")

    async def _spend(self, authority: Authority, ticket: str) -> Principal:
        tickets = self._tickets()
        if tickets is None:
            raise StoreDown("authentication is not ready")
        try:
            issued = await tickets.spend(ticket)
        except TicketsUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
        if issued is None:
            raise AuthFailed("bad_ticket", "unknown, spent or expired stream ticket: get a new one")
        # As the token it was issued for would be, now: revoked, expired, user gone or changed.
        return await authority.check(issued["claims"])


class AuthMiddleware(AuthenticationMiddleware):
    """Starlette's middleware, with the JSON error shape and WebSocket close code of SPEC §2/§3."""

    def __init__(self, app: ASGIApp, backend: AuthenticationBackend) -> None:
        super().__init__(app, backend=backend, on_error=None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            result = await self.backend.authenticate(HTTPConnection(scope))
        except AuthenticationError as exc:
            if isinstance(exc, TokenRefused):
                challenge = 'Bearer error="invalid_token"'
                response = error_response(401, "unauthorized", exc.failure.message, {"WWW-Authenticate": challenge})
            else:
                response = unavailable_response(str(exc), retry_after=5)
            if scope["type"] == "websocket":
                close = 1008 if isinstance(exc, TokenRefused) else TRY_AGAIN_LATER
                await deny_websocket(scope, receive, send, response, close)
                return
            await response(scope, receive, send)
            return
        if result is None:
            result = AuthCredentials(), UnauthenticatedUser()
        scope["auth"], scope["user"] = result
        await self.app(scope, receive, send)


_SECRET_QUERY = re.compile(r"((?:^|[?&])(?:password|token|access_token|refresh_token|ticket)=)[^&\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``password=...`` (and token and stream ticket parameters) in a URL or query string, replaced by ``***``."""
    return _SECRET_QUERY.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    """Keeps ``/user/login?password=...`` out of uvicorn's access log (and any log it is added to)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def installed_filter(logger_names: tuple[str, ...]) -> tuple[RedactSecrets, list[logging.Logger]]:
    """Attach one :class:`RedactSecrets` to each named logger; returns it and them, to detach later."""
    flt = RedactSecrets()
    loggers = [logging.getLogger(name) for name in logger_names]
    for item in loggers:
        item.addFilter(flt)
    return flt, loggers
