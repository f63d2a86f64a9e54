"""``create_app(settings)``: the whole server, built from its settings, with no globals.

Order of things: plugins are loaded (their middleware and routes must be known to build the
app), routes are assembled (plugin routes first, so ``/user/login`` wins over
``/user/{username}``), and the lifespan opens the database, starts the plugins and the
real-time layer, and shares them as ``request.state.petstore``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from petstore import realtime, redis_client
from petstore.api import docs, openapi, pets, store, users
from petstore.config import Settings
from petstore.conventions import DASHBOARD_CSP, Conventions
from petstore.cors import JsonCORSMiddleware
from petstore.db import create_engine, ping
from petstore.errors import EXCEPTION_HANDLERS, BadRequest, ConfigurationError, PluginError
from petstore.plugin import Plugins, load_plugins
from petstore.state import AppState, app_state

logger = logging.getLogger("petstore")

API = "/api/v3"
SHUTDOWN_STEP_SECONDS = 10.0
MIN_STEP_SECONDS = 0.25
STATIC_DIR = Path(__file__).parent / "static"
#: The core's own part of the CORS contract; plugins add theirs (``cors_headers()``).
CORS_ALLOW_HEADERS = ("Content-Type", "Last-Event-ID", "If-None-Match", "X-Request-ID")
CORS_EXPOSE_HEADERS = ("Retry-After", "ETag", "X-Request-ID", "Link")
GZIP_MINIMUM_BYTES = 1024


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 while this instance can serve REST; 503 only when the database is unreachable or the
    instance is shutting down (SPEC §2).

    Every other state is named in ``checks`` without failing the probe: ``"broker": "unavailable"``
    during a Redis outage (REST goes on without Redis, and taking every instance out of the load
    balancer for it would stop the whole store), ``"database": "locked"`` while SQLite's write lock
    is held elsewhere (reads go on; writes answer 503 with Retry-After, and every instance shares
    the lock, so none would be better to send them to).
    """
    state = app_state(request)
    checks: dict[str, str] = {}
    try:
        # Locked: reads work, but every write would wait out the busy timeout, then answer 503.
        checks["database"] = "ok" if await ping(state.engine) else "locked"
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("readiness: database unreachable: %s", type(exc).__name__)
        checks["database"] = "unreachable"
    if state.realtime is not None:
        try:
            await state.realtime.ready()
            checks["broker"] = "ok"
        except Exception as exc:  # any failure of the broker means "unavailable"
            logger.debug("readiness: broker unavailable: %s", type(exc).__name__)
            checks["broker"] = "unavailable"
    if state.draining:
        # Stopping (SIGTERM): a load balancer still holding a connection must send nothing new here.
        checks["shutdown"] = "draining"
        return JSONResponse(
            {"code": 503, "type": "not_ready", "message": "shutting down", "checks": checks}, status_code=503
        )
    if checks["database"] == "unreachable":
        return JSONResponse(
            {"code": 503, "type": "not_ready", "message": "unreachable: database", "checks": checks},
            status_code=503,
        )
    return JSONResponse({"status": "ready", "checks": checks})


async def origin(request: Request) -> Response:
    """Whether a page of this origin may open ``/ws`` (``PETSTORE_ALLOWED_ORIGINS``).

    A browser hides the answer to a refused WebSocket upgrade (it sees only 1006), so the
    dashboard asks here, over plain same-origin REST, to say why it cannot connect. The origin
    is the ``origin`` query parameter (a page's ``location.origin``), else the request's
    ``Origin`` header. Not part of the Petstore API, so not in its OpenAPI document (like
    ``/healthz``); the allow-list is not secret (every CORS answer tells it, one origin at a time).
    """
    asked = request.query_params.get("origin") or request.headers.get("origin")
    if not asked:
        raise BadRequest("give the origin to check: ?origin=http://host:port")
    if len(asked) > 2048:
        raise BadRequest("invalid origin: too long")
    return JSONResponse({"origin": asked, "allowed": asked in app_state(request).settings.allowed_origins})


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": DASHBOARD_CSP})


def core_routes(settings: Settings) -> list[BaseRoute]:
    settings.media_dir.mkdir(parents=True, exist_ok=True)
    return [
        Route("/healthz", healthz, methods=["GET"], name="healthz"),
        Route("/readyz", readyz, methods=["GET"], name="readyz"),
        Route("/origin", origin, methods=["GET"], name="origin"),
        *pets.routes(API),
        *store.routes(API),
        *users.routes(API),
        Route("/", index, methods=["GET"], name="dashboard"),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
        Mount(
            "/media",
            with_headers(StaticFiles(directory=settings.media_dir, check_dir=False), MEDIA_HEADERS),
            name="media",
        ),
    ]


#: Uploads are whatever a client sent: a PNG that is also HTML must never run as a page here.
MEDIA_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; img-src 'self'; sandbox"),
)


def with_headers(app: ASGIApp, headers: tuple[tuple[bytes, bytes], ...]) -> ASGIApp:
    """``app`` with ``headers`` added to every HTTP response it starts."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped


async def _bounded(step: Coroutine[Any, Any, None], what: str, state: AppState) -> None:
    """Run one shutdown step, at most SHUTDOWN_STEP_SECONDS and what is left of the shutdown bound
    (a moment at least): a stuck or failing step must not stop the others, nor keep the process
    from exiting within PETSTORE_SHUTDOWN_TIMEOUT (an orchestrator would SIGKILL it)."""
    seconds = min(SHUTDOWN_STEP_SECONDS, max(MIN_STEP_SECONDS, state.shutdown_seconds_left()))
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        logger.warning("shutdown: %s did not finish within %.1fs; going on", what, seconds)
    except Exception as exc:  # one line, not "Application shutdown failed" and a traceback
        logger.error("shutdown: %s failed (%s: %s); going on", what, type(exc).__name__, exc)


#: The cyclic garbage collector's youngest generation threshold for a server (Python's default is
#: 700; 3.13 made it 2,000). A collection of the oldest generation scans every tracked object, and
#: CPython runs one after every tenth collection of the middle one whose survivors grew the heap by
#: a quarter: during a reconnect storm, when each connection adds a few hundred long-lived objects,
#: that was a third of the server's CPU (8,000 connects: 9 full passes of up to 0.4 s each, about
#: 430 µs per connection; docs/benchmarks.md). Collecting the young generation every 10,000
#: allocations instead of 700 makes the full passes ten times rarer, each young pass a few ms.
GC_YOUNG_THRESHOLD = 10_000


def young_generation_threshold() -> None:
    """Raise the collector's youngest threshold to :data:`GC_YOUNG_THRESHOLD` for this process
    (never lower it: whoever runs the server may have chosen a higher one)."""
    young, middle, old = gc.get_threshold()
    if young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def load_checked_plugins(settings: Settings) -> Plugins:
    """The plugins of ``settings``, refusing an unsafe production configuration with every problem
    named in one :class:`ConfigurationError`: the core's (:meth:`Settings.production_problems`)
    and a plugin's refusal to load (the auth plugin's missing secret, say)."""
    problems = settings.production_problems()
    try:
        plugins = load_plugins(settings)
    except PluginError as refusal:
        if not problems:
            raise
        problems.append(str(refusal))
    if problems:
        raise ConfigurationError("refusing to start with PETSTORE_ENV=production: " + "; ".join(problems))
    return plugins


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    plugins = load_checked_plugins(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        engine = create_engine(settings)
        state = AppState.open(settings, engine, plugins)
        started: list[Any] = []
        try:
            for plugin in plugins:
                await plugin.startup(state)
                started.append(plugin)
            state.realtime = realtime.Realtime(state)
            await state.realtime.start()
            logger.info("petstore ready with plugins: %s", ", ".join(plugins.names()) or "none")
            young_generation_threshold()
            yield {"petstore": state, "realtime": state.realtime}
        finally:
            state.begin_shutdown()  # under uvicorn it began at SIGTERM (petstore.server.shutdown)
            if state.realtime is not None:
                await _bounded(state.realtime.stop(), "stopping the real-time layer", state)
                state.realtime = None
            for plugin in reversed(started):
                await _bounded(plugin.shutdown(state), f"plugin {plugin.name!r} shutdown", state)
            if state.redis is not None:
                await _bounded(redis_client.close(state.redis), "closing the Redis pool", state)
            await _bounded(state.reader.aclose(), "closing the reader's connections", state)
            await _bounded(engine.dispose(), "closing the database pool", state)

    outermost, ordinary = plugins.middleware()
    cors = plugins.cors_headers()
    middleware = [
        Middleware(Conventions),
        # Bodies over 1 KiB (SPEC §2); never text/event-stream; WebSocket passes through. Level 6,
        # zlib's default: 9 costs about twice the CPU for a few percent off a JSON body.
        Middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_BYTES, compresslevel=6),
        *outermost,
        Middleware(
            JsonCORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=list(dict.fromkeys([*CORS_ALLOW_HEADERS, *cors.allow])),
            expose_headers=list(dict.fromkeys([*CORS_EXPOSE_HEADERS, *cors.expose])),
        ),
        *ordinary,
    ]
    plugin_routes = [route for plugin in plugins for route in plugin.routes()]
    app = Starlette(
        routes=[*plugin_routes, *extra_core_routes(settings, plugins), *core_routes(settings)],
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    return app


def extra_core_routes(settings: Settings, plugins: Plugins) -> list[BaseRoute]:
    """Routes of the core that live in their own modules (OpenAPI document, docs, real time)."""
    return [
        *openapi.routes(plugins),
        *docs.routes(),
        *realtime.routes(),
    ]
