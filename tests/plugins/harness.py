"""The real app with the real auth and rate-limit plugins, for tests/plugins/test_{auth,ratelimit}.py.

``running_app(tmp_path, ...)`` starts ``create_app`` on a SQLite file (tables from the models, the
auth plugin's included, made before the app starts),
with ``plugins.auth``, ``plugins.ratelimit`` and :class:`Recorder`, a plugin that remembers every
``observe`` call and serves ``/test/whoami`` over HTTP and WebSocket so the tests can see what
the auth middleware put in ``scope["user"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from petstore import db
from petstore.access import principal
from petstore.api.users import create_user_row
from petstore.app import create_app
from petstore.config import Settings
from petstore.models import Role, User, UserBody
from petstore.plugin import Plugin, PluginBase
from petstore.state import AppState
from plugins.auth import schema as auth_schema

T = TypeVar("T")

PLUGINS = ("plugins.auth", "plugins.ratelimit", "tests.plugins.harness:Recorder")
PASSWORD = "a long enough password"
SECRET = "test-secret-" + "x" * 40


class Recorder(PluginBase):
    """Remembers what the core and the other plugins report, and shows who a request is."""

    name = "recorder"

    def __init__(self, settings: Settings) -> None:
        self.seen: list[tuple[str, float, dict[str, str]]] = []

    def observe(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        self.seen.append((name, value, dict(labels)))

    def count(self, name: str, **labels: str) -> int:
        return sum(1 for seen, _, got in self.seen if seen == name and all(got.get(k) == v for k, v in labels.items()))

    def routes(self) -> Sequence[BaseRoute]:
        async def whoami(request: Request) -> Response:
            who = principal(request)
            return JSONResponse(None if who is None else {"user": who.username, "role": who.role.value})

        async def whoami_ws(websocket: WebSocket) -> None:
            await websocket.accept()
            who = principal(websocket)
            await websocket.send_json(None if who is None else {"user": who.username, "role": who.role.value})
            await websocket.close()

        return (
            Route("/test/whoami", whoami, methods=["GET"]),
            WebSocketRoute("/test/whoami", whoami_ws),
        )


class App:
    """A started app and the shortcuts the tests use again and again."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    @property
    def state(self) -> AppState:
        state = self.client.app_state["petstore"]
        assert isinstance(state, AppState)
        return state

    def plugin(self, name: str) -> Any:
        found: Plugin = next(p for p in self.state.plugins if p.name == name)
        return found

    @property
    def recorder(self) -> Recorder:
        recorder = self.plugin("recorder")
        assert isinstance(recorder, Recorder)
        return recorder

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a coroutine function on the app's event loop, where its engine and clients live."""
        assert self.client.portal is not None
        return self.client.portal.call(fn, *args)

    def add_user(
        self, username: str, role: Role = Role.customer, password: str = PASSWORD, user_id: int | None = None
    ) -> int:
        async def add() -> int:
            async with self.state.sessions() as session:
                body = UserBody(id=user_id, username=username, password=password)
                user = await create_user_row(session, body, role)
                await session.commit()
                assert user.id is not None
                return user.id

        return self.run(add)

    def delete_user(self, username: str) -> None:
        async def remove() -> None:
            async with self.state.sessions() as session:
                await session.execute(delete(User).where(User.username == username))  # type: ignore[arg-type]
                await session.commit()

        self.run(remove)

    def login(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        response = self.client.post("/api/v3/auth/token", data={"username": username, "password": password})
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens

    def whoami(self, token: str) -> Any:
        return self.client.get("/test/whoami", headers=bearer(token))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_settings(tmp_path: Path, **settings: Any) -> Settings:
    fields: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}",
        "plugins": PLUGINS,
        "media_dir": tmp_path / "media",
        "env": "test",
    }
    return Settings(**(fields | settings))


async def create_tables(engine: AsyncEngine) -> None:
    """The core's tables and the auth plugin's, from their models (what ``petstore migrate`` makes)."""
    await db.create_all(engine)
    async with engine.begin() as connection:
        await connection.run_sync(auth_schema.metadata.create_all)


def prepare_tables(settings: Settings) -> None:
    """:func:`create_tables` on ``settings.database_url``, before any app opens it."""

    async def prepare() -> None:
        engine = db.create_engine(settings)
        try:
            await create_tables(engine)
        finally:
            await engine.dispose()

    asyncio.run(prepare())


@contextlib.contextmanager
def running_app(
    tmp_path: Path, client: tuple[str, int] = ("127.0.0.1", 50000), jwt_secret: str = SECRET, **settings: Any
) -> Iterator[App]:
    """The started app on a SQLite file in ``tmp_path`` (tables created first); keyword arguments are
    Settings, and ``jwt_secret`` the auth plugin's ``PETSTORE_JWT_SECRET``."""
    full = make_settings(tmp_path, **settings)
    prepare_tables(full)
    with auth_secret(jwt_secret), TestClient(create_app(full), client=client) as test_client:
        yield App(test_client)


def auth_secret(secret: str = SECRET) -> contextlib.AbstractContextManager[Any]:
    """``PETSTORE_JWT_SECRET`` set while the auth plugin loads (it reads its settings when built)."""
    return mock.patch.dict(os.environ, {"PETSTORE_JWT_SECRET": secret})


def assert_error(response: Any, status: int, type: str | None = None, *, oauth: str | None = None) -> None:
    """The JSON error shape of SPEC §2 with this status, never a stack trace; with ``oauth``, the
    token endpoint's, which adds RFC 6749 §5.2's ``error`` (this one) and ``error_description``."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    body = response.json()
    if oauth is not None:
        assert body.pop("error") == oauth, body
        assert body.pop("error_description") == body["message"], body
    assert set(body) == {"code", "type", "message"}, body
    assert body["code"] == status
    assert "Traceback" not in body["message"]
    if type is not None:
        assert body["type"] == type, body
