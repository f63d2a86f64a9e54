"""The ``petstore`` command (SPEC §1).

::

    petstore serve [--host H] [--port P] [--workers N]    run the server (uvicorn)
    petstore migrate                                      bring the schema up to date (Alembic)
    petstore users create NAME --password PW [--role R]   create a user
    petstore seed [--pets N] [--if-empty]                 demo pets and demo accounts
    petstore watch ROOM [--url URL] [--token T]           a room's live events (petstore.watch)

Settings come from ``PETSTORE_*`` variables and ``.env``, as for the server. Bad arguments exit
with status 2 and a usage line; a configuration, plugin, input or database problem exits with
status 1 and one line on stderr, never a traceback.

``serve --workers N`` (N > 1) runs uvicorn's supervisor (:mod:`petstore.server.workers`); what a
plugin needs around several workers it sets up through its ``workers()`` hook (the metrics
plugin: its multiprocess mode).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from petstore import watch
from petstore.config import Settings
from petstore.errors import ApiError, ConfigurationError, PetstoreError, PluginError

if TYPE_CHECKING:
    from petstore.plugin import Plugins

T = TypeVar("T")

APP = "petstore.app:create_app"
#: uvicorn's sans-I/O WebSocket protocol plus the hub's direct-write extension (petstore.server.uvicorn_ws)
WS_PROTOCOL = "petstore.server.uvicorn_ws:WebSocketProtocol"
#: uvicorn's httptools protocol, ending event streams and stalled responses on shutdown (petstore.server.uvicorn_http)
HTTP_PROTOCOL = "petstore.server.uvicorn_http:HttpProtocol"
SHUTDOWN_ENV = "PETSTORE_SHUTDOWN_TIMEOUT"
ROLES = ("admin", "staff", "customer")
PROGRESS_THRESHOLD = 200  # below this many pets, seeding is too quick for a progress bar to help


class UsageError(PetstoreError):
    """An argument that parses but is not acceptable (exit status 2)."""


# ------------------------------------------------------------------------------------- helpers


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"PETSTORE_{'_'.join(str(part) for part in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None


def _run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(factory())


def _shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        rule = f"must be at least {least}" if least else "must not be negative"
        raise argparse.ArgumentTypeError(f"{rule}: {value}")
    return value


def _positive(text: str) -> int:
    return _whole(text, 1)


def _count(text: str) -> int:
    return _whole(text, 0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


# --------------------------------------------------------------------------------------- serve


def _check_app_settings(workers: int) -> tuple[Settings, Plugins]:
    """Fail in this process, with one line, on what would make every worker fail at start-up.

    Loading the plugins here also creates, once, what the workers must share and would otherwise
    race to create: the development JWT secret file (plugins.auth reads it when built).
    """
    from petstore.app import load_checked_plugins

    settings = _settings()
    plugins = load_checked_plugins(settings)
    if workers > 1 and not settings.redis_url:
        print(
            f"petstore: warning: PETSTORE_REDIS_URL is not set: each of the {workers} workers has its own "
            "in-process broker, so live events reach only the clients of one worker",
            file=sys.stderr,
        )
    return settings, plugins


#: Open files kept out of ``limit_concurrency``'s default: the database, Redis, logs, the listener.
SPARE_FILES = 64


def default_concurrency() -> int:
    """``limit_concurrency`` when unset: a little under the limit on open files, so that connections
    never use up the descriptors (petstore.server.uvicorn_http makes room at it; then uvicorn says 503)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(soft // 2, soft - SPARE_FILES, 1)


def _protocols(settings: Settings) -> dict[str, Any]:
    """uvicorn settings: petstore's protocols, its shutdown bound (petstore.server.shutdown) and its read bounds.

    The header size cap and the header and body timeouts are the HTTP protocol's own
    (petstore.server.uvicorn_http); the WebSocket protocol applies the app's message limit by itself too,
    ``ws_max_size`` says it for uvicorn's other protocols.
    """
    # Imported here, before any worker starts, to run their checks of uvicorn's internals
    # (petstore.internals): a uvicorn they were not tested with stops `serve` with one line.
    from petstore.server import uvicorn_http, uvicorn_ws  # noqa: F401
    from petstore.server.shutdown import connections_timeout

    return {
        "ws": WS_PROTOCOL,
        "http": HTTP_PROTOCOL,
        "timeout_graceful_shutdown": connections_timeout(settings.shutdown_timeout),
        "ws_max_size": settings.ws_max_message_bytes,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.limit_concurrency or default_concurrency(),
    }


#: uvicorn believes no ``X-Forwarded-For`` itself: left on, it trusts 127.0.0.1 whatever the app is
#: told, so a client on the server's host could name any address. Whom to believe is the app's one
#: setting, applied where a client's address is used (the rate-limit plugin's trusted proxies).
PROXY_HEADERS: dict[str, Any] = {"proxy_headers": False}


def serve(args: argparse.Namespace) -> int:
    """Run the server with uvicorn; several worker processes with ``--workers``.

    SIGTERM stops it within ``--shutdown-timeout`` seconds (``PETSTORE_SHUTDOWN_TIMEOUT``, 10 by
    default): it stops accepting, says 503 on ``/readyz``, closes WebSockets with 1012 and ends
    event streams, then exits, whatever its clients do.
    """
    import uvicorn

    if args.shutdown_timeout is not None:
        os.environ[SHUTDOWN_ENV] = str(args.shutdown_timeout)  # read by the app, in every worker
    if args.workers == 1:
        settings, _ = _check_app_settings(1)
        uvicorn.run(APP, factory=True, host=args.host, port=args.port, **_protocols(settings), **PROXY_HEADERS)
        return 0
    from petstore.server.workers import Supervisor

    settings, plugins = _check_app_settings(args.workers)
    with contextlib.ExitStack() as around:
        # What the plugins prepare for the workers (they inherit this process's environment).
        on_exit = [around.enter_context(manager) for manager in plugins.workers(args.workers)]
        config = uvicorn.Config(
            APP,
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            **_protocols(settings),
            **PROXY_HEADERS,
        )
        sock = config.bind_socket()
        try:
            Supervisor(config, sockets=[sock], on_exit=on_exit).run()
        finally:
            sock.close()
    return 0


# ------------------------------------------------------------------------------------- migrate


def migrate_command(args: argparse.Namespace) -> int:
    """Upgrade the database schema to the newest revision: the core's and each loaded plugin's own tables."""
    from alembic.util import CommandError

    from petstore.migrations import migrate
    from petstore.plugin import load_plugins

    settings = _settings()
    try:
        migrate(settings.database_url, plugins=load_plugins(settings).migrations())
    except CommandError as exc:
        # E.g. the database holds the branch of a plugin that is no longer in PETSTORE_PLUGINS.
        raise ConfigurationError(f"cannot migrate: {exc} (is every plugin that created tables loaded?)") from None
    print(f"database {_shown_url(settings.database_url)} is up to date")
    return 0


# --------------------------------------------------------------------------------------- users


def _password(args: argparse.Namespace) -> str:
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else args.password
    if not password:
        raise UsageError("the password is empty")
    return str(password)


def users_create(args: argparse.Namespace) -> int:
    """Create a user with a role; the password is hashed (Argon2id) and never printed."""
    from petstore.api.users import create_user_row
    from petstore.db import create_engine, create_sessionmaker
    from petstore.models import Role, UserBody

    try:
        body = UserBody(username=args.name, password=_password(args))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"{first['loc'][0]}: {first['msg']}") from None
    settings = _settings()

    async def create() -> int:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                user = await create_user_row(session, body, Role(args.role))
                await session.commit()
                assert user.id is not None
                return user.id
        finally:
            await engine.dispose()

    user_id = _run(create)
    print(f"created user {args.name!r} (id {user_id}, role {args.role})")
    return 0


# ---------------------------------------------------------------------------------------- seed


def seed_command(args: argparse.Namespace) -> int:
    """Add demo pets (with categories, tags and their events) and the demo accounts."""
    from petstore.db import create_engine, create_sessionmaker
    from petstore.progress import progress
    from petstore.seed import DEMO_USERS, seed

    settings = _settings()
    if settings.env == "production":
        raise ConfigurationError("refusing to seed demo data and demo accounts with PETSTORE_ENV=production")
    password = os.environ.get("PETSTORE_DEMO_PASSWORD") or None

    async def run() -> Any:
        engine = create_engine(settings)
        try:
            with progress("seeding pets", args.pets, enabled=args.pets >= PROGRESS_THRESHOLD) as advance:
                return await seed(
                    create_sessionmaker(engine),
                    args.pets,
                    password=password,
                    if_empty=args.if_empty,
                    progress=advance,
                )
        finally:
            await engine.dispose()

    result = _run(run)
    if result.skipped:
        print("the database already has data: nothing seeded")
        return 0
    print(f"seeded {result.pets} pets")
    if result.users:
        roles = dict(DEMO_USERS)
        accounts = ", ".join(f"{name} ({roles[name].value})" for name in result.users)
        if result.generated_password is not None:
            # Shown once, here, and stored nowhere but as Argon2id hashes: never logged.
            print(f"demo accounts {accounts}, password: {result.generated_password}")
            print("(shown only this once; set PETSTORE_DEMO_PASSWORD to choose it)")
        else:
            print(f"demo accounts {accounts}, with the password from PETSTORE_DEMO_PASSWORD")
    return 0


# -------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petstore",
        description="A real-time Swagger Petstore v3 server. Settings come from PETSTORE_* variables and .env.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("serve", help="run the server (uvicorn)", description=serve.__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes (default: %(default)s); more than 1 turns on Prometheus multiprocess mode",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="on SIGTERM, exit within this long whatever the clients do (default: PETSTORE_SHUTDOWN_TIMEOUT, or 10)",
    )
    p.set_defaults(func=serve)

    p = commands.add_parser("migrate", help="bring the database schema up to date", description=migrate_command.__doc__)
    p.set_defaults(func=migrate_command)

    users = commands.add_parser("users", help="manage users", description="Manage user accounts.")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    p = user_commands.add_parser("create", help="create a user", description=users_create.__doc__)
    p.add_argument("name", metavar="NAME", help="the username")
    secret = p.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password", metavar="PW", help="the password (visible to other local users in ps)")
    secret.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.add_argument("--role", choices=ROLES, default="customer", help="(default: %(default)s)")
    p.set_defaults(func=users_create)

    p = commands.add_parser("seed", help="add demo data", description=seed_command.__doc__)
    p.add_argument("--pets", type=_count, default=50, help="demo pets to add (default: %(default)s)")
    p.add_argument(
        "--if-empty", action="store_true", help="do nothing if the database already has pets or users (idempotent)"
    )
    p.set_defaults(func=seed_command)

    watch.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``petstore``: returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except UsageError as exc:
        words = [parser.prog, args.command, getattr(args, "users_command", None)]
        parser.exit(2, f"{' '.join(word for word in words if word)}: error: {exc}\n")
    except (ConfigurationError, PluginError) as exc:
        print(f"petstore: error: {exc}", file=sys.stderr)
    except ApiError as exc:  # a refused input: a taken username, a conflicting id
        print(f"petstore: error: {exc.message}", file=sys.stderr)
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        first_line = str(cause).splitlines()[0] if str(cause) else ""
        print(f"petstore: database error: {type(cause).__name__}: {first_line}", file=sys.stderr)
        if "no such table" in first_line or "does not exist" in first_line:
            print("petstore: hint: run `petstore migrate` first", file=sys.stderr)
    except OSError as exc:
        print(f"petstore: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
