"""``plugins.auth``: JWT bearer tokens, roles, refresh rotation, revocation shared by every instance.

Loaded by ``PETSTORE_PLUGINS`` (``plugins.auth``). What it does, hook by hook:

- ``middleware``: Starlette's ``AuthenticationMiddleware`` with :class:`TokenBackend`, for HTTP
  and WebSocket, setting ``scope["user"]`` (a :class:`~petstore.access.Principal`) and ``scope["auth"]``
  from ``Authorization: Bearer``, or on ``GET /api/v3/events`` from a single-use stream ticket
  (:mod:`plugins.auth.tickets`); the login routes ignore a stale header.
- ``routes``: ``/api/v3/auth/{token,refresh,logout}``, ``/api/v3/user/{login,logout}``,
  ``/api/v3/events/ticket`` and, with RS256/ES256, ``/api/v3/auth/jwks.json``.
- ``startup`` / ``shutdown``: the token store (revocations and refresh families in the database,
  each instance's copy kept fresh by Redis pub/sub when ``PETSTORE_REDIS_URL`` is set and by a
  database poll always: :mod:`plugins.auth.feed`, on the app's Redis client ``App.redis``,
  whose pool the rate limiter shares), and a log filter that keeps ``password=`` out of uvicorn's
  access log.
- ``migrations``: the tables of :mod:`plugins.auth.schema`, created by ``petstore migrate``.
- ``openapi``: the paths and schemas above, the bearer scheme and the OAuth2 password flow, and on each of the core's
  operations the ``security`` and 401 that its ``x-petstore-permission`` implies.
- ``ws_authenticate`` / ``ws_authorize``: the same tokens and the rooms rule of SPEC §3.
- ``login_routes``: ``POST /auth/token`` and ``GET /user/login`` check passwords, and how to read
  their username, for a rate limiter's per-username budget (:meth:`AuthEndpoints.login_routes`).

Settings of its own: see :mod:`plugins.auth.config` (``PETSTORE_JWT_*``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.websockets import WebSocket

from petstore.access import AuthFailed, Principal
from petstore.config import Settings, variables
from petstore.plugin import App, CorsHeaders, LoginRoute, PluginBase, PluginMigrations
from petstore.rates import parse_rates
from petstore.realtime import rooms
from plugins.auth.authority import Authority, BackendUnavailable
from plugins.auth.backend import AuthMiddleware, RedactSecrets, TokenBackend, installed_filter
from plugins.auth.config import AuthSettings
from plugins.auth.endpoints import AuthEndpoints
from plugins.auth.feed import RevocationFeed
from plugins.auth.openapi import API, STREAM_PATH, extend
from plugins.auth.schema import MIGRATIONS
from plugins.auth.store import TokenStore, session_ended, user_key
from plugins.auth.tickets import StreamTickets

logger = logging.getLogger("plugins.auth")

#: Loggers that may print a request's query string (and so a /user/login password).
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error")


class AuthPlugin(PluginBase):
    name = "auth"

    def __init__(self, settings: Settings, config: AuthSettings | None = None) -> None:
        self.settings = settings
        self.config = config or AuthSettings()
        self.keys = self.config.key_set(settings)  # bad keys stop start-up here, naming the plugin
        self.authority: Authority | None = None
        self.feed: RevocationFeed | None = None
        self._filter: tuple[RedactSecrets, list[logging.Logger]] | None = None
        self.tickets: StreamTickets | None = None
        self.endpoints = AuthEndpoints(
            lambda: self.authority, rate_per_hour=_hourly(settings.rate_limit), tickets=lambda: self.tickets
        )
        self._state: App | None = None

    def _observe_failure(self, reason: str) -> None:
        if self._state is not None:
            self._state.plugins.observe("auth.failure", reason=reason)

    def middleware(self) -> Sequence[Middleware]:
        backend = TokenBackend(
            lambda: self.authority,
            self._observe_failure,
            ignore_on=self.endpoints.ignored_authorization(API),
            stream_path=STREAM_PATH,
            tickets=lambda: self.tickets,
        )
        return [Middleware(AuthMiddleware, backend=backend)]

    def challenge(self) -> str:
        return "Bearer"  # the 401s of the core (an anonymous write) name the scheme of SPEC §2

    def cors_headers(self) -> CorsHeaders:
        # Bearer tokens, and /user/login's answer headers (the Petstore document's).
        return CorsHeaders(allow=("Authorization",), expose=("X-Rate-Limit", "X-Expires-After"))

    def routes(self) -> Sequence[BaseRoute]:
        return self.endpoints.routes(API, self.keys.jwks() if self.keys.is_asymmetric else None)

    def migrations(self) -> PluginMigrations:
        return MIGRATIONS

    def environment(self) -> Sequence[str]:
        return variables(AuthSettings)

    async def startup(self, state: App) -> None:
        self._state = state
        store = TokenStore(state.engine)
        store.on_revoked = self._end_sessions
        # The feed must know of every reconnection, since messages published meanwhile are lost
        # and it reads them from the database: its subscription counts the connections it made.
        redis = state.redis
        self.feed = RevocationFeed(store, redis, self.config.revocation_poll_seconds)
        await self.feed.start()
        self.authority = Authority(self.config, self.keys, store, state)
        self.tickets = StreamTickets(redis)
        self._filter = installed_filter(REDACTED_LOGGERS)
        logger.info(
            "auth: %s tokens, revocations in the database%s, polled every %g s",
            self.keys.algorithm,
            ", announced through Redis pub/sub" if redis is not None else "",
            self.config.revocation_poll_seconds,
        )

    def _end_sessions(self, keys: list[str]) -> None:
        """Revocations reached this instance (its own, the feed's, the poll's): the live sessions
        they concern end here (1008)."""
        if self._state is not None:
            ended = self._state.end_sessions(session_ended(keys))
            if ended:
                logger.info("auth: %d live session(s) ended by a revocation", ended)

    async def user_changed(self, user_id: int) -> None:
        if self.authority is None:
            return
        try:
            await self.authority.user_changed(user_id)
        except BackendUnavailable:
            self._end_sessions([user_key(user_id, time.time())])  # here at least
            logger.warning(
                "auth: the database is unavailable: on other instances the sessions of changed user %d "
                "end when their tokens expire",
                user_id,
            )

    async def shutdown(self, state: App) -> None:
        if self._filter is not None:
            flt, loggers = self._filter
            for item in loggers:
                item.removeFilter(flt)
            self._filter = None
        self.authority = None
        self.tickets = None
        if self.feed is not None:
            await self.feed.close()
            self.feed = None

    def openapi(self, document: dict[str, Any]) -> None:
        extend(document, asymmetric=self.keys.is_asymmetric)

    def login_routes(self) -> Sequence[LoginRoute]:
        return self.endpoints.login_routes(API)

    async def ws_authenticate(self, websocket: WebSocket, token: str) -> Principal | None:
        if self.authority is None:
            raise AuthFailed("unavailable", "authentication is not ready")
        try:
            principal, _ = await self.authority.verify(token)
        except AuthFailed as failure:
            self._observe_failure(failure.reason)
            raise
        except BackendUnavailable:
            self._observe_failure("store_unavailable")
            raise AuthFailed("store_unavailable", "cannot check the token right now") from None
        return principal

    async def ws_authorize(self, principal: Principal | None, room: str) -> bool | None:
        return rooms.may_join(principal, room)


def _hourly(rate_limit: str) -> int | None:
    """For /user/login's X-Rate-Limit ("calls per hour allowed"): the tightest rate of
    ``PETSTORE_RATE_LIMIT``. One that does not parse is the rate limiter's to refuse (it stops
    start-up naming the variable); here it only means no header."""
    try:
        return min(rate.per_hour() for rate in parse_rates(rate_limit))
    except ValueError:
        return None


def plugin(settings: Settings) -> AuthPlugin:
    return AuthPlugin(settings)
