"""What the real-time tests share: an app served by uvicorn inside the test's event loop, a
WebSocket client that reads with deadlines, and plugins that let a test see behind the protocol.

- ``ProbePlugin`` records every ``observe`` call and keeps the app's state, so a test can count
  ``ws.slow_consumer`` or reach the hub. In a server subprocess, load ``tests.realtime.support:probe``:
  it serves the counts at ``GET /_probe/observed``.
- ``expiring_auth`` is ``tests.fakes``' header auth whose WebSocket tokens may carry an expiry:
  ``name:id:role`` or ``name:id:role:<unix time>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from petstore import db
from petstore.access import AuthFailed, Principal
from petstore.app import create_app
from petstore.config import Settings
from petstore.models import Role
from petstore.plugin import PluginBase
from petstore.server import uvicorn_ws
from petstore.state import AppState
from tests.fakes import HeaderAuthPlugin, parse_principal
from tests.services import UvicornServer, free_port

DEADLINE = 10.0

#: Probes made by the factory below, newest last: an in-process test takes its app's probe from here.
PROBES: list[ProbePlugin] = []


class ProbePlugin(PluginBase):
    name = "test-probe"

    def __init__(self) -> None:
        self.state: AppState | None = None
        self.counts: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}

    async def startup(self, state: AppState) -> None:
        self.state = state

    def observe(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        key = name + "".join(f"|{k}={v}" for k, v in sorted(labels.items()))
        self.counts[key] += value
        self.gauges[key] = value

    def routes(self) -> Sequence[BaseRoute]:
        async def observed(request: Request) -> Response:
            return JSONResponse({"counts": dict(self.counts), "gauges": self.gauges})

        return [Route("/_probe/observed", observed, methods=["GET"])]


def probe(settings: Settings) -> ProbePlugin:
    plugin = ProbePlugin()
    PROBES.append(plugin)
    return plugin


class ExpiringAuthPlugin(HeaderAuthPlugin):
    name = "test-expiring-auth"

    async def ws_authenticate(self, websocket: WebSocket, token: str) -> Principal | None:
        name_id_role, _, expires = token.rpartition(":") if token.count(":") == 3 else (token, "", "")
        who = parse_principal(name_id_role)
        if not expires:
            return who
        try:
            expires_at = float(expires)
        except ValueError:
            raise AuthFailed("malformed", "bad expiry") from None
        return Principal.for_role(who.user_id, who.username, Role(who.role), expires_at=expires_at)


def expiring_auth(settings: Settings) -> ExpiringAuthPlugin:
    return ExpiringAuthPlugin()


class GatekeeperPlugin(PluginBase):
    """Takes part in the WebSocket life cycle the way rate-limit and auth plugins do."""

    name = "test-gatekeeper"

    async def ws_connect(self, websocket: WebSocket) -> int | None:
        return 1013 if websocket.headers.get("x-too-many") else None

    async def ws_message(self, connection_id: str, principal: Principal | None, message_type: str) -> str | None:
        return "rate_limited" if message_type == "unsubscribe" else None

    async def ws_authorize(self, principal: Principal | None, room: str) -> bool | None:
        return False if room == "pet:13" else None


def gatekeeper(settings: Settings) -> GatekeeperPlugin:
    return GatekeeperPlugin()


def staff_headers(name: str = "stan", user_id: int = 2) -> dict[str, str]:
    return {"X-Test-User": f"{name}:{user_id}:staff"}


# ------------------------------------------------------------------------- an app on a real port


@dataclass
class AppServer:
    url: str
    ws_url: str
    probe: ProbePlugin
    server: uvicorn.Server

    @property
    def state(self) -> AppState:
        assert self.probe.state is not None
        return self.probe.state

    def count(self, name: str, **labels: str) -> float:
        key = name + "".join(f"|{k}={v}" for k, v in sorted(labels.items()))
        return self.probe.counts.get(key, 0.0)


@contextlib.asynccontextmanager
async def serve(settings: Settings, ws: str = uvicorn_ws.PROTOCOL) -> AsyncIterator[AppServer]:
    """The real app, uvicorn on a free loopback port, in this event loop; tables created first.

    ``ws`` is uvicorn's WebSocket protocol: by default the one ``petstore serve`` runs (events
    written directly), or a plain one such as ``websockets-sansio`` (every send through ASGI).
    """
    engine = db.create_engine(settings)
    await db.create_all(engine)
    await engine.dispose()
    assert "tests.realtime.support:probe" in settings.plugins
    app = create_app(settings)
    plugin = PROBES[-1]
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws=ws)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), "uvicorn to start")
    if task.done():
        task.result()
    try:
        yield AppServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", plugin, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE)


def settings_for(database_url: str, **fields: Any) -> Settings:
    plugins = fields.pop("plugins", ("tests.realtime.support:expiring_auth", "tests.realtime.support:probe"))
    return Settings(database_url=database_url, plugins=plugins, env="test", **fields)


async def until(predicate: Any, what: str, within: float = DEADLINE, every: float = 0.01) -> None:
    """Poll a condition (a function, or a coroutine function) with a deadline; never a fixed sleep.
    ``every``: the pause between tries (longer for a condition read over HTTP, so that a wait of
    seconds does not flood a server the other tests share)."""
    deadline = time.monotonic() + within
    while not (await answer if inspect.isawaitable(answer := predicate()) else answer):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.1f}s waiting for {what}")
        await asyncio.sleep(every)  # the pace of the polling, bounded by the deadline


# ------------------------------------------------------------------------------- a test client


class Client:
    """A WebSocket client that reads message by message (batches unpacked), each read with a deadline."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.buffer: list[dict[str, Any]] = []
        self.frames: list[str] = []

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def recv(self, within: float = DEADLINE) -> dict[str, Any]:
        while not self.buffer:
            raw = await asyncio.wait_for(self.ws.recv(), within)
            assert isinstance(raw, str)
            self.frames.append(raw)
            body = json.loads(raw)
            self.buffer.extend(body if isinstance(body, list) else [body])
        return self.buffer.pop(0)

    async def expect(self, kind: str, within: float = DEADLINE) -> dict[str, Any]:
        message = await self.recv(within)
        assert message["type"] == kind, message
        return message

    async def request(self, message: dict[str, Any], kind: str) -> dict[str, Any]:
        await self.send(message)
        return await self.expect(kind)

    async def events(self, count: int, within: float = DEADLINE) -> list[dict[str, Any]]:
        return [await self.expect("event", within) for _ in range(count)]

    async def closed(self, within: float = DEADLINE) -> int | None:
        """Read until the server closes; the close code it sent."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.wait_for(self.ws.recv(), within)
        received = self.ws.protocol.close_rcvd
        return received.code if received is not None else None


@contextlib.asynccontextmanager
async def ws_client(
    ws_url: str, *, headers: Mapping[str, str] | None = None, origin: str | None = None, **options: Any
) -> AsyncIterator[Client]:
    async with connect(
        ws_url + "/ws", additional_headers=dict(headers or {}), origin=origin, open_timeout=DEADLINE, **options
    ) as ws:  # type: ignore[arg-type]
        client = Client(ws)
        await client.expect("welcome")
        yield client


async def add_pet(url: str, name: str = "Rex", **fields: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE) as http:
        body = {"name": name, "photoUrls": [], **fields}
        response = await http.post("/api/v3/pet", json=body, headers=staff_headers())
        assert response.status_code == 200, response.text
        pet: dict[str, Any] = response.json()
        return pet


async def set_status(url: str, pet_id: int, status: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE) as http:
        response = await http.post(f"/api/v3/pet/{pet_id}", params={"status": status}, headers=staff_headers())
        assert response.status_code == 200, response.text


@contextlib.contextmanager
def petstore_instances(
    database_url: str, redis_url: str, media_dir: Any
) -> Iterator[Callable[..., list[UvicornServer]]]:
    """``start(count, database_url=..., **env)`` starts petstore servers that share a database and
    a Redis (``env``: more ``PETSTORE_*`` settings, by lower-case name); all stop at the end."""
    servers: list[UvicornServer] = []

    def start(count: int = 2, database_url: str = database_url, **env: str) -> list[UvicornServer]:
        started = []
        for _ in range(count):
            server = UvicornServer(
                env={
                    "PETSTORE_DATABASE_URL": database_url,
                    "PETSTORE_REDIS_URL": redis_url,
                    "PETSTORE_PLUGINS": "tests.fakes,tests.realtime.support:probe",
                    "PETSTORE_ENV": "test",
                    "PETSTORE_MEDIA_DIR": str(media_dir),
                    **{f"PETSTORE_{key.upper()}": value for key, value in env.items()},
                }
            )
            servers.append(server)
            started.append(server.start())
        return started

    try:
        yield start
    finally:
        for server in servers:
            server.close()
