"""Real services for the tests: Redis, PostgreSQL, Prometheus and the petstore server itself.

Each helper starts the real program on a free loopback port inside its own temporary directory,
waits for a condition with a deadline (never a fixed sleep) and stops it cleanly. Nothing here
imports pytest, so the same classes serve `bench/` scripts and debugging sessions:

    with RedisServer() as redis, PostgresServer() as pg:
        url = pg.async_url(pg.create_database())

Every failure is a `ServiceError` carrying the tail of the program's log, so a test that cannot
start a service says why. The programs come from the Debian packages `scripts/test` installs.
"""

from .base import HOST, ServiceError, free_port, http_get, wait_until
from .postgres import PG_BINDIR, PG_USER, PostgresServer
from .prometheus import PrometheusServer
from .redis import RedisServer
from .uvicorn import DEFAULT_APP_COMMAND, UvicornServer

__all__ = [
    "DEFAULT_APP_COMMAND",
    "HOST",
    "PG_BINDIR",
    "PG_USER",
    "PostgresServer",
    "PrometheusServer",
    "RedisServer",
    "ServiceError",
    "UvicornServer",
    "free_port",
    "http_get",
    "wait_until",
]
