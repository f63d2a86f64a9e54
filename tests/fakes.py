"""Test doubles for the REST tests: an auth plugin driven by a header, and a handle on a running app.

``HeaderAuthPlugin`` stands in for ``plugins.auth`` so the endpoint tests do not depend on JWTs:
a request with ``X-Test-User: alice:3:customer`` is user 3, ``alice``, with the customer role's
scopes, exactly as an auth plugin would describe them (``scope["user"]`` / ``scope["auth"]``).
Load it with ``PETSTORE_PLUGINS=tests.fakes`` (a real uvicorn) or ``plugins=("tests.fakes",)``.
A malformed header is a 401, like a bad token. WebSockets take the same value as their
``{"type": "auth", "token": ...}``.

``ApiHarness`` is a started app under ``TestClient`` plus what the tests need to look behind the
API: users created in the database, every row of every table (to prove bad input changed
nothing), and SQL statement counts (to prove there is no N+1).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import SQLModel
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, UnauthenticatedUser
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from petstore import db
from petstore.access import AuthFailed, Principal
from petstore.app import create_app
from petstore.config import Settings
from petstore.errors import error_response
from petstore.models import Role, User
from petstore.passwords import hash_password
from petstore.plugin import PluginBase
from petstore.state import AppState

T = TypeVar("T")

HEADER = "X-Test-User"
#: The path of the HTTP request being served in this context (None in background tasks).
CURRENT_REQUEST: ContextVar[str | None] = ContextVar("CURRENT_REQUEST", default=None)
DEFAULT_PASSWORD = "correct horse battery staple"


# ------------------------------------------------------------------------------------ the auth fake


def parse_principal(value: str) -> Principal:
    """``name:id:role`` → a Principal with the role's scopes; ``AuthFailed`` when it does not parse."""
    parts = value.split(":")
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or parts[2] not in Role.__members__:
        raise AuthFailed("malformed", f"{HEADER} must be name:id:role")
    return Principal.for_role(int(parts[1]), parts[0], Role(parts[2]))


class HeaderAuthMiddleware:
    """Pure ASGI, for ``http`` and ``websocket`` scopes alike, as the real auth middleware must be."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = Headers(scope=scope).get(HEADER)
        if raw is None:
            scope["user"], scope["auth"] = UnauthenticatedUser(), AuthCredentials()
            await self._serve(scope, receive, send)
            return
        try:
            who = parse_principal(raw)
        except AuthFailed as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": exc.message})
                return
            # Exception handlers do not run for middleware: answer with the JSON error directly.
            response = error_response(401, "unauthorized", exc.message, {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        scope["user"], scope["auth"] = who, who.credentials
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = CURRENT_REQUEST.set(scope["path"] if scope["type"] == "http" else None)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_REQUEST.reset(token)


class HeaderAuthPlugin(PluginBase):
    name = "test-header-auth"

    def middleware(self) -> Sequence[Middleware]:
        return (Middleware(HeaderAuthMiddleware),)

    async def ws_authenticate(self, websocket: WebSocket, token: str) -> Principal | None:
        return parse_principal(token)

    def challenge(self) -> str:
        return "Bearer"  # it stands in for plugins.auth, so the core's 401s name the same scheme


def plugin(settings: Settings) -> HeaderAuthPlugin:
    return HeaderAuthPlugin()


# --------------------------------------------------------------------------------------- users


@dataclass(frozen=True)
class Account:
    """A user that exists in the database, and the header that makes a request theirs."""

    id: int
    username: str
    role: Role
    password: str = DEFAULT_PASSWORD

    @property
    def value(self) -> str:
        return f"{self.username}:{self.id}:{self.role.value}"

    @property
    def headers(self) -> dict[str, str]:
        return {HEADER: self.value}


@functools.cache
def _default_hash() -> str:
    # Argon2id is slow on purpose; the fixture accounts of every test share one real hash.
    return PasswordHasher().hash(DEFAULT_PASSWORD)


async def add_user(
    sessions: async_sessionmaker[AsyncSession], username: str, role: Role, password: str = DEFAULT_PASSWORD
) -> Account:
    """Insert a user with a real Argon2id hash (roles other than customer cannot sign up through the API)."""
    password_hash = _default_hash() if password == DEFAULT_PASSWORD else await hash_password(password)
    async with sessions() as session:
        user = User(username=username, role=role.value, password_hash=password_hash)
        session.add(user)
        await session.commit()
        assert user.id is not None
        return Account(user.id, username, role, password)


# ------------------------------------------------------------------------------------- the app


def make_app(database_url: str, *, plugins: Sequence[str] = ("tests.fakes",), **settings: Any) -> Starlette:
    """The real app with the header auth fake; extra keyword arguments are Settings fields."""
    return create_app(Settings(database_url=database_url, plugins=tuple(plugins), env="test", **settings))


class Clock:
    """A clock a test moves by hand (``clock.now += 5``), for what takes its clock as a callable."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StatementCounter:
    """Counts the SQL statements an engine sends, to show that a query count does not grow with the data.

    Only statements sent while serving an HTTP request count: the outbox relay and the metrics
    work on the same engine in the background, and their statements are not the request's.
    """

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if CURRENT_REQUEST.get() is not None:
            self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


class ApiHarness:
    """A started app (lifespan run, tables created) and views of its database for the assertions."""

    def __init__(self, client: TestClient, media_dir: Path) -> None:
        self.client = client
        self.media_dir = media_dir
        self._accounts: dict[Role, Account] = {}

    @property
    def state(self) -> AppState:
        state = self.client.app_state["petstore"]
        assert isinstance(state, AppState)
        return state

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a coroutine function on the app's own event loop (its engine and pool live there)."""
        assert self.client.portal is not None, "the client must be started"
        return self.client.portal.call(fn, *args)

    def relayed(self, within: float = 10.0) -> None:
        """Wait until the outbox relay has published every event written so far (and committed
        its marks): until then it may commit at any moment in the background."""

        async def unpublished() -> int:
            async with self.state.engine.connect() as conn:
                rows = await conn.exec_driver_sql("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                return int(rows.scalar_one())

        from tests.realtime.support import until  # not at the top: support imports this module

        async def published() -> bool:
            return not await unpublished()

        self.run(until, published, "the relay to publish every event written so far", within)

    def user(self, username: str, role: Role = Role.customer, password: str = DEFAULT_PASSWORD) -> Account:
        return self.run(add_user, self.state.sessions, username, role, password)

    @property
    def customer(self) -> Account:
        return self._account(Role.customer)

    @property
    def staff(self) -> Account:
        return self._account(Role.staff)

    @property
    def admin(self) -> Account:
        return self._account(Role.admin)

    def create_accounts(self) -> None:
        """One user of each role, made before the test starts so that snapshots already hold them."""
        for role in Role:
            self._accounts[role] = self.user(f"the-{role.value}", role)

    def _account(self, role: Role) -> Account:
        return self._accounts[role]

    def rows(self, model: type[SQLModel], *, where: Any = None) -> list[Any]:
        async def fetch() -> list[Any]:
            async with self.state.sessions() as session:
                query = select(model)
                if where is not None:
                    query = query.where(where)
                return list((await session.execute(query)).scalars().all())

        return self.run(fetch)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in a stable order: equal snapshots mean nothing changed.

        ``outbox.published_at`` is left out: the relay sets it in the background, whenever it publishes.
        """

        async def fetch() -> dict[str, list[tuple[Any, ...]]]:
            tables: dict[str, list[tuple[Any, ...]]] = {}
            async with self.state.engine.connect() as conn:
                for table in SQLModel.metadata.sorted_tables:
                    columns = [column for column in table.columns if column.name != "published_at"]
                    result = await conn.execute(select(*columns))
                    tables[table.name] = sorted((tuple(row) for row in result.all()), key=repr)
            return tables

        snapshot = self.run(fetch)
        snapshot["media"] = sorted((str(p.relative_to(self.media_dir)),) for p in self.media_dir.rglob("*"))
        return snapshot

    @contextlib.contextmanager
    def count_statements(self) -> Iterator[StatementCounter]:
        counter = StatementCounter()
        engine = self.state.engine.sync_engine
        event.listen(engine, "before_cursor_execute", counter)
        try:
            yield counter
        finally:
            event.remove(engine, "before_cursor_execute", counter)

    # Shorthand for the requests the tests make again and again.

    def new_pet(self, name: str = "Rex", **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "photoUrls": [], **fields}
        response = self.client.post("/api/v3/pet", json=body, headers=self.staff.headers)
        assert response.status_code == 200, response.text
        pet: dict[str, Any] = response.json()
        return pet

    def inventory(self) -> dict[str, int]:
        response = self.client.get("/api/v3/store/inventory")
        assert response.status_code == 200, response.text
        counts: dict[str, int] = response.json()
        return counts


async def create_schema(database_url: str) -> None:
    """The tables, straight from the models, before any app (and its outbox relay) opens the database."""
    engine = db.create_engine(Settings(database_url=database_url, plugins=(), env="test"))
    try:
        await db.create_all(engine)
    finally:
        await engine.dispose()


def prepare_database(database_url: str, customers: int = 1) -> dict[str, Account]:
    """Tables plus accounts for a server started elsewhere (a real uvicorn): ``the-staff``,
    ``the-admin`` and ``customer-0`` ... ``customer-{n-1}``, by username."""

    async def prepare() -> dict[str, Account]:
        await create_schema(database_url)
        engine = db.create_engine(Settings(database_url=database_url, plugins=(), env="test"))
        try:
            sessions = db.create_sessionmaker(engine)
            accounts = [
                await add_user(sessions, "the-staff", Role.staff),
                await add_user(sessions, "the-admin", Role.admin),
            ]
            accounts += [await add_user(sessions, f"customer-{i}", Role.customer) for i in range(customers)]
            return {account.username: account for account in accounts}
        finally:
            await engine.dispose()

    return asyncio.run(prepare())


def uvicorn_env(database_url: str, media_dir: Path) -> dict[str, str]:
    """The environment of a real server with the header auth fake and nothing else loaded."""
    return {
        "PETSTORE_DATABASE_URL": database_url,
        "PETSTORE_PLUGINS": "tests.fakes",
        "PETSTORE_MEDIA_DIR": str(media_dir),
        "PETSTORE_ENV": "test",
    }


REPO_ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running_api(database_url: str, media_dir: Path, **settings: Any) -> Iterator[ApiHarness]:
    """Start the app on ``database_url`` with fresh tables and yield a harness around it."""
    asyncio.run(create_schema(database_url))
    app = make_app(database_url, media_dir=media_dir, **settings)
    # Server exceptions are raised in the test: a 500 shows up with its traceback.
    with TestClient(app) as client:
        harness = ApiHarness(client, media_dir)
        harness.create_accounts()
        yield harness


def assert_error(response: Any, status: int, type: str | None = None, headers: Mapping[str, str] | None = None) -> None:
    """The JSON error shape of SPEC §2, with this status (and type, and headers, when given)."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert set(body) == {"code", "type", "message"}, body
    assert body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in body["message"]
    if type is not None:
        assert body["type"] == type, body
    for name, value in (headers or {}).items():
        assert response.headers.get(name) == value
