"""The ``petstore`` command (SPEC §1).

::

    petstore --version
    petstore serve [--host H] [--port P] [--workers N] [--log-level L] [--root-path P]
    petstore migrate                                      bring the schema up to date (Alembic)
    petstore users create NAME --password PW [--role R]   create a user
    petstore users list [--role R]                        list the accounts
    petstore users set-role NAME ROLE                     change a role (its live sessions end)
    petstore users delete NAME                            delete an account (its live sessions end)
    petstore seed [--pets N] [--if-empty]                 demo pets and demo accounts
    petstore watch ROOM... [--url URL] [--token-file F]   rooms' live events (petstore.watch)

Settings come from ``PETSTORE_*`` variables and ``.env``, as for the server; one that nobody reads
but that is close to one somebody does (the core, or a plugin's ``environment()``) gets a warning
naming it. Bad arguments exit with status 2 and a usage line; a configuration, plugin, input or
database problem exits with status 1 and one line on stderr, never a traceback.

``serve --workers N`` (N > 1) runs uvicorn's supervisor (:mod:`petstore.server.workers`); what a
plugin needs around several workers it sets up through its ``workers()`` hook (the metrics
plugin: its multiprocess mode). Whom to believe about a client's address behind a proxy is the
one setting ``PETSTORE_RATELIMIT_TRUSTED_PROXIES``, not a flag of ``serve``.

``users set-role`` and ``users delete`` run without the server, on its database: the plugins are
started around the change and told of it (``user_changed``), as the REST endpoints do, so the
auth plugin ends the account's live sessions on every running instance (through Redis at once,
else by the instances' next database poll); its HTTP requests use the new role at once, since
every request is checked against the account's row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.metadata
import logging
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from petstore import logs, watch
from petstore.config import CORE_VARIABLES, Settings, misspelled, own_origins
from petstore.errors import ApiError, ConfigurationError, PetstoreError, PluginError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from petstore.plugin import Plugins

T = TypeVar("T")

APP = "petstore.app:create_app"
#: uvicorn's sans-I/O WebSocket protocol plus the hub's direct-write extension (petstore.server.uvicorn_ws)
WS_PROTOCOL = "petstore.server.uvicorn_ws:WebSocketProtocol"
#: uvicorn's httptools protocol, ending event streams and stalled responses on shutdown (petstore.server.uvicorn_http)
HTTP_PROTOCOL = "petstore.server.uvicorn_http:HttpProtocol"
SHUTDOWN_ENV = "PETSTORE_SHUTDOWN_TIMEOUT"
ROLES = ("admin", "staff", "customer")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
PROGRESS_THRESHOLD = 200  # below this many pets, seeding is too quick for a progress bar to help


class UsageError(PetstoreError):
    """An argument that parses but is not acceptable (exit status 2)."""


# ------------------------------------------------------------------------------------- helpers


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"PETSTORE_{'_'.join(str(part) for part in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None
    warn_misspelled(settings)
    return settings


def warn_misspelled(settings: Settings) -> None:
    """A warning for each ``PETSTORE_*`` variable (environment or ``.env``) that is likely a typo.

    What is known is the core's (:data:`petstore.config.CORE_VARIABLES`) and what each plugin of
    ``settings`` declares; plugins that cannot load are reported by the command itself, and then
    nothing is said here rather than guessed.
    """
    from dotenv import dotenv_values

    from petstore.plugin import load_plugins

    try:
        known = CORE_VARIABLES | load_plugins(settings).environment()
    except (PluginError, ConfigurationError):
        return
    environ = {**{k: v or "" for k, v in dotenv_values(".env").items()}, **os.environ}
    for name, meant in misspelled(environ, known):
        print(f"petstore: warning: {name} is not a setting petstore knows (did you mean {meant}?)", file=sys.stderr)


def plain(doc: str | None) -> str:
    """A docstring as help text: reST's ``literals`` and :role:`targets` as plain words."""
    text = re.sub(r":\w+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", doc or "")
    return text.replace("``", "")


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


def _check_app_settings() -> tuple[Settings, Plugins]:
    """Fail in this process, with one line, on what would make every worker fail at start-up.

    Loading the plugins here also creates, once, what the workers must share and would otherwise
    race to create: the development JWT secret file (plugins.auth reads it when built).
    """
    from petstore.app import load_checked_plugins

    settings = _settings()
    return settings, load_checked_plugins(settings)


def allow_own_origins(settings: Settings, port: int) -> None:
    """Unless ``PETSTORE_ALLOWED_ORIGINS`` is set (environment or ``.env``), the dashboard this
    server serves on ``port`` may connect: its origins become the default, for the app this
    process builds and the workers it starts (they read the same environment)."""
    if "allowed_origins" not in settings.model_fields_set:
        os.environ["PETSTORE_ALLOWED_ORIGINS"] = ",".join(own_origins(port))


def _warn_of_workers_without_redis(settings: Settings, workers: int) -> None:
    if workers > 1 and not settings.redis_url:
        print(
            f"petstore: warning: PETSTORE_REDIS_URL is not set: each of the {workers} workers has its own "
            "in-process broker, so live events reach only the clients of one worker",
            file=sys.stderr,
        )


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


class AddressInUse(PetstoreError):
    """``serve`` cannot listen where it was told to (the port is taken, or the address is not this host's)."""


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the app starts (what ``uvicorn.Config.bind_socket`` does,
    with one clear line instead of a log record and ``sys.exit`` when it cannot)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(f"cannot listen on {where}: the port is already in use (another server?)") from None
        raise AddressInUse(f"cannot listen on {where}: {exc.strerror or exc}") from None
    except (socket.gaierror, UnicodeError) as exc:
        sock.close()
        raise AddressInUse(f"cannot listen on {where}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_options(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    return {
        "factory": True,
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        # One handler and format for uvicorn's loggers and the app's; the app writes the access log.
        "log_config": logs.config(settings.effective_log_format, args.log_level),
        "access_log": False,
        "root_path": args.root_path,
        **_protocols(settings),
        **PROXY_HEADERS,
    }


def serve(args: argparse.Namespace) -> int:
    """Run the server with uvicorn; several worker processes with --workers.

    The address is bound first: when the port is taken, serve says so in one line and exits
    with status 1 before the app starts. SIGTERM stops it within --shutdown-timeout seconds
    (PETSTORE_SHUTDOWN_TIMEOUT, 10 by default): it stops accepting, says 503 on /readyz, closes
    WebSockets with 1012 and ends event streams, then exits, whatever its clients do.
    Behind a reverse proxy that strips a path prefix, --root-path names it, so that the URLs
    the app gives (the OpenAPI document's server) carry it. Which proxies' X-Forwarded-For to
    believe is PETSTORE_RATELIMIT_TRUSTED_PROXIES.
    """
    import uvicorn

    if args.shutdown_timeout is not None:
        os.environ[SHUTDOWN_ENV] = str(args.shutdown_timeout)  # read by the app, in every worker
    settings, plugins = _check_app_settings()
    sock = listen(args.host, args.port)
    _warn_of_workers_without_redis(settings, args.workers)
    if args.check:
        sock.close()
        return 0
    allow_own_origins(settings, args.port)
    logger = logging.getLogger("uvicorn.error")
    try:
        if args.workers == 1:
            config = uvicorn.Config(APP, **_uvicorn_options(args, settings))
            logger.info("Uvicorn running on http://%s (Press CTRL+C to quit)", _shown_address(sock))
            uvicorn.Server(config).run(sockets=[sock])
            return 0
        from petstore.server.workers import Supervisor

        with contextlib.ExitStack() as around:
            # What the plugins prepare for the workers (they inherit this process's environment).
            on_exit = [around.enter_context(manager) for manager in plugins.workers(args.workers)]
            config = uvicorn.Config(APP, workers=args.workers, **_uvicorn_options(args, settings))
            logger.info("Uvicorn running on http://%s (Press CTRL+C to quit)", _shown_address(sock))
            Supervisor(config, sockets=[sock], on_exit=on_exit).run()
    finally:
        sock.close()
    return 0


def _shown_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------------------------- migrate


def schema_revisions(database_url: str) -> tuple[str, ...]:
    """The Alembic revisions the database is at (one per branch: the core's and each plugin's);
    none for a database without the schema."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    async def read() -> tuple[str, ...]:
        engine = create_async_engine(database_url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                heads = await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_heads())
        finally:
            await engine.dispose()
        return tuple(sorted(heads))

    return _run(read)


def migration_report(before: Sequence[str], after: Sequence[str]) -> str:
    """What ``migrate`` did, in words: created, upgraded or nothing to do."""
    if not after:
        return "the database has no schema (no migration to run)"
    shown = ", ".join(after)
    if not before:
        return f"created the schema at revision {shown}"
    if tuple(before) == tuple(after):
        return f"already at revision {shown}: nothing to do"
    return f"upgraded the schema from revision {', '.join(before)} to {shown}"


def migrate_command(args: argparse.Namespace) -> int:
    """Upgrade the database schema to the newest revision: the core's and each loaded plugin's own
    tables. Says what it did: created the schema, upgraded it (from which revision to which), or
    found it up to date."""
    from alembic.util import CommandError

    from petstore.migrations import migrate
    from petstore.plugin import load_plugins

    settings = _settings()
    before = schema_revisions(settings.database_url)
    try:
        migrate(settings.database_url, plugins=load_plugins(settings).migrations())
    except CommandError as exc:
        # E.g. the database holds the branch of a plugin that is no longer in PETSTORE_PLUGINS.
        raise ConfigurationError(f"cannot migrate: {exc} (is every plugin that created tables loaded?)") from None
    after = schema_revisions(settings.database_url)
    print(f"database {_shown_url(settings.database_url)}: {migration_report(before, after)}")
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
    from petstore.passwords import password_problem

    try:
        body = UserBody(username=args.name, password=_password(args))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"{first['loc'][0]}: {first['msg']}") from None
    problem = password_problem(body.password or "")
    if problem is not None:
        raise UsageError(f"password: {problem}")
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


@contextlib.asynccontextmanager
async def started_plugins(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Plugins]:
    """The plugins, started on this database as in the app (without HTTP or real time), so that a
    command can call their hooks; shut down after."""
    from petstore.plugin import load_plugins
    from petstore.state import AppState

    plugins = load_plugins(settings)
    state = AppState.open(settings, engine, plugins)
    started = []
    try:
        for plugin in plugins:
            await plugin.startup(state)
            started.append(plugin)
        yield plugins
    finally:
        for plugin in reversed(started):
            await plugin.shutdown(state)
        if state.redis is not None:
            from petstore.redis_client import close

            await close(state.redis)


def users_list(args: argparse.Namespace) -> int:
    """List the accounts: id, username, role and e-mail, by id (never a password or its hash)."""
    from sqlmodel import col, select

    from petstore.db import create_engine, create_sessionmaker
    from petstore.models import User

    settings = _settings()

    async def read() -> list[tuple[int, str, str, str]]:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                query = select(User).order_by(col(User.id))
                if args.role is not None:
                    query = query.where(col(User.role) == args.role)
                found = (await session.execute(query)).scalars().all()
                return [(user.id or 0, user.username, user.role, user.email or "") for user in found]
        finally:
            await engine.dispose()

    found = _run(read)
    if not found:
        print("no users" if args.role is None else f"no users with the role {args.role}")
        return 0
    width = max(len("USERNAME"), *(len(name) for _, name, _, _ in found))
    print(f"{'ID':>6}  {'USERNAME':<{width}}  {'ROLE':<8}  EMAIL")
    for user_id, name, role, email in found:
        print(f"{user_id:>6}  {name:<{width}}  {role:<8}  {email}".rstrip())
    return 0


def _change_user(settings: Settings, change: Callable[[Any], Coroutine[Any, Any, tuple[int, bool]]]) -> None:
    """Run ``change(session)`` (it returns the user's id and whether anything changed), commit,
    then tell the started plugins (their sessions end on every instance)."""
    from petstore.db import create_engine, create_sessionmaker

    async def run() -> None:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                user_id, changed = await change(session)
                await session.commit()
            if changed:
                async with started_plugins(settings, engine) as plugins:
                    await plugins.user_changed(user_id)
        finally:
            await engine.dispose()

    _run(run)


def users_set_role(args: argparse.Namespace) -> int:
    """Change a user's role. It holds from the user's next request on, on every running instance;
    the user's live WebSocket and SSE sessions end (they reconnect with the new role)."""
    from petstore.api.users import set_role
    from petstore.models import Role

    settings = _settings()
    outcome: dict[str, str] = {}

    async def change(session: Any) -> tuple[int, bool]:
        user, changed = await set_role(session, args.name, Role(args.role))
        outcome["before"] = "" if changed else user.role
        assert user.id is not None
        return user.id, changed

    _change_user(settings, change)
    if outcome["before"]:
        print(f"user {args.name!r} already has the role {args.role}: nothing changed")
    else:
        print(f"user {args.name!r} now has the role {args.role}")
    return 0


def users_delete(args: argparse.Namespace) -> int:
    """Delete a user; their orders stay, as records. Their live sessions end and their tokens stop
    working on every running instance."""
    from petstore.api.users import delete_user_row

    settings = _settings()

    async def change(session: Any) -> tuple[int, bool]:
        return await delete_user_row(session, args.name), True

    _change_user(settings, change)
    print(f"deleted user {args.name!r}")
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


def version() -> str:
    try:
        return importlib.metadata.version("petstore")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from petstore import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petstore",
        description="A real-time Swagger Petstore v3 server. Settings come from PETSTORE_* variables and .env.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("serve", help="run the server (uvicorn)", description=plain(serve.__doc__))
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
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="uvicorn's log level (default: %(default)s)")
    p.add_argument(
        "--root-path",
        type=_root_path,
        default="",
        metavar="PREFIX",
        help="the path prefix a reverse proxy serves the app under and strips, e.g. /petstore (default: none)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check the settings and that the address is free, then exit without serving",
    )
    p.set_defaults(func=serve)

    p = commands.add_parser(
        "migrate", help="bring the database schema up to date", description=plain(migrate_command.__doc__)
    )
    p.set_defaults(func=migrate_command)

    users = commands.add_parser("users", help="manage users", description="Manage user accounts.")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    p = user_commands.add_parser("create", help="create a user", description=plain(users_create.__doc__))
    p.add_argument("name", metavar="NAME", help="the username")
    secret = p.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password", metavar="PW", help="the password (visible to other local users in ps)")
    secret.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.add_argument("--role", choices=ROLES, default="customer", help="(default: %(default)s)")
    p.set_defaults(func=users_create)
    p = user_commands.add_parser("list", help="list the users", description=plain(users_list.__doc__))
    p.add_argument("--role", choices=ROLES, default=None, help="only the users with this role")
    p.set_defaults(func=users_list)
    p = user_commands.add_parser("set-role", help="change a user's role", description=plain(users_set_role.__doc__))
    p.add_argument("name", metavar="NAME", help="the username")
    p.add_argument("role", metavar="ROLE", choices=ROLES, help="admin, staff or customer")
    p.set_defaults(func=users_set_role)
    p = user_commands.add_parser("delete", help="delete a user", description=plain(users_delete.__doc__))
    p.add_argument("name", metavar="NAME", help="the username")
    p.set_defaults(func=users_delete)

    p = commands.add_parser("seed", help="add demo data", description=plain(seed_command.__doc__))
    p.add_argument("--pets", type=_count, default=50, help="demo pets to add (default: %(default)s)")
    p.add_argument(
        "--if-empty", action="store_true", help="do nothing if the database already has pets or users (idempotent)"
    )
    p.set_defaults(func=seed_command)

    watch.add_parser(commands, plain)
    return parser


def _root_path(text: str) -> str:
    if text in ("", "/"):
        return ""
    if not text.startswith("/") or any(c.isspace() or c in "?#" for c in text):
        raise argparse.ArgumentTypeError(f"not a path prefix (like /petstore): {text!r}")
    return text.rstrip("/")


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
    except (ConfigurationError, PluginError, AddressInUse) as exc:
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
