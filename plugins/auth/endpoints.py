"""The endpoints of SPEC §2: ``/auth/token``, ``/auth/refresh``, ``/auth/logout``, ``/user/login``,
``/user/logout``, and ``/events/ticket`` (:mod:`plugins.auth.tickets`).

``/auth/token`` and ``/auth/refresh`` are an OAuth2 token endpoint as RFC 6749 describes one: form
bodies (``grant_type=password&username=…&password=…``, ``grant_type=refresh_token&refresh_token=…``;
JSON too), the §5.1 answer, and §5.2 errors: the JSON error shape with ``error`` and
``error_description`` added (``invalid_request``, ``invalid_grant``, ``unsupported_grant_type``), so
that OAuth2 clients and this API's clients both read them. Wrong credentials and a bad refresh
token stay 401 (as SPEC §2 says of a bad token) where §5.2 would say 400; clients go by ``error``.
Token responses carry ``Cache-Control: no-store`` (RFC 6749 §5.1). A login for an unknown user
verifies the password against a dummy hash, so it costs what a wrong password costs.

Credentials come from :func:`petstore.api.inputs.read_data` (JSON, any ``+json`` type or none, or a form,
up to ``PETSTORE_MAX_BODY_BYTES``) and ``/user/login``'s query. :meth:`AuthEndpoints.login_routes`
(the ``login_routes`` hook) tells the rate limiter how to read a login's username: with the very
same calls, so no body reaches a password check uncounted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from petstore.access import AuthFailed, principal
from petstore.api.inputs import read_data
from petstore.db.queries import find_user
from petstore.errors import ApiError, BadRequest, ServiceUnavailable, Unauthorized
from petstore.models import ApiResponse, User
from petstore.passwords import verify_password
from petstore.plugin import LoginRoute
from petstore.state import app_state
from plugins.auth.authority import ACCESS, Authority, BackendUnavailable, TokenPair
from plugins.auth.backend import bearer_token
from plugins.auth.tickets import StreamTickets, TicketsUnavailable

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_CREDENTIAL_LENGTH = 1024  # Argon2 of a megabyte "password" is a cheap way to burn our CPU


#: RFC 6749 §5.2 ``error`` for what the token endpoint refuses, by the error's ``type``.
OAUTH_ERRORS = {
    "bad_request": "invalid_request",
    "payload_too_large": "invalid_request",
    "unsupported_media_type": "invalid_request",
    "unsupported_grant_type": "unsupported_grant_type",
    "unauthorized": "invalid_grant",
}


def oauth_errors(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint's refusals with RFC 6749 §5.2's ``error`` / ``error_description`` beside the JSON error shape."""

    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as exc:
            body: dict[str, Any] = {"code": exc.status, "type": exc.type, "message": exc.message}
            error = OAUTH_ERRORS.get(exc.type)
            if error is not None:  # none for a 503: not the client's fault, no OAuth2 error to name
                body |= {"error": error, "error_description": exc.message}
            return JSONResponse(body, status_code=exc.status, headers={**exc.headers, **NO_STORE})

    return answer


class AuthEndpoints:
    def __init__(
        self,
        authority: Callable[[], Authority | None],
        rate_per_hour: int | None,
        tickets: Callable[[], StreamTickets | None] = lambda: None,
    ) -> None:
        self._authority = authority
        self._tickets = tickets
        self.rate_per_hour = rate_per_hour

    def authority(self) -> Authority:
        authority = self._authority()
        if authority is None:
            raise ServiceUnavailable("authentication is not ready")
        return authority

    def _refuse(self, request: Request, failure: AuthFailed) -> Unauthorized:
        app_state(request).plugins.observe("auth.failure", reason=failure.reason)
        return Unauthorized(failure.message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    async def _login(self, request: Request, username: Any, password: Any) -> User | None:
        """The user whose password this is, else None (after the same amount of work)."""
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            raise BadRequest("username and password are required")
        if len(username) > MAX_CREDENTIAL_LENGTH or len(password) > MAX_CREDENTIAL_LENGTH:
            raise BadRequest(f"username and password are at most {MAX_CREDENTIAL_LENGTH} characters")
        async with app_state(request).sessions() as session:
            user = await find_user(session, username)
        if await verify_password(user.password_hash if user else None, password):
            return user
        app_state(request).plugins.observe("auth.failure", reason="bad_credentials")
        return None

    async def token(self, request: Request) -> Response:
        """OAuth2 password grant (RFC 6749 §4.3), form or JSON."""
        data = await _grant(request)
        if not isinstance(data, dict):
            raise BadRequest("send username and password")
        if data.get("grant_type") not in (None, "password"):
            raise BadRequest("grant_type must be password", type="unsupported_grant_type")
        user = await self._login(request, data.get("username"), data.get("password"))
        if user is None:
            raise Unauthorized("wrong username or password")
        pair = await self._issue(user, with_refresh=True)
        return JSONResponse(pair.json(), headers=NO_STORE)

    async def _issue(self, user: User, *, with_refresh: bool) -> TokenPair:
        try:
            return await self.authority().issue(user, with_refresh=with_refresh)
        except BackendUnavailable:
            raise ServiceUnavailable("cannot issue tokens right now", retry_after=5) from None

    async def refresh(self, request: Request) -> Response:
        """RFC 6749 §6: a form ``grant_type=refresh_token&refresh_token=…``, or JSON ``{"refresh_token"}``."""
        data = await _grant(request)
        if not isinstance(data, dict):
            raise BadRequest('send {"refresh_token": "..."} or a form grant_type=refresh_token&refresh_token=...')
        if data.get("grant_type") not in (None, "refresh_token"):
            raise BadRequest("grant_type must be refresh_token", type="unsupported_grant_type")
        token = data.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise BadRequest('send {"refresh_token": "..."} or a form grant_type=refresh_token&refresh_token=...')
        try:
            pair = await self.authority().refresh(token)
        except AuthFailed as failure:
            raise self._refuse(request, failure) from None
        except BackendUnavailable:
            raise ServiceUnavailable("cannot refresh tokens right now", retry_after=5) from None
        return JSONResponse(pair.json(), headers=NO_STORE)

    async def logout(self, request: Request) -> Response:
        """Revoke the presented access token and its family, on every instance."""
        # The middleware has verified the token already; without one the request is anonymous.
        token = bearer_token(request) if request.user.is_authenticated else None
        if token is None:
            raise Unauthorized()
        try:
            await self.authority().logout(self.authority().decode(token, ACCESS))
        except AuthFailed as failure:
            raise self._refuse(request, failure) from None
        except BackendUnavailable:
            raise ServiceUnavailable("cannot log out right now", retry_after=5) from None
        return JSONResponse(ApiResponse(code=200, type="ok", message="logged out").model_dump())

    async def user_login(self, request: Request) -> Response:
        """The Petstore's ``loginUser``: the access token as a JSON string (no refresh token)."""
        query = request.query_params
        user = await self._login(request, query.get("username"), query.get("password"))
        if user is None:
            # The Petstore document answers 400 here ("Invalid username/password supplied").
            raise BadRequest("invalid username/password supplied")
        pair = await self._issue(user, with_refresh=False)
        expires = datetime.fromtimestamp(pair.expires_at, UTC).isoformat().replace("+00:00", "Z")
        headers = {**NO_STORE, "X-Expires-After": expires}
        if self.rate_per_hour is not None:
            headers["X-Rate-Limit"] = str(self.rate_per_hour)
        return JSONResponse(pair.access_token, headers=headers)

    async def stream_ticket(self, request: Request) -> Response:
        """A single-use ticket for ``GET /events?ticket=…``, for the bearer token of this request."""
        who = principal(request)
        token = bearer_token(request) if who is not None else None
        if who is None or token is None:
            raise Unauthorized("a stream ticket is issued for a bearer token: send Authorization: Bearer <token>")
        tickets = self._tickets()
        if tickets is None:
            raise ServiceUnavailable("authentication is not ready")
        try:
            claims = self.authority().decode(token, ACCESS)  # verified by the middleware already
            ticket = await tickets.issue(claims, who.role.value)
        except AuthFailed as failure:
            raise self._refuse(request, failure) from None
        except TicketsUnavailable:
            raise ServiceUnavailable("cannot issue stream tickets right now", retry_after=5) from None
        return JSONResponse({"ticket": ticket, "expires_in": tickets.ttl}, headers=NO_STORE)

    def ignored_authorization(self, prefix: str) -> frozenset[str]:
        """The paths where a stale ``Authorization`` header must not stand in the way: the logins."""
        return frozenset({f"{prefix}/auth/token", f"{prefix}/auth/refresh", f"{prefix}/user/login"})

    def routes(self, prefix: str, jwks: dict[str, Any] | None) -> list[Route]:
        routes = [
            Route(f"{prefix}/auth/token", oauth_errors(self.token), methods=["POST"], name="authToken"),
            Route(f"{prefix}/auth/refresh", oauth_errors(self.refresh), methods=["POST"], name="authRefresh"),
            Route(f"{prefix}/events/ticket", self.stream_ticket, methods=["POST"], name="eventsTicket"),
            Route(f"{prefix}/auth/logout", self.logout, methods=["POST"], name="authLogout"),
            Route(f"{prefix}/user/login", self.user_login, methods=["GET"], name="loginUser"),
            Route(f"{prefix}/user/logout", self.logout, methods=["GET"], name="logoutUser"),
        ]
        if jwks is not None:
            document = dict(jwks)

            async def jwks_json(request: Request) -> Response:
                return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

            routes.append(Route(f"{prefix}/auth/jwks.json", jwks_json, methods=["GET"], name="authJwks"))
        return routes

    def login_routes(self, prefix: str) -> list[LoginRoute]:
        """The ``login_routes`` hook: of :meth:`routes`, the two that check a password."""
        return [
            LoginRoute("POST", f"{prefix}/auth/token", _grant_username),
            LoginRoute("GET", f"{prefix}/user/login", _query_username),
        ]


async def _grant(request: Request) -> Any:
    """The grant of ``POST /auth/token`` or ``/auth/refresh`` (form or JSON, up to ``PETSTORE_MAX_BODY_BYTES``)."""
    return await read_data(request, form=True)


async def _grant_username(request: Request) -> str | None:
    """The username :meth:`AuthEndpoints.token` checks a password of."""
    try:
        data = await _grant(request)
    except (ApiError, ClientDisconnect):
        return None  # the endpoint refuses this body before it checks any password
    return _username(data)


async def _query_username(request: Request) -> str | None:
    """The username :meth:`AuthEndpoints.user_login` checks a password of."""
    return _username(request.query_params)


def _username(data: object) -> str | None:
    name = data.get("username") if isinstance(data, Mapping) else None
    return name if isinstance(name, str) and name else None
