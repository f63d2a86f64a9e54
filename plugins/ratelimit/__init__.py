"""``plugins.ratelimit``: per-client request budgets, shared through Redis when configured.

Pure ASGI middleware; it must come after ``plugins.auth`` in ``PETSTORE_PLUGINS`` (the first
plugin is outermost) so that it sees ``scope["user"]``. The client is the user id when
authenticated, else the IP (``X-Forwarded-For`` is believed only from trusted proxies).

Policies (each a rate such as ``100/minute``, or several joined by ``;``):

- ``default``: ``PETSTORE_RATE_LIMIT``, for every request not matched below;
- ``login``: ``PETSTORE_RATELIMIT_LOGIN_PER_USER`` per username *and*
  ``PETSTORE_RATELIMIT_LOGIN_PER_IP`` per IP, for the routes that plugins name in their
  ``login_routes`` hook;
  while Redis is unreachable, ``PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_USER`` and
  ``PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_IP`` instead, counted in this process only;
- per-route overrides: ``PETSTORE_RATELIMIT_ROUTES="POST /api/v3/pet/*/uploadImage=10/minute, ..."``
  (the first matching ``METHOD glob`` wins; ``*`` matches any method);
- WebSocket: ``PETSTORE_RATELIMIT_WS_CONNECT`` connection attempts per client *and*
  ``PETSTORE_RATELIMIT_WS_CONNECT_PER_IP`` per IP, however many accounts it signs in (refused
  before the upgrade with 429, ``Retry-After`` and the JSON error shape); a reconnect that brings
  the resume pass of its previous connection counts against ``PETSTORE_RATELIMIT_WS_RESUME_PER_IP``
  instead (:mod:`~plugins.ratelimit.resume`: a restart's storm of reconnects behind one NAT
  address gets in at once, a flood does not);
  ``PETSTORE_RATELIMIT_WS_MESSAGES`` messages per connection (in process, no round trip).

Which routes are logins this plugin does not know: the plugins that own them say so at start-up
(:meth:`petstore.plugin.Plugins.login_routes`), each with a way to read a request's username as
its endpoint reads it. The middleware reads it before the app sees the request, and replays to
the app whatever of the body that read. Whatever body gets a password checked has been counted
against its username first.

Responses carry the IETF ``RateLimit-Policy`` and ``RateLimit`` headers; a refusal is 429 with
``Retry-After``.

Redis is the app's client for request-time work (:mod:`petstore.redis_client`): one bounded pool
per process, shared with the auth plugin, on which a burst waits for a connection. A wait that
runs out is load, not an outage: 503 with ``Retry-After``, never a request let through unlimited.
When Redis itself fails (refused, reset, timed out), ordinary traffic is let through (fail open),
and logins are held to the fallback budget of this instance: stricter than the shared one, since
each instance counts its own (with N instances an attacker gets N of them), yet logins go on;
each failure is observed as ``ratelimit.backend_error``. For :data:`OUTAGE_PAUSE_SECONDS` after
one, requests do not try Redis at all, so a Redis that stopped answering costs one timeout, not
one per request.

The package: :mod:`~plugins.ratelimit.config` (settings and the policies they make),
:mod:`~plugins.ratelimit.gcra` (budgets and the algorithm, in process and as a Lua script),
:mod:`~plugins.ratelimit.clients` (whom a request counts against); here, the plugin and its
middleware. The rate grammar is the core's (:mod:`petstore.rates`), since ``PETSTORE_RATE_LIMIT``
is a core setting.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from petstore.access import Principal
from petstore.config import Settings, variables
from petstore.errors import error_response, unavailable_response
from petstore.plugin import App, CorsHeaders, LoginRoute, PluginBase
from petstore.redis_client import BUSY
from petstore.routing import route_path
from plugins.ratelimit.clients import client_key, ip_key, username_key
from plugins.ratelimit.config import Policies, RateLimitSettings
from plugins.ratelimit.gcra import Budget, Decision, Limiter, MemoryLimiter, Policy, RedisLimiter, budgets
from plugins.ratelimit.resume import RedactResume, ResumePasses

logger = logging.getLogger("plugins.ratelimit")

LOG_INTERVAL_SECONDS = 60.0
#: After Redis failed, this long without trying it (fail open at once), then the next request tries.
OUTAGE_PAUSE_SECONDS = 1.0
BUSY_RETRY_AFTER = 1
#: Whatever asking Redis can raise: it failed, or no connection came free in time.
REDIS_FAULTS: tuple[type[Exception], ...] = (RedisError, OSError, *BUSY)
#: Where a ``/ws?resume=…`` URL could be logged.
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error")

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
OPENAPI_HEADERS: dict[str, Any] = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
    "RateLimit": {"description": 'IETF draft: "policy";r=<left>;t=<seconds to full>', "schema": {"type": "string"}},
    "RateLimit-Policy": {"description": 'IETF draft: "policy";q=<quota>;w=<window s>', "schema": {"type": "string"}},
}


class RateLimitPlugin(PluginBase):
    name = "ratelimit"

    def __init__(self, settings: Settings, config: RateLimitSettings | None = None) -> None:
        self.policies = Policies.from_settings(settings, config or RateLimitSettings())
        self.limiter: Limiter = MemoryLimiter()
        # Per connection and per process on purpose: a message costs no network round trip.
        self.messages = MemoryLimiter(clock=time.monotonic)
        #: The login budget of this instance alone, for while the shared one cannot be reached.
        self.fallback = MemoryLimiter()
        self._state: App | None = None
        #: The plugins' login routes by (method, path), known once the app has started.
        self.logins: dict[tuple[str, str], LoginRoute] = {}
        self._last_log = -math.inf
        self._last_busy_log = -math.inf
        #: Until this monotonic time Redis counts as down without being asked (see OUTAGE_PAUSE_SECONDS).
        self._down_until = -math.inf
        self.passes = ResumePasses()
        self._redact = RedactResume()

    # -- life cycle

    async def startup(self, state: App) -> None:
        self._state = state
        self.logins = state.plugins.login_routes()
        for name in REDACTED_LOGGERS:
            logging.getLogger(name).addFilter(self._redact)
        if state.redis is not None:
            self.limiter = RedisLimiter(state.redis)
            self.passes = ResumePasses(state.redis)
            try:
                await self.passes.start()
            except REDIS_FAULTS as exc:
                # Passes of this instance alone until it restarts: other instances do not take them.
                logger.warning("rate limit: resume pass key not read from Redis (%s): this instance's own", exc)

    async def shutdown(self, state: App) -> None:
        await self.limiter.close()
        self.limiter = MemoryLimiter()
        self.passes = ResumePasses()
        for name in REDACTED_LOGGERS:
            logging.getLogger(name).removeFilter(self._redact)

    def cors_headers(self) -> CorsHeaders:
        return CorsHeaders(expose=("RateLimit", "RateLimit-Policy"))

    def environment(self) -> Sequence[str]:
        return variables(RateLimitSettings)  # PETSTORE_RATE_LIMIT is the core's

    def middleware(self) -> Sequence[Middleware]:
        return [Middleware(RateLimitMiddleware, plugin=self)]

    def openapi(self, document: dict[str, Any]) -> None:
        """Every operation may answer 429; every limited response carries the RateLimit headers."""
        components = document.setdefault("components", {})
        components.setdefault("headers", {}).update(copy.deepcopy(OPENAPI_HEADERS))
        components.setdefault("responses", {})["TooManyRequests"] = {
            "description": "over the client's budget: retry after Retry-After seconds",
            "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in OPENAPI_HEADERS},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiResponse"}}},
        }
        for item in document.get("paths", {}).values():
            for method, operation in item.items():
                if method in HTTP_METHODS and isinstance(operation, dict):
                    responses = operation.setdefault("responses", {})
                    responses.setdefault("429", {"$ref": "#/components/responses/TooManyRequests"})

    # -- shared helpers

    def report(self, name: str, **labels: str) -> None:
        if self._state is not None:
            self._state.plugins.observe(name, 1.0, **labels)

    def client(self, scope: Scope) -> str:
        return client_key(scope, self.policies.trusted)

    def login_checks(
        self, scope: Scope, username: str | None, *, fallback: bool = False
    ) -> tuple[list[Policy], list[Budget]]:
        """A login's policies and budgets: its address's, and its username's when it names one."""
        policies = self.policies
        if fallback:
            per_user, per_ip = policies.login_user_fallback, policies.login_ip_fallback
        else:
            per_user, per_ip = policies.login_user, policies.login_ip
        checks = budgets(per_ip, ip_key(scope, policies.trusted))
        if username:
            checks = budgets(per_user, username_key(username)) + checks
        return [per_user, per_ip], checks

    async def check(self, checks: Sequence[Budget]) -> Decision | None:
        """The decision, or None when the backend is down (observed, and logged now and then).

        :class:`PoolExhausted` (no connection came free in time) goes to the caller: the server is
        busy, and letting the request through unlimited would hand the limiter's off switch to
        whoever can send a burst. Only while Redis is known to be down is it an outage too (the
        pool is then full of commands waiting for a Redis that does not answer).
        """
        reason: object = "not tried again yet after a failure"
        if time.monotonic() >= self._down_until:
            try:
                return await self.limiter.check(checks)
            except BUSY:
                if time.monotonic() >= self._down_until:
                    self._log_busy()
                    raise
            except (RedisError, OSError) as exc:
                self._down_until = time.monotonic() + OUTAGE_PAUSE_SECONDS
                reason = exc
        self.report("ratelimit.backend_error")
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL_SECONDS:
            self._last_log = now
            logger.warning(
                "rate limit backend unreachable (%s): requests unlimited, logins held to this instance's "
                "fallback budget",
                reason,
            )
        return None

    def _log_busy(self) -> None:
        now = time.monotonic()
        if now - self._last_busy_log >= LOG_INTERVAL_SECONDS:
            self._last_busy_log = now
            logger.warning("rate limit: no Redis connection came free in time: answering 503 (server busy)")

    # -- WebSocket hooks

    async def ws_connect(self, websocket: WebSocket) -> Response | None:
        """Over a connection budget: 429 with ``Retry-After`` and the RateLimit headers, as the HTTP
        answer to the upgrade (SPEC §3; a close 1013 where the server cannot send one)."""
        scope = websocket.scope
        address = ip_key(scope, self.policies.trusted)
        if await self._resumes(websocket, address):
            policies = [self.policies.ws_resume_ip]
            checks = budgets(self.policies.ws_resume_ip, address)
        else:
            policies = [self.policies.ws_connect, self.policies.ws_connect_ip]
            checks = budgets(self.policies.ws_connect, self.client(scope))
            checks += budgets(self.policies.ws_connect_ip, address)
        try:
            decision = await self.check(checks)
        except BUSY:
            return unavailable_response("too busy to count this connection: retry shortly", BUSY_RETRY_AFTER)
        if decision is not None and not decision.allowed:
            self.report("ratelimit.rejected", scope="ws")
            message = f"too many connections: retry in {decision.retry_after} s"
            return error_response(429, "rate_limited", message, decision.headers(policies))
        return None  # allowed, or the backend is down: connections are ordinary traffic (fail open)

    async def _resumes(self, websocket: WebSocket, address: str) -> bool:
        """Whether the connection brings a resume pass that holds (and is now spent)."""
        text = websocket.query_params.get("resume")
        if not text:
            return False
        try:
            spent = await self.passes.spend(text, address)
        except REDIS_FAULTS:
            return False  # counted as a new connection: the budgets decide, or fail open without Redis
        self.report("ratelimit.resume", outcome="accepted" if spent else "refused")
        return spent

    def ws_welcome(self, websocket: WebSocket) -> Mapping[str, Any]:
        """The pass this connection's next reconnect may bring (``resume`` in the welcome)."""
        return {"resume": self.passes.issue(ip_key(websocket.scope, self.policies.trusted))}

    async def ws_message(self, connection_id: str, principal: Principal | None, message_type: str) -> str | None:
        decision = self.messages.check_now(budgets(self.policies.ws_messages, f"conn:{connection_id}"))
        if not decision.allowed:
            self.report("ratelimit.rejected", scope="ws")
            return "rate_limited"
        return None


class RateLimitMiddleware:
    """Pure ASGI: checks each HTTP request's budget before the app sees it; WebSockets pass through."""

    def __init__(self, app: ASGIApp, plugin: RateLimitPlugin) -> None:
        self.app = app
        self.plugin = plugin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plugin, policies = self.plugin, self.plugin.policies
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or policies.is_exempt(route_path(scope)):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], route_path(scope)
        login = plugin.logins.get((method, path))
        username: str | None = None
        if login is not None:
            receive, username = await _read_username(login, scope, receive)
            counted, checks = plugin.login_checks(scope, username)
            label = "login"
        else:
            policy = policies.for_route(method, path)
            counted, checks, label = [policy], budgets(policy, plugin.client(scope)), "http"
        try:
            decision = await plugin.check(checks)
        except BUSY:
            message = "too busy to count this request: retry shortly"
            await unavailable_response(message, BUSY_RETRY_AFTER)(scope, receive, send)
            return
        if decision is None:
            if login is None:
                await self.app(scope, receive, send)  # fail open: reads and writes carry on unlimited
                return
            # An unlimited login is an open door to guessing, and no login at all stops the store:
            # this instance's own, stricter budget instead.
            counted, checks = plugin.login_checks(scope, username, fallback=True)
            decision = plugin.fallback.check_now(checks)
        headers = decision.headers(counted)
        if not decision.allowed:
            plugin.report("ratelimit.rejected", scope=label)
            message = f"too many requests: retry in {decision.retry_after} s"
            await error_response(429, "rate_limited", message, headers)(scope, receive, send)
            return
        await self.app(scope, receive, _with_headers(send, headers))


async def _read_username(login: LoginRoute, scope: Scope, receive: Receive) -> tuple[Receive, str | None]:
    """A ``receive`` that gives the app the body again, however much of it the login's owner read
    to find the username; and the username."""
    read: list[Message] = []

    async def recording() -> Message:
        message = await receive()
        read.append(message)
        return message

    username = await login.read_username(Request(scope, recording))
    if not read:
        return receive, username
    replay = iter(read)

    async def replaying() -> Message:
        return next(replay, None) or await receive()

    return replaying, username


def _with_headers(send: Send, headers: Mapping[str, str]) -> Send:
    extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers


def plugin(settings: Settings) -> RateLimitPlugin:
    return RateLimitPlugin(settings)
