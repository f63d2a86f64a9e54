"""The rate limiter's settings (``PETSTORE_RATE_LIMIT`` and ``PETSTORE_RATELIMIT_*``) and the policies they make.

:meth:`Policies.from_settings` reads them all once, at start-up: a value that does not parse
stops the server with a :class:`~petstore.errors.ConfigurationError` naming the variable, which
the plugin loader reports as this plugin's failure to load.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from petstore.config import Settings
from petstore.errors import ConfigurationError
from petstore.rates import parse_rates
from plugins.ratelimit.clients import Network
from plugins.ratelimit.gcra import Policy

T = TypeVar("T")
ENV_PREFIX = "PETSTORE_RATELIMIT_"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RateLimitSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True)

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
    # Reconnects with a resume pass (plugins.ratelimit.resume), per IP: they skip the two above,
    # and this wide budget bounds what the passes of many connections behind one address can do.
    ws_resume_per_ip: str = "20000/10 minutes"
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


def _read(variable: str, parse: Callable[[], T]) -> T:
    try:
        return parse()
    except ValueError as exc:
        raise ConfigurationError(f"{variable}: {exc}") from None


@dataclass(frozen=True)
class Policies:
    """Every budget the settings describe, and who is never counted."""

    default: Policy
    #: Logins, per username and per IP (both must have room), as the ``login_attempt`` hook finds them.
    login_user: Policy
    login_ip: Policy
    #: The same while Redis is unreachable, counted by this instance alone.
    login_user_fallback: Policy
    login_ip_fallback: Policy
    ws_connect: Policy
    ws_connect_ip: Policy
    ws_resume_ip: Policy
    ws_messages: Policy
    overrides: tuple[RouteOverride, ...]
    trusted: tuple[Network, ...]
    exempt: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings, config: RateLimitSettings) -> Policies:
        def policy(name: str, field: str, text: str) -> Policy:
            return _read(field, lambda: Policy(name, parse_rates(text)))

        def own(name: str, field: str) -> Policy:
            return policy(name, ENV_PREFIX + field.upper(), getattr(config, field))

        return cls(
            default=policy("default", "PETSTORE_RATE_LIMIT", settings.rate_limit),
            login_user=own("login-user", "login_per_user"),
            login_ip=own("login-ip", "login_per_ip"),
            login_user_fallback=own("login-user-fallback", "login_fallback_per_user"),
            login_ip_fallback=own("login-ip-fallback", "login_fallback_per_ip"),
            ws_connect=own("ws-connect", "ws_connect"),
            ws_connect_ip=own("ws-connect-ip", "ws_connect_per_ip"),
            ws_resume_ip=own("ws-resume-ip", "ws_resume_per_ip"),
            ws_messages=own("ws-messages", "ws_messages"),
            overrides=_read(
                f"{ENV_PREFIX}ROUTES", lambda: tuple(_override(entry, i) for i, entry in enumerate(config.routes))
            ),
            trusted=_read(
                f"{ENV_PREFIX}TRUSTED_PROXIES",
                lambda: tuple(ipaddress.ip_network(cidr, strict=False) for cidr in config.trusted_proxies),
            ),
            exempt=config.exempt,
        )

    def is_exempt(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.exempt)

    def for_route(self, method: str, path: str) -> Policy:
        """The first override that matches, else the default."""
        return next((o.policy for o in self.overrides if o.matches(method, path)), self.default)
