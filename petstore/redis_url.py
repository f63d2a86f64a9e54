"""``PETSTORE_REDIS_URL``, read once: which kind of Redis deployment, where, and how to log in.

Three forms (SPEC §1), each with a TLS twin:

- ``redis://[:PW@]host:port[/DB]``, ``rediss://…``: one server (redis-py reads it itself);
- ``redis+sentinel://[:PW@]h1:26379,h2:26379/SERVICE[?sentinel_password=…&db=N]``: the primary
  of ``SERVICE`` as the sentinels name it, looked up again on every new connection, so a
  failover is followed without a restart;
- ``redis+cluster://[:PW@]h1:7000,h2:7001``: a Redis Cluster, whose nodes are discovered from any
  of the startup nodes listed.

A mistake in the URL is a :class:`ValueError` naming it (Settings reports it at start-up), and
the password never appears in its message or in :func:`redacted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

Kind = Literal["single", "sentinel", "cluster"]

SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
SENTINEL_OPTIONS = frozenset({"sentinel_password", "db"})


@dataclass(frozen=True)
class RedisTarget:
    kind: Kind
    #: The URL as given: a single server's is handed to redis-py unchanged.
    url: str
    tls: bool = False
    #: Sentinels (sentinel), startup nodes (cluster); empty for a single server.
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    #: The Sentinel service name (``SERVICE``), and its options.
    service: str = ""
    sentinel_password: str | None = None
    db: int = 0


def parse(url: str) -> RedisTarget:
    """The deployment ``url`` names; :class:`ValueError` with the reason when it names none."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(f"PETSTORE_REDIS_URL must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    kind, tls = SCHEMES[scheme]
    if kind == "single":
        return RedisTarget("single", url, tls)
    parts = urlsplit(url)
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    hosts = tuple(_host(item, 26379 if kind == "sentinel" else 6379) for item in netloc.split(","))
    query = parse_qs(parts.query, keep_blank_values=True)
    if kind == "cluster":
        if parts.path.strip("/") or query:
            raise ValueError("a redis+cluster:// URL takes no path and no options (a cluster has one database)")
        return RedisTarget("cluster", url, tls, hosts, username, password)
    service = unquote(parts.path.strip("/"))
    if not service or "/" in service:
        raise ValueError("a redis+sentinel:// URL names its service: redis+sentinel://host:26379/SERVICE")
    unknown = set(query) - SENTINEL_OPTIONS
    if unknown:
        raise ValueError(f"unknown redis+sentinel:// option(s): {', '.join(sorted(unknown))}")
    db = query.get("db", ["0"])[-1]
    if not db.isdigit():
        raise ValueError("the db option of a redis+sentinel:// URL is a database number")
    sentinel_password = query.get("sentinel_password", [""])[-1] or None
    return RedisTarget("sentinel", url, tls, hosts, username, password, service, sentinel_password, int(db))


def _host(item: str, default_port: int) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", str(default_port))
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port in PETSTORE_REDIS_URL: {item!r}")
    return host, int(port)


def redacted(url: str) -> str:
    """The URL without its password (and the sentinels'), fit for a log line."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hosts}" if user else f":***@{hosts}"
    query = "&".join(
        f"{key}=***" if key == "sentinel_password" else f"{key}={value}"
        for key, values in parse_qs(parts.query, keep_blank_values=True).items()
        for value in values
    )
    return parts._replace(netloc=netloc, query=query).geturl()
