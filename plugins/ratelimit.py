"""``plugins.ratelimit``: per-client request budgets, shared through Redis when configured.

Pure ASGI middleware; it must come after ``plugins.auth`` in ``PETSTORE_PLUGINS`` (the first
plugin is outermost) so that it sees ``scope["user"]``. The client is the user id when
authenticated, else the IP (``X-Forwarded-For`` is believed only from trusted proxies).

Policies (each a rate such as ``100/minute``, or several joined by ``;``):

- ``default``: ``PETSTORE_RATE_LIMIT``, for every request not matched below;
- ``login``: ``PETSTORE_RATELIMIT_LOGIN_PER_USER`` per username *and*
  ``PETSTORE_RATELIMIT_LOGIN_PER_IP`` per IP, for ``POST /auth/token`` and ``GET /user/login``;
  while Redis is unreachable, ``PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_USER`` and
  ``PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_IP`` instead, counted in this process only;
- per-route overrides: ``PETSTORE_RATELIMIT_ROUTES="POST /api/v3/pet/*/uploadImage=10/minute, ..."``
  (the first matching ``METHOD glob`` wins; ``*`` matches any method);
- WebSocket: ``PETSTORE_RATELIMIT_WS_CONNECT`` connection attempts per client *and*
  ``PETSTORE_RATELIMIT_WS_CONNECT_PER_IP`` per IP, however many accounts it signs in (refused
  with 1013), ``PETSTORE_RATELIMIT_WS_MESSAGES`` messages per connection (in process, no round trip).

A login's username is read the way the endpoint reads it, with the same parser and size limit
(:func:`petstore.api.inputs.read_data`, ``PETSTORE_MAX_BODY_BYTES``; the query of ``GET /user/login``):
whatever body the endpoint checks a password from, the limiter has counted against its username.

The algorithm is GCRA (a token bucket kept as one timestamp per key): up to ``q`` requests at
once, then one every ``w/q`` seconds. With Redis, one Lua script checks and updates every key
of a request in one atomic round trip, on Redis's clock, so all instances share one budget.
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
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from petstore.access import Principal
from petstore.api.inputs import read_data
from petstore.config import Settings
from petstore.errors import ApiError, ConfigurationError, error_response, unavailable_response
from petstore.plugin import App, CorsHeaders, PluginBase
from petstore.redis_client import PoolExhausted

logger = logging.getLogger("plugins.ratelimit")

API = "/api/v3"
LOGIN_ROUTES = (("POST", f"{API}/auth/token"), ("GET", f"{API}/user/login"))
PREFIX = "petstore:rl:"
LOG_INTERVAL_SECONDS = 60.0
#: After Redis failed, this long without trying it (fail open at once), then the next request tries.
OUTAGE_PAUSE_SECONDS = 1.0
BUSY_RETRY_AFTER = 1
MICRO = 1_000_000

# ---------------------------------------------------------------------------------------- rates

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+)?\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Rate:
    limit: int
    window: int  # seconds

    def per_hour(self) -> int:
        return self.limit * 3600 // self.window


def parse_rates(text: str) -> tuple[Rate, ...]:
    """``"100/minute"``, ``"10 per 5 seconds"``, ``"5/minute;100/hour"`` -> rates; ValueError otherwise."""
    rates = []
    for part in text.split(";"):
        match = _RATE.match(part)
        if match is None or int(match.group(1)) <= 0 or match.group(2) == "0":
            raise ValueError(f"not a rate: {part.strip()!r} (write e.g. 100/minute, 10/5 seconds, 5/minute;50/hour)")
        rates.append(Rate(int(match.group(1)), int(match.group(2) or 1) * _UNITS[match.group(3).lower()]))
    return tuple(rates)


@dataclass(frozen=True)
class Policy:
    name: str
    rates: tuple[Rate, ...]

    def header_items(self) -> list[str]:
        return [f'"{self._item(i)}";q={rate.limit};w={rate.window}' for i, rate in enumerate(self.rates)]

    def _item(self, index: int) -> str:
        return self.name if index == 0 else f"{self.name}-{index}"


@dataclass(frozen=True)
class Budget:
    """One key of a check: which policy, which of its rates, for which client."""

    policy: Policy
    index: int
    client: str

    @property
    def rate(self) -> Rate:
        return self.policy.rates[self.index]

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.policy.name}:{self.index}:{self.client}"


def budgets(policy: Policy, client: str) -> list[Budget]:
    return [Budget(policy, index, client) for index in range(len(policy.rates))]


# ------------------------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class Decision:
    allowed: bool
    budget: Budget  # the one that decided: the refusing one, or the one with the least left
    remaining: int
    reset: int  # seconds until the whole quota is back
    retry_after: int  # seconds until one more request would pass (0 when allowed)

    def headers(self, policies: Sequence[Policy]) -> dict[str, str]:
        policy_items = [item for policy in policies for item in policy.header_items()]
        name = self.budget.policy._item(self.budget.index)
        headers = {
            "RateLimit-Policy": ", ".join(policy_items),
            "RateLimit": f'"{name}";r={self.remaining};t={self.reset}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def evaluate(now: int, stored: Sequence[int | None], checks: Sequence[Budget]) -> tuple[Decision, list[int]]:
    """GCRA over several keys at once (times in microseconds): the decision and the new TATs.

    The Lua script below does exactly this in Redis; keep the two in step.
    """
    worst: Decision | None = None
    new_tats = []
    for budget, tat in zip(checks, stored, strict=True):
        period = budget.rate.window * MICRO
        interval = math.ceil(period / budget.rate.limit)
        tat = max(tat or now, now)
        new_tat = tat + interval
        excess = new_tat - now - period
        new_tats.append(new_tat)
        if excess > 0:
            decision = Decision(False, budget, 0, _seconds(tat - now), max(1, _seconds(excess)))
        else:
            remaining = (period - (new_tat - now)) // interval
            decision = Decision(True, budget, remaining, _seconds(new_tat - now), 0)
        if worst is None or _worse(decision, worst):
            worst = decision
    assert worst is not None, "a check needs at least one budget"
    return worst, new_tats


def _seconds(micros: int) -> int:
    return max(0, math.ceil(micros / MICRO))


def _worse(a: Decision, b: Decision) -> bool:
    if a.allowed != b.allowed:
        return not a.allowed
    if not a.allowed:
        return a.retry_after > b.retry_after
    return a.remaining < b.remaining


# KEYS: one per budget. ARGV: limit and window (seconds) of each. Returns {now, tat or -1 per key, allowed}.
# Mirrors evaluate(): refuse if any key is over; otherwise move every key's TAT forward.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local reply = {now}
local news = {}
local allowed = 1
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i]) * 1000000
  local interval = math.ceil(period / limit)
  local stored = redis.call('GET', KEYS[i])
  reply[#reply + 1] = stored and tonumber(stored) or -1
  local tat = stored and tonumber(stored) or now
  if tat < now then tat = now end
  news[i] = tat + interval
  if news[i] - now - period > 0 then allowed = 0 end
end
if allowed == 1 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%d', news[i]), 'PX', math.ceil((news[i] - now) / 1000) + 1)
  end
end
reply[#reply + 1] = allowed
return reply
"""


class Limiter(Protocol):
    async def check(self, checks: Sequence[Budget]) -> Decision: ...

    async def close(self) -> None: ...


class MemoryLimiter:
    """In this process only; memory follows the clients seen within their windows."""

    PURGE_AT = 10_000

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._tats: dict[str, int] = {}
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock() * MICRO)

    async def check(self, checks: Sequence[Budget]) -> Decision:
        return self.check_now(checks)

    def check_now(self, checks: Sequence[Budget]) -> Decision:
        now = self._now()
        decision, new_tats = evaluate(now, [self._tats.get(b.key) for b in checks], checks)
        if decision.allowed:
            if len(self._tats) >= self.PURGE_AT:
                # A TAT in the past means a full bucket, the same as no entry: drop those.
                self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
            for budget, tat in zip(checks, new_tats, strict=True):
                self._tats[budget.key] = tat
        return decision

    async def close(self) -> None:
        return None


class RedisLimiter:
    """Shared by every instance: one budget per client however many servers answer.

    On the app's Redis client (``App.redis``), which the app closes: :meth:`close` leaves it.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(_GCRA)

    async def check(self, checks: Sequence[Budget]) -> Decision:
        args: list[int] = []
        for budget in checks:
            args += [budget.rate.limit, budget.rate.window]
        reply = await self._script(keys=[b.key for b in checks], args=args)
        now, stored = int(reply[0]), [int(v) if int(v) >= 0 else None for v in reply[1:-1]]
        decision, _ = evaluate(now, stored, checks)
        if decision.allowed != bool(int(reply[-1])):  # the script and evaluate() disagree: a bug
            raise RuntimeError("rate limit script and evaluate() disagree")
        return decision

    async def close(self) -> None:
        return None


HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
OPENAPI_HEADERS: dict[str, Any] = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
    "RateLimit": {"description": 'IETF draft: "policy";r=<left>;t=<seconds to full>', "schema": {"type": "string"}},
    "RateLimit-Policy": {"description": 'IETF draft: "policy";q=<quota>;w=<window s>', "schema": {"type": "string"}},
}

# ------------------------------------------------------------------------------------- settings


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RateLimitSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PETSTORE_RATELIMIT_", env_file=".env", extra="ignore", frozen=True)

    login_per_user: str = "5/minute;30/hour"
    login_per_ip: str = "20/minute"
    # Per instance while Redis is away: the shared budget, roughly halved.
    login_fallback_per_user: str = "3/minute;15/hour"
    login_fallback_per_ip: str = "10/minute"
    routes: Annotated[tuple[str, ...], NoDecode] = ()
    ws_connect: str = "30/minute"
    # Per IP whoever signs in: accounts are free, addresses are not. The burst is the reconnect
    # storm of the dashboards behind one NAT address after a restart (each reconnects within a
    # second, backoff with full jitter); 5 a second after it.
    ws_connect_per_ip: str = "300/minute"
    ws_messages: str = "50/10 seconds"
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    # Probes, scrapes and files: cheap to serve, and a page of pet photos must not spend the API budget.
    exempt: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("/healthz", "/readyz", "/metrics", "/static/*", "/media/*", "/favicon.ico")
    )

    @field_validator("routes", "trusted_proxies", "exempt", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)


@dataclass(frozen=True)
class RouteOverride:
    method: str
    pattern: str
    policy: Policy

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and fnmatch.fnmatchcase(path, self.pattern)


def _override(entry: str, index: int) -> RouteOverride:
    target, sep, rate = entry.rpartition("=")
    method, _, pattern = target.strip().partition(" ")
    if not sep or not pattern.strip():
        raise ValueError(f"not a route override: {entry!r} (write METHOD /path/glob=RATE)")
    return RouteOverride(method.upper(), pattern.strip(), Policy(f"route{index}", parse_rates(rate)))


# ---------------------------------------------------------------------------------- the plugin


def client_ip(scope: Scope, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The peer, or the first untrusted hop of ``X-Forwarded-For`` when the peer is a trusted proxy."""
    peer = (scope.get("client") or ("unknown", 0))[0]

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    if not trusted or not is_trusted(peer):
        return str(peer)
    forwarded = Headers(scope=scope).getlist("x-forwarded-for")
    hops = [hop.strip() for value in forwarded for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):  # right to left: the rightmost hops were added by our own proxies
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else str(peer)


def _digest(text: str) -> str:
    # Usernames go into Redis keys: hashed, so any bytes are safe and none is stored in clear.
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]


class RateLimitPlugin(PluginBase):
    name = "ratelimit"

    def __init__(self, settings: Settings, config: RateLimitSettings | None = None) -> None:
        config = config or RateLimitSettings()
        try:
            self.default = Policy("default", parse_rates(settings.rate_limit))
            self.login_user = Policy("login-user", parse_rates(config.login_per_user))
            self.login_ip = Policy("login-ip", parse_rates(config.login_per_ip))
            self.login_user_fallback = Policy("login-user-fallback", parse_rates(config.login_fallback_per_user))
            self.login_ip_fallback = Policy("login-ip-fallback", parse_rates(config.login_fallback_per_ip))
            self.ws_connect_policy = Policy("ws-connect", parse_rates(config.ws_connect))
            self.ws_connect_ip_policy = Policy("ws-connect-ip", parse_rates(config.ws_connect_per_ip))
            self.ws_messages_policy = Policy("ws-messages", parse_rates(config.ws_messages))
            self.overrides = [_override(entry, i) for i, entry in enumerate(config.routes)]
            self.trusted = [ipaddress.ip_network(cidr, strict=False) for cidr in config.trusted_proxies]
        except ValueError as exc:
            raise ConfigurationError(f"rate limit settings: {exc}") from None
        self.exempt = config.exempt
        self.limiter: Limiter = MemoryLimiter()
        # Per connection and per process on purpose: a message costs no network round trip.
        self.messages = MemoryLimiter(clock=time.monotonic)
        #: The login budget of this instance alone, for while the shared one cannot be reached.
        self.fallback = MemoryLimiter()
        self._state: App | None = None
        self._last_log = -math.inf
        self._last_busy_log = -math.inf
        #: Until this monotonic time Redis counts as down without being asked (see OUTAGE_PAUSE_SECONDS).
        self._down_until = -math.inf

    def is_exempt(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.exempt)

    # -- life cycle

    async def startup(self, state: App) -> None:
        self._state = state
        if state.redis is not None:
            self.limiter = RedisLimiter(state.redis)

    async def shutdown(self, state: App) -> None:
        await self.limiter.close()
        self.limiter = MemoryLimiter()

    def cors_headers(self) -> CorsHeaders:
        return CorsHeaders(expose=("RateLimit", "RateLimit-Policy"))

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
        user = scope.get("user")
        if isinstance(user, Principal):
            return f"user:{user.user_id}"
        return f"ip:{client_ip(scope, self.trusted)}"

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
            except PoolExhausted:
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

    async def ws_connect(self, websocket: WebSocket) -> int | None:
        scope = websocket.scope
        checks = budgets(self.ws_connect_policy, self.client(scope))
        checks += budgets(self.ws_connect_ip_policy, f"ip:{client_ip(scope, self.trusted)}")
        try:
            decision = await self.check(checks)
        except PoolExhausted:
            return 1013  # busy: try again later
        if decision is not None and not decision.allowed:
            self.report("ratelimit.rejected", scope="ws")
            return 1013
        return None  # allowed, or the backend is down: connections are ordinary traffic (fail open)

    async def ws_message(self, connection_id: str, principal: Principal | None, message_type: str) -> str | None:
        decision = self.messages.check_now(budgets(self.ws_messages_policy, f"conn:{connection_id}"))
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
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or self.plugin.is_exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        plugin = self.plugin
        login = (method, path) in LOGIN_ROUTES
        username: str | None = None
        if login:
            receive, username = await _login_username(scope, receive)
            policies, checks = _login_checks(plugin.login_user, plugin.login_ip, scope, username, plugin.trusted)
            label = "login"
        else:
            policy = next((o.policy for o in plugin.overrides if o.matches(method, path)), plugin.default)
            policies, checks, label = [policy], budgets(policy, plugin.client(scope)), "http"
        try:
            decision = await plugin.check(checks)
        except PoolExhausted:
            message = "too busy to count this request: retry shortly"
            await unavailable_response(message, BUSY_RETRY_AFTER)(scope, receive, send)
            return
        if decision is None:
            if not login:
                await self.app(scope, receive, send)  # fail open: reads and writes carry on unlimited
                return
            # An unlimited login is an open door to guessing, and no login at all stops the store:
            # this instance's own, stricter budget instead.
            policies, checks = _login_checks(
                plugin.login_user_fallback, plugin.login_ip_fallback, scope, username, plugin.trusted
            )
            decision = plugin.fallback.check_now(checks)
        headers = decision.headers(policies)
        if not decision.allowed:
            plugin.report("ratelimit.rejected", scope=label)
            message = f"too many requests: retry in {decision.retry_after} s"
            await error_response(429, "rate_limited", message, headers)(scope, receive, send)
            return
        await self.app(scope, receive, _with_headers(send, headers))


def _login_checks(
    per_user: Policy,
    per_ip: Policy,
    scope: Scope,
    username: str | None,
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> tuple[list[Policy], list[Budget]]:
    checks = budgets(per_ip, f"ip:{client_ip(scope, trusted)}")
    if username:
        checks = budgets(per_user, f"name:{_digest(username)}") + checks
    return [per_user, per_ip], checks


def _with_headers(send: Send, headers: Mapping[str, str]) -> Send:
    extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers


async def _login_username(scope: Scope, receive: Receive) -> tuple[Receive, str | None]:
    """The username a login request names, and a ``receive`` that replays the body to the endpoint.

    Read exactly as the endpoint reads it (the same parser, the same size limit): a body that
    cannot be read here is refused there, before any password is checked.
    """
    if scope["method"] == "GET":
        return receive, _username(Request(scope).query_params)
    messages: list[Message] = []

    async def recording() -> Message:
        message = await receive()
        messages.append(message)
        return message

    try:
        data = await read_data(Request(scope, recording), form=True)
    except (ApiError, ClientDisconnect):
        data = None
    replay = iter(messages)

    async def replaying() -> Message:
        return next(replay, None) or await receive()

    return replaying, _username(data)


def _username(data: object) -> str | None:
    name = data.get("username") if isinstance(data, Mapping) else None
    return name if isinstance(name, str) and name else None


def plugin(settings: Settings) -> RateLimitPlugin:
    return RateLimitPlugin(settings)
