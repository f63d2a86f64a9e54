"""Errors, and their one mapping to the JSON error shape ``{"code", "type", "message"}``.

The tree::

    PetstoreError
    ├── ConfigurationError          bad settings; start-up stops
    │   └── InternalsChanged        a dependency's release changed what petstore relies on (petstore.internals)
    ├── PluginError                 a plugin failed to load; start-up stops, naming it
    ├── AuthFailed                  a presented credential is bad (petstore.access; 401, WebSocket 1008)
    ├── BrokerUnavailable           the broker cannot be reached now (petstore.realtime.broker; 503, WebSocket 1012)
    ├── UsageError                  a bad command line (petstore.cli; exit status 2)
    ├── Refused                     a WebSocket message refused with an ``error`` (petstore.realtime.ws, petstore.watch)
    ├── ListenerSilent              the broker's pub/sub went quiet: reconnect (petstore.realtime.broker.redis)
    ├── TokenError                  a JWT refused before any claim is trusted (plugins.tokens)
    ├── BackendUnavailable          auth's database cannot answer (plugins.auth.authority; 503)
    ├── SubscriberSilent            auth's revocation pub/sub went quiet: reconnect (plugins.auth.feed)
    └── ApiError                    an HTTP error a client sees (status, type, message)
        ├── BadRequest              400
        ├── Unauthorized            401, with the auth plugin's WWW-Authenticate challenge
        ├── Forbidden               403
        ├── NotFound                404
        ├── Conflict                409
        ├── PayloadTooLarge         413
        ├── UnsupportedMediaType    415
        ├── ValidationFailed        422
        └── ServiceUnavailable      503, with Retry-After (the database, the broker or Redis cannot
                                    answer right now); :func:`unavailable_response` is its
                                    response for code that answers outside an endpoint
                                    (pure ASGI middleware)

A 429 is the rate-limit plugin's own response (its middleware answers before any endpoint runs).

Errors of the database driver that mean "unreachable or busy right now" (a restart, a network
cut, a lock held too long, an exhausted pool) are answered as :class:`ServiceUnavailable`, not
500: the request changed nothing and a retry will do once the database is back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import exc as sa
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from petstore.routing import route_path

logger = logging.getLogger("petstore.errors")


class PetstoreError(Exception):
    """Root of every error petstore raises on purpose."""


class ConfigurationError(PetstoreError):
    pass


class PluginError(PetstoreError):
    pass


class ApiError(PetstoreError):
    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        if type is not None:
            self.type = type


class BadRequest(ApiError):
    status, type = 400, "bad_request"


class Unauthorized(ApiError):
    status, type = 401, "unauthorized"

    def __init__(self, message: str = "authentication required", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class Forbidden(ApiError):
    status, type = 403, "forbidden"


class NotFound(ApiError):
    status, type = 404, "not_found"


class Conflict(ApiError):
    status, type = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, type = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, type = 415, "unsupported_media_type"


class ValidationFailed(ApiError):
    status, type = 422, "validation_error"

    @classmethod
    def from_pydantic(cls, exc: ValidationError) -> ValidationFailed:
        parts = []
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"]) or "body"
            parts.append(f"{where}: {error['msg']}")
        return cls("; ".join(parts) or "invalid input")


class ServiceUnavailable(ApiError):
    status = 503
    type = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot answer now (as opposed to a bad statement or a
    constraint, which are ours or the client's to fix)."""
    if isinstance(exc, sa.DBAPIError):
        return exc.connection_invalidated or isinstance(exc, sa.OperationalError | sa.InterfaceError)
    return isinstance(exc, sa.TimeoutError | ConnectionError | TimeoutError)


_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(status: int, type: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": status, "type": type, "message": message}, status_code=status, headers=headers)


def unavailable_response(message: str, retry_after: int = 1) -> JSONResponse:
    """What :class:`ServiceUnavailable` answers, for middleware that cannot raise it."""
    return error_response(503, ServiceUnavailable.type, message, {"Retry-After": str(retry_after)})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = exc.headers
    if exc.status == 401 and "WWW-Authenticate" not in headers:
        challenge = _challenge(request)
        if challenge is not None:
            headers = {**headers, "WWW-Authenticate": challenge}
    return error_response(exc.status, exc.type, exc.message, headers)


def _challenge(request: Request) -> str | None:
    """How to authenticate, as the loaded plugins say (``challenge()``): None without an auth plugin.

    The core knows no scheme; RFC 9110 wants a challenge on every 401, and without a plugin that
    authenticates there is none a client could answer."""
    state = request.scope.get("state", {}).get("petstore")
    plugins = getattr(state, "plugins", None)
    challenge = getattr(plugins, "challenge", None)
    return challenge if isinstance(challenge, str) else None


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "error"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, _HTTP_TYPES.get(exc.status_code, "error"), message, headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Each operation is its own route, so the
    405 Starlette raises names only the first route that matched the path."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(route_path(request.scope)):
            methods |= route.methods
    return ", ".join(sorted(methods))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return await _api_error(request, ValidationFailed.from_pydantic(exc))


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # The client hung up mid-body: nothing was changed and nobody is left to answer. Not an error
    # of ours, so no traceback in the log.
    logger.debug("client disconnected during %s %s", request.method, request.url.path)
    return error_response(400, "client_disconnected", "the client disconnected before the body was read")


async def _database_error(request: Request, exc: Exception) -> Response:
    if database_unavailable(exc):
        logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return await _api_error(request, ServiceUnavailable("the database is unavailable right now; retry shortly"))
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log, never to the client.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_exception,
    ValidationError: _validation_error,
    ClientDisconnect: _client_disconnect,
    # Handled by class (not as the catch-all below), so that an outage is answered and logged in
    # one line: Starlette re-raises what reaches the catch-all, and the server logs its traceback.
    sa.DBAPIError: _database_error,
    sa.TimeoutError: _database_error,
    ConnectionError: _database_error,  # a driver's connect failing (asyncpg raises these unwrapped)
    TimeoutError: _database_error,
    Exception: _unexpected,
}
