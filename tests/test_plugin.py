"""The plugin mechanism: loading by dotted path and entry point, hooks, failures named."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import sys
import textwrap
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

import petstore.plugin as plugin_module
from petstore.app import create_app
from petstore.config import Settings
from petstore.errors import PluginError
from petstore.plugin import CorsHeaders, Plugin, PluginBase, Plugins, load_plugins
from petstore.state import AppState


class StampMiddleware:
    """Pure ASGI: stamps every HTTP response and records every scope type it saw."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope["type"])
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stamp", b"yes")]
            await send(message)

        await self.app(scope, receive, stamped)


class RecordingPlugin(PluginBase):
    name = "recording"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: list[str] = []
        self.seen_scopes: list[str] = []
        self.observed: list[tuple[str, float, dict[str, str]]] = []

    def middleware(self) -> Sequence[Middleware]:
        return [Middleware(StampMiddleware, seen=self.seen_scopes)]

    def routes(self) -> Sequence[BaseRoute]:
        async def hello(request: Request) -> Response:
            return JSONResponse({"hello": "plugin"})

        return [Route("/plugin/hello", hello)]

    async def startup(self, state: AppState) -> None:
        self.events.append("startup")

    async def shutdown(self, state: AppState) -> None:
        self.events.append("shutdown")

    def observe(self, name: str, value: float, labels: Any) -> None:
        self.observed.append((name, value, dict(labels)))


@pytest.fixture
def plugin_package(tmp_path: Path) -> Iterator[str]:
    """A throwaway importable package with a plugin module, removed from sys.modules after."""
    package = tmp_path / "demo_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(
        textwrap.dedent(
            """
            from petstore.plugin import PluginBase

            class Good(PluginBase):
                name = "good"

            def plugin(settings):
                return Good()

            def other(settings):
                p = Good()
                p.name = "other"
                return p
            """
        )
    )
    (package / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    (package / "notaplugin.py").write_text("def plugin(settings):\n    return 42\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield "demo_plugins"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("demo_plugins")]:
            del sys.modules[name]


def settings(tmp_path: Path, plugins: tuple[str, ...]) -> Settings:
    return Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db", plugins=plugins, media_dir=tmp_path / "media")


def no_entry_points() -> list[importlib.metadata.EntryPoint]:
    return []


def test_dotted_path_loads_module_plugin_attribute(plugin_package: str, tmp_path: Path) -> None:
    loaded = load_plugins(settings(tmp_path, (f"{plugin_package}.good",)), entry_points=no_entry_points)
    assert loaded.names() == ["good"]


def test_colon_path_loads_named_factory(plugin_package: str, tmp_path: Path) -> None:
    loaded = load_plugins(settings(tmp_path, (f"{plugin_package}.good:other",)), entry_points=no_entry_points)
    assert loaded.names() == ["other"]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("demo_plugins.missing", "No module named"),
        ("demo_plugins.broken", "boom at import"),
        ("demo_plugins.good:nothing", "has no attribute"),
        ("demo_plugins.notaplugin", "did not produce a plugin"),
    ],
)
def test_a_plugin_that_fails_to_load_stops_start_up_naming_it(
    plugin_package: str, tmp_path: Path, path: str, fragment: str
) -> None:
    with pytest.raises(PluginError) as caught:
        create_app(settings(tmp_path, (path,)))
    assert repr(path) in str(caught.value)
    assert fragment in str(caught.value)


def test_entry_points_are_loaded_after_dotted_paths_without_duplicates(plugin_package: str, tmp_path: Path) -> None:
    eps = [
        importlib.metadata.EntryPoint("good", f"{plugin_package}.good:plugin", "petstore.plugins"),
        importlib.metadata.EntryPoint("other", f"{plugin_package}.good:other", "petstore.plugins"),
    ]
    loaded = load_plugins(settings(tmp_path, (f"{plugin_package}.good",)), entry_points=lambda: eps)
    assert loaded.names() == ["good", "other"]


def test_a_broken_entry_point_is_named(plugin_package: str, tmp_path: Path) -> None:
    eps = [importlib.metadata.EntryPoint("shiny", f"{plugin_package}.broken:plugin", "petstore.plugins")]
    with pytest.raises(PluginError, match="'shiny' failed to load"):
        load_plugins(settings(tmp_path, ()), entry_points=lambda: eps)


def test_middleware_routes_startup_and_shutdown_hooks_run(tmp_path: Path) -> None:
    recorder: list[RecordingPlugin] = []

    def factory(s: Settings) -> RecordingPlugin:
        recorder.append(RecordingPlugin(s))
        return recorder[-1]

    module = types.ModuleType("recording_plugin_for_test")
    module.plugin = factory  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        app = create_app(settings(tmp_path, (module.__name__,)))
        with TestClient(app) as client:
            assert recorder[0].events == ["startup"]
            response = client.get("/plugin/hello")
            assert response.json() == {"hello": "plugin"}
            assert response.headers["x-stamp"] == "yes"
            assert client.get("/healthz").headers["x-stamp"] == "yes"
        assert recorder[0].events == ["startup", "shutdown"]
        assert "http" in recorder[0].seen_scopes
    finally:
        del sys.modules[module.__name__]


def test_without_plugins_reads_work_and_writes_answer_401_naming_no_scheme(tmp_path: Path) -> None:
    import asyncio

    from petstore.db import create_all, create_engine

    s = settings(tmp_path, ())

    async def init() -> None:
        engine = create_engine(s)
        await create_all(engine)
        await engine.dispose()

    asyncio.run(init())
    with TestClient(create_app(s)) as client:
        assert client.get("/api/v3/store/inventory").json() == {"available": 0, "pending": 0, "sold": 0}
        assert client.get("/api/v3/pet/findByStatus").json() == []
        refused = client.post("/api/v3/pet", json={"name": "rex", "photoUrls": []})
        assert refused.status_code == 401
        # No plugin authenticates, so no scheme could answer the 401: the core names none (the
        # bearer scheme is the auth plugin's, tests/plugins/test_auth.py).
        assert "www-authenticate" not in refused.headers
        assert refused.json()["type"] == "unauthorized"
        assert client.post("/api/v3/store/order", json={"petId": 1}).status_code == 401
        assert client.get("/api/v3/pet/findByStatus").json() == []  # the refused write changed nothing


def test_observe_reaches_every_plugin_in_order(tmp_path: Path) -> None:
    first, second = RecordingPlugin(settings(tmp_path, ())), RecordingPlugin(settings(tmp_path, ()))
    plugins = Plugins([first, second])
    plugins.observe("ws.disconnected", code="1013")
    assert first.observed == second.observed == [("ws.disconnected", 1.0, {"code": "1013"})]


async def test_ws_authorize_any_refusal_wins_and_none_means_no_opinion(tmp_path: Path) -> None:
    class Yes(PluginBase):
        async def ws_authorize(self, principal: Any, room: str) -> bool | None:
            return True

    class No(PluginBase):
        async def ws_authorize(self, principal: Any, room: str) -> bool | None:
            return False

    assert await Plugins([PluginBase()]).ws_authorize(None, "orders") is None
    assert await Plugins([Yes(), PluginBase()]).ws_authorize(None, "orders") is True
    assert await Plugins([Yes(), No()]).ws_authorize(None, "orders") is False


def test_plugin_base_satisfies_the_protocol() -> None:
    assert isinstance(PluginBase(), Plugin)


def test_every_hook_is_documented_and_has_a_default() -> None:
    """Like datasette's hookspecs: a hook nobody documented is a hook nobody can use."""
    hooks = [name for name, _ in inspect.getmembers(Plugin) if not name.startswith("_")]
    hooks = [h for h in hooks if callable(getattr(Plugin, h))]
    assert len(hooks) >= 10
    doc = plugin_module.__doc__ or ""
    for hook in hooks:
        assert f"``{hook}(" in doc, f"hook {hook} is not documented in petstore/plugin.py"
        assert hook in vars(PluginBase), f"PluginBase has no default for {hook}"


def core_imports() -> Iterator[tuple[Path, str]]:
    """Every module the core's source imports (at any depth of a function), with the importing file."""
    core = Path(__file__).parents[1] / "petstore"
    for source in core.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                yield from ((source, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                yield source, node.module or ""


def test_the_core_never_imports_the_plugins_package() -> None:
    for source, name in core_imports():
        assert name.split(".")[0] != "plugins", f"{source} imports {name}"


class Refuser(PluginBase):
    """Answers every /guarded request itself, from its middleware, as auth or rate limiting do."""

    name = "refuser"

    def middleware(self) -> Sequence[Middleware]:
        class Refuse:
            def __init__(self, app: ASGIApp) -> None:
                self.app = app

            async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] == "http" and scope["path"] == "/guarded":
                    await JSONResponse({"code": 429}, status_code=429)(scope, receive, send)
                    return
                await self.app(scope, receive, send)

        return [Middleware(Refuse)]


class Watcher(RecordingPlugin):
    name = "watcher"
    outermost = True


def test_outermost_plugins_see_responses_other_plugins_answer_themselves(tmp_path: Path) -> None:
    watcher = Watcher(settings(tmp_path, ()))
    modules = {"refuser_for_test": lambda s: Refuser(), "watcher_for_test": lambda s: watcher}
    for name, factory in modules.items():
        module = types.ModuleType(name)
        module.plugin = factory  # type: ignore[attr-defined]
        sys.modules[name] = module
    try:
        # The watcher is listed last, yet wraps the refuser because it asks to be outermost.
        app = create_app(settings(tmp_path, ("refuser_for_test", "watcher_for_test")))
        with TestClient(app) as client:
            refused = client.get("/guarded")
        assert refused.status_code == 429
        assert refused.headers["x-stamp"] == "yes"
    finally:
        for name in modules:
            del sys.modules[name]


def test_a_stuck_shutdown_step_does_not_stop_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import petstore.app

    monkeypatch.setattr(petstore.app, "SHUTDOWN_STEP_SECONDS", 0.1)
    first = RecordingPlugin(settings(tmp_path, ()))

    class Stuck(PluginBase):
        name = "stuck"

        async def shutdown(self, state: AppState) -> None:
            await asyncio.Event().wait()  # never set: a shutdown that would hang forever

    modules = {"first_for_test": lambda s: first, "stuck_for_test": lambda s: Stuck()}
    for name, factory in modules.items():
        module = types.ModuleType(name)
        module.plugin = factory  # type: ignore[attr-defined]
        sys.modules[name] = module
    try:
        with TestClient(create_app(settings(tmp_path, ("first_for_test", "stuck_for_test")))) as client:
            assert client.get("/healthz").status_code == 200
        # "stuck" shuts down first (reverse order), gives up after its bound, then "first" runs.
        assert first.events == ["startup", "shutdown"]
    finally:
        for name in modules:
            del sys.modules[name]


class HeaderPlugin(PluginBase):
    name = "headers"

    def cors_headers(self) -> CorsHeaders:
        return CorsHeaders(allow=("X-Tenant",), expose=("X-Quota",))


ORIGIN = "http://127.0.0.1:8000"  # allowed by default


def _cors(client: TestClient) -> tuple[set[str], set[str]]:
    """The request headers a preflight allows, and the response headers a simple request exposes."""
    preflight = client.options(
        "/api/v3/pet/findByStatus",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
    simple = client.get("/healthz", headers={"Origin": ORIGIN})
    exposed = {h.strip().lower() for h in simple.headers["access-control-expose-headers"].split(",")}
    return allowed, exposed


def test_the_cors_contract_is_the_cores_plus_each_plugins(tmp_path: Path) -> None:
    module = types.ModuleType("header_plugin_for_test")
    module.plugin = lambda s: HeaderPlugin()  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        with TestClient(create_app(settings(tmp_path, ()))) as client:
            allowed, exposed = _cors(client)
        assert {"content-type", "last-event-id"} <= allowed and "authorization" not in allowed
        assert exposed == {"retry-after", "etag", "x-request-id", "link"}  # no plugin, no RateLimit or X-Expires-After
        with TestClient(create_app(settings(tmp_path, (module.__name__,)))) as client:
            allowed, exposed = _cors(client)
        assert "x-tenant" in allowed and exposed == {"retry-after", "etag", "x-request-id", "link", "x-quota"}
    finally:
        del sys.modules[module.__name__]


def test_the_default_plugins_expose_their_own_headers(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, ("plugins.auth", "plugins.ratelimit")))) as client:
        allowed, exposed = _cors(client)
    assert "authorization" in allowed
    assert {"ratelimit", "ratelimit-policy", "x-rate-limit", "x-expires-after", "retry-after"} <= exposed


def test_the_core_imports_no_metrics_or_token_library() -> None:
    """SPEC §4: metrics and auth are plugins; the core reaches them only through hooks."""
    for source, name in core_imports():
        assert name.split(".")[0] not in {"prometheus_client", "jose"}, f"{source} imports {name}"
