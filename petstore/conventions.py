"""What every answer of this server carries, whoever made it (SPEC §2), and the access log.

:class:`Conventions` is the outermost middleware, so a plugin's answer (a 401, a 429) and an
error page are treated as the app's own:

- ``X-Request-ID``: the client's, if it is 1 to 128 visible ASCII characters, else a new one; echoed
  on the response (and on a WebSocket's handshake), and on every log line written meanwhile
  (:data:`petstore.logs.REQUEST_ID`);
- ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``,
  and ``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`` unless the response
  set its own: a JSON answer loads nothing and is framed by nobody. The two pages set theirs
  (:data:`DASHBOARD_CSP`, :data:`DOCS_CSP`): scripts from this origin only, no inline script;
- one access-log line per request on ``petstore.access``: the route template, the path without
  its query string (a login's password could be there), status, duration, user and client.

gzip (Starlette's ``GZipMiddleware``, bodies over 1 KiB, never on ``text/event-stream``) sits just
inside, so these headers are on compressed answers too.
"""

from __future__ import annotations

import logging
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from petstore.logs import REQUEST_ID
from petstore.routing import RouteTemplates

access_logger = logging.getLogger("petstore.access")

#: The dashboard (``/``): its own scripts, styles and images, its REST and WebSocket calls to
#: this origin (``'self'`` covers ``ws:``/``wss:`` of it), nothing inline, nothing framing it.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Swagger UI (``/docs``): the same, but its React components set inline ``style`` attributes.
#: Styles cannot run code; scripts stay strict.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Every other answer: JSON, a file, an error. Nothing to load, nothing to frame it.
DEFAULT_CSP = b"default-src 'none'; frame-ancestors 'none'"

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", DEFAULT_CSP),
)
_SECURITY_NAMES = frozenset(name for name, _ in SECURITY_HEADERS)
REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128


def request_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if it is 1 to 128 visible ASCII characters, else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if 0 < len(value) <= MAX_REQUEST_ID and all(0x21 <= byte <= 0x7E for byte in value):
                return str(value.decode("ascii"))
            break
    return os.urandom(16).hex()


def with_conventions(headers: list[tuple[bytes, bytes]], rid: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` with the request id and every security header the response did not set itself."""
    present = {name.lower() for name, _ in headers} & _SECURITY_NAMES
    added = [(REQUEST_ID_HEADER, rid)]
    if present:
        added += [header for header in SECURITY_HEADERS if header[0] not in present]
    else:
        added += SECURITY_HEADERS
    return [*headers, *added]


def _user(scope: Scope) -> str | None:
    user = scope.get("user")
    return getattr(user, "username", None) if getattr(user, "is_authenticated", False) else None


class Conventions:
    """Pure ASGI, outermost: see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        token = REQUEST_ID.set(rid)
        try:
            if kind == "http":
                await self._http(scope, receive, send, rid)
            else:
                await self._websocket(scope, receive, send, rid)
        finally:
            REQUEST_ID.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        rid_bytes = rid.encode("ascii")
        status = 500  # unless a response starts: an exception escaping the app becomes a 500
        incoming = dict(scope) if access_logger.isEnabledFor(logging.INFO) else None
        started = time.perf_counter()

        async def send_with_conventions(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = with_conventions(list(message.get("headers", ())), rid_bytes)
            await send(message)

        try:
            await self.app(scope, receive, send_with_conventions)
        finally:
            if incoming is not None:
                self._log(incoming, scope, status, time.perf_counter() - started)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        rid_bytes = rid.encode("ascii")

        async def send_with_request_id(message: Message) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid_bytes)]
            elif kind == "websocket.http.response.start":  # a refusal before the upgrade
                message["headers"] = with_conventions(list(message.get("headers", ())), rid_bytes)
            await send(message)

        await self.app(scope, receive, send_with_request_id)

    def _log(self, incoming: Scope, scope: Scope, status: int, elapsed: float) -> None:
        client = incoming.get("client")
        address = f"{client[0]}:{client[1]}" if client else "-"
        method, path = incoming["method"], incoming["path"]
        duration_ms = round(elapsed * 1000, 1)
        access_logger.info(
            '%s - "%s %s" %d %.1fms',
            address,
            method,
            path,
            status,
            duration_ms,
            extra={
                "method": method,
                "route": self.templates(incoming, scope.get("route")),
                "path": path,
                "status": status,
                "duration_ms": duration_ms,
                "user": _user(scope),
                "client": client[0] if client else None,
            },
        )
