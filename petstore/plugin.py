"""The plugin protocol, and the loader that turns ``PETSTORE_PLUGINS`` into plugin objects.

The core calls these hooks and knows nothing of what answers them: auth, rate limits and
metrics are plugins like any third party's. A plugin is a plain object; subclass
:class:`PluginBase` and override only the hooks you need. ``tests/test_plugin.py`` checks that
every hook of :class:`Plugin` is documented here and implemented by :class:`PluginBase`.

Loading: each entry of ``PETSTORE_PLUGINS`` is ``"package.module"`` (its ``plugin`` attribute is
used) or ``"package.module:attr"``. Entry points in group ``petstore.plugins`` are loaded after,
by name, unless a dotted path already loaded the same object. The attribute is called with the
:class:`~petstore.config.Settings` and must return a plugin. Any failure stops start-up with one
:class:`~petstore.errors.PluginError` naming the plugin.

Hooks
-----
``middleware()``
    Pure ASGI middleware (``starlette.middleware.Middleware``) wrapped around the app, for
    ``http`` and ``websocket`` scopes alike. Plugins listed first are outermost, except that
    the middleware of plugins whose optional attribute ``outermost`` is True wraps everything
    else (CORS and the other plugins included): what measures every response (metrics, access
    logs, tracing) must also see the 401s and 429s that other plugins' middleware answer.
``routes()``
    Extra routes, mounted beside the core's (e.g. ``/api/v3/auth/token``, ``/metrics``).
``startup(app)`` / ``shutdown(app)``
    Work at start and stop of the app. ``app`` is the running app's :class:`App`: its settings,
    database (and its reader of hot rows), plugins, Redis client, and a way to end live sessions
    (the core passes its :class:`~petstore.state.AppState`, which has more; a plugin should use
    only what :class:`App` names).
``openapi(document)``
    Edit the served OpenAPI document in place (add paths, schemes). Each core operation carries
    ``x-petstore-permission``: the scope it requires (:mod:`petstore.access`), or null for anyone;
    an auth plugin turns it into ``security`` and its own 401s.
``ws_connect(websocket)``
    Before a WebSocket is accepted. Return None to let it through; to refuse it, an HTTP
    ``Response`` (a 429 with ``Retry-After`` and the JSON error shape, say), which the client gets
    instead of the upgrade where the server offers the ASGI denial-response extension (a close
    1013 for a 429 or 503, else 1008, where it does not), or a bare close code (1008, 1013).
``ws_authenticate(websocket, token)``
    A browser sent ``{"type": "auth", "token": ...}``. Return the :class:`~petstore.access.Principal`
    with its scopes, raise :class:`~petstore.access.AuthFailed` for a bad token, or return None to
    leave it to the next plugin.
``ws_authorize(principal, room)``
    May this principal join this room? True / False, or None for no opinion.
``ws_message(connection_id, principal, message_type)``
    A client message arrived. Return an error code (``"rate_limited"``) to refuse it, else None.
``ws_welcome(websocket)`` (optional)
    Fields to add to the ``welcome`` of an accepted WebSocket (the rate limiter's ``resume``
    pass). The core's own fields cannot be replaced.
``observe(name, value, labels)``
    Something happened in the core or another plugin (see :data:`HAPPENINGS`).
``user_changed(user_id)`` (optional: plugins without it are not asked)
    An account was deleted, or its name, password or role changed, and that is committed. Sessions
    its credentials opened before now no longer stand: an auth plugin ends them, on every
    instance (:meth:`petstore.realtime.Realtime.end_sessions` ends one instance's).
``cors_headers()`` (optional)
    The HTTP headers this plugin adds to the cross-origin contract, as :class:`CorsHeaders`: the
    request headers a browser may send (``Authorization``) and the response headers its scripts
    may read (``RateLimit``, ``X-Expires-After``). The core's CORS middleware allows its own
    (``Content-Type``, ``Last-Event-ID``; ``Retry-After`` exposed) and every plugin's.
``challenge()`` (optional)
    The ``WWW-Authenticate`` challenge of the 401s the core answers (an anonymous write, an
    account that is gone): the scheme this plugin authenticates with (``Bearer``), or None. The
    first plugin's is used; with none, the core's 401s carry no challenge (none could succeed).
``login_routes()`` (optional)
    Which of this plugin's routes check a password, as :class:`LoginRoute` objects: method,
    path, and how to read the username a request to it names, exactly as its endpoint reads it
    (the same parser, the same size limit). A rate limiter asks once, at start-up, and holds
    password guessing to a budget per username and per address (``plugins.ratelimit``); it
    calls ``read_username`` before the app sees the request, with a request whose body it
    replays to the endpoint afterwards.
``workers(count)`` (optional)
    ``petstore serve --workers N`` is about to run ``count`` (> 1) worker processes. Return a
    context manager, entered in the supervisor around the whole run (to prepare what the workers
    inherit, such as an environment variable or a directory, and clean it up after), whose value
    is called with the pid of each worker that is gone (crashed, replaced, stopped); or None. The
    metrics plugin keeps prometheus_client's multiprocess mode this way.
``environment()`` (optional)
    The environment variables this plugin reads (``PETSTORE_JWT_SECRET``...), for the core to
    tell a misspelled ``PETSTORE_*`` variable from one it does not know of: ``petstore`` warns,
    naming the closest known one (:func:`petstore.config.misspelled`). A plugin with pydantic
    settings can return :func:`petstore.config.variables` of them.
``trace_context()`` (optional: with none of the three tracing hooks, the core's cost is one None check)
    A change is committing events, in the task of the work that made it (a request): the
    ``dict[str, str]`` a tracer needs to find that work again (a W3C ``traceparent``), or None.
    The core keeps every tracing plugin's answer, merged, as JSON with each of the change's
    outbox rows, and hands it back wherever the event goes, on every instance; clients never see
    it. Only events that come live through the broker carry it (not those read from history).
``traced_publish(events)`` (optional)
    The relay publishes a batch of outbox rows: a context manager around it. ``events`` holds each
    row's event name and kept context (None where none was kept), in outbox order.
``traced_delivery(event, room, context, subscribers)`` (optional)
    This instance hands one event of ``room`` that carries a ``context`` to its ``subscribers``
    local subscribers: a context manager around that hand-over, entered once per event and room
    on each instance, never once per subscriber.
``migrations()``
    The plugin's own tables, as a :class:`PluginMigrations` (an Alembic version folder and the
    ``MetaData`` its revisions create), or None. ``petstore migrate`` runs every loaded plugin's
    branch beside the core's (``upgrade heads``), so a plugin never puts tables in the core's
    schema. The branch's first revision has ``down_revision = None``, ``branch_labels`` set to
    the plugin's name, and ``depends_on`` a core revision only if its tables refer to the core's;
    revision ids are unique across every branch (prefix them with the plugin's name). Tests that
    build tables from models rather than migrations call ``metadata.create_all`` for it too.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.websockets import WebSocket

from petstore.errors import PluginError

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster
    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from petstore.access import Principal
    from petstore.config import Settings
    from petstore.db.reader import Reader

ENTRY_POINT_GROUP = "petstore.plugins"

#: What the core reports through ``observe``: name -> (kind, label names). Metrics plugins map
#: these to their own instruments; the names are stable.
HAPPENINGS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "http.request": ("count", ("method", "route", "status")),
    "ws.connected": ("count", ()),
    "ws.disconnected": ("count", ("code",)),
    "ws.subscribed": ("count", ("room_kind",)),
    "ws.unsubscribed": ("count", ("room_kind",)),
    "ws.message_sent": ("count", ("room_kind",)),
    "ws.message_received": ("count", ("type",)),
    "ws.slow_consumer": ("count", ()),
    "event.published": ("count", ("event",)),
    "event.delivery_lag": ("seconds", ()),
    "broker.reconnected": ("count", ()),
    "broker.connected": ("gauge", ()),
    "realtime.task_restarted": ("count", ("task",)),
    "outbox.pending": ("gauge", ()),
    "inventory.pets": ("gauge", ("status",)),
    "auth.failure": ("count", ("reason",)),
    "ratelimit.rejected": ("count", ("scope",)),
    "ratelimit.backend_error": ("count", ()),
    "ratelimit.resume": ("count", ("outcome",)),
}

logger = logging.getLogger("petstore.plugin")


class App(Protocol):
    """What a plugin's ``startup`` and ``shutdown`` get of the running app.

    A protocol, so that this module, which the app's state holds, need not import it; the core's
    :class:`~petstore.state.AppState` is one.
    """

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    #: Read-only queries around the engine's pool, never staler than the database (:mod:`petstore.db.reader`).
    reader: Reader
    plugins: Plugins
    #: The process's one Redis client (:mod:`petstore.redis_client`), None without Redis.
    redis: Redis | RedisCluster | None

    def end_sessions(self, match: Callable[[Principal], bool]) -> int:
        """End this instance's live sessions whose principal ``match`` picks; how many."""
        ...


@dataclass(frozen=True)
class PluginMigrations:
    """A plugin's Alembic branch (see ``migrations()`` above)."""

    #: The folder of the branch's revision files, given to Alembic as one more version location.
    versions: Path
    #: The tables those revisions create: for autogenerate, and for tests that skip migrations.
    metadata: MetaData


@dataclass(frozen=True)
class CorsHeaders:
    """A plugin's part of the CORS contract (see ``cors_headers()`` above)."""

    #: Request headers a cross-origin page may send.
    allow: tuple[str, ...] = ()
    #: Response headers a cross-origin page's scripts may read.
    expose: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoginRoute:
    """A route whose endpoint checks a password (see ``login_routes()`` above)."""

    method: str
    #: The whole path, as in the scope (``/api/v3/auth/token``).
    path: str
    #: The username a request names, or None when it names none the endpoint would check a
    #: password of (a body it refuses, a missing field): a login still, counted per address.
    read_username: Callable[[Request], Awaitable[str | None]]


@runtime_checkable
class Plugin(Protocol):
    """What the core expects of a plugin. See the module docstring for each hook."""

    name: str

    def middleware(self) -> Sequence[Middleware]: ...

    def routes(self) -> Sequence[BaseRoute]: ...

    async def startup(self, app: App) -> None: ...

    async def shutdown(self, app: App) -> None: ...

    def openapi(self, document: dict[str, Any]) -> None: ...

    async def ws_connect(self, websocket: WebSocket) -> int | Response | None: ...

    async def ws_authenticate(self, websocket: WebSocket, token: str) -> Principal | None: ...

    async def ws_authorize(self, principal: Principal | None, room: str) -> bool | None: ...

    async def ws_message(self, connection_id: str, principal: Principal | None, message_type: str) -> str | None: ...

    def observe(self, name: str, value: float, labels: Mapping[str, str]) -> None: ...

    def migrations(self) -> PluginMigrations | None: ...


class PluginBase:
    """Every hook as a no-op; subclass and override what you need."""

    name = "plugin"
    #: Wrap this plugin's middleware around everything else (see ``middleware()`` above).
    outermost = False

    def middleware(self) -> Sequence[Middleware]:
        return ()

    def routes(self) -> Sequence[BaseRoute]:
        return ()

    async def startup(self, app: App) -> None:
        return None

    async def shutdown(self, app: App) -> None:
        return None

    def openapi(self, document: dict[str, Any]) -> None:
        return None

    async def ws_connect(self, websocket: WebSocket) -> int | Response | None:
        return None

    async def ws_authenticate(self, websocket: WebSocket, token: str) -> Principal | None:
        return None

    async def ws_authorize(self, principal: Principal | None, room: str) -> bool | None:
        return None

    async def ws_message(self, connection_id: str, principal: Principal | None, message_type: str) -> str | None:
        return None

    def observe(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        return None

    async def user_changed(self, user_id: int) -> None:
        return None

    def ws_welcome(self, websocket: WebSocket) -> Mapping[str, Any] | None:
        return None

    def login_routes(self) -> Sequence[LoginRoute]:
        return ()

    def trace_context(self) -> dict[str, str] | None:
        return None

    def traced_publish(
        self, events: Sequence[tuple[str, Mapping[str, str] | None]]
    ) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def traced_delivery(
        self, event: str, room: str, context: Mapping[str, str], subscribers: int
    ) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def environment(self) -> Sequence[str]:
        return ()

    def migrations(self) -> PluginMigrations | None:
        return None


class Plugins:
    """The loaded plugins, in order, and the core's way of calling their hooks."""

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self.items = tuple(plugins)
        #: The WWW-Authenticate challenge of the core's 401s: the first plugin's ``challenge()``.
        self.challenge: str | None = next(
            (found for plugin in self.items if (found := _hook(plugin, "challenge")) is not None), None
        )
        tracers = [plugin for plugin in self.items if _overrides(plugin, "trace_context")]
        #: The tracing hooks, combined; None when no plugin traces (the core checks that, nothing more).
        self.tracing = Tracing(tracers) if tracers else None

    def __iter__(self) -> Any:
        return iter(self.items)

    def names(self) -> list[str]:
        return [plugin.name for plugin in self.items]

    def workers(self, count: int) -> list[contextlib.AbstractContextManager[Callable[[int], None]]]:
        """Every plugin's ``workers(count)`` that is not None, in plugin order."""
        managers = []
        for plugin in self.items:
            hook = getattr(plugin, "workers", None)
            manager = hook(count) if hook is not None else None
            if manager is not None:
                managers.append(manager)
        return managers

    def cors_headers(self) -> CorsHeaders:
        """Every plugin's ``cors_headers()``, merged in plugin order without repeats."""
        allow: dict[str, None] = {}
        expose: dict[str, None] = {}
        for plugin in self.items:
            hook = getattr(plugin, "cors_headers", None)
            if hook is not None:
                headers: CorsHeaders = hook()
                allow.update(dict.fromkeys(headers.allow))
                expose.update(dict.fromkeys(headers.expose))
        return CorsHeaders(tuple(allow), tuple(expose))

    def middleware(self) -> tuple[list[Middleware], list[Middleware]]:
        """The plugins' middleware as (outermost, ordinary), each in plugin order."""
        outer = [m for p in self.items if getattr(p, "outermost", False) for m in p.middleware()]
        inner = [m for p in self.items if not getattr(p, "outermost", False) for m in p.middleware()]
        return outer, inner

    def observe(self, name: str, value: float = 1.0, **labels: str) -> None:
        for plugin in self.items:
            plugin.observe(name, value, labels)

    def migrations(self) -> list[PluginMigrations]:
        """Every plugin's own Alembic branch, in plugin order."""
        return [found for plugin in self.items if (found := plugin.migrations()) is not None]

    async def ws_connect(self, websocket: WebSocket) -> int | Response | None:
        for plugin in self.items:
            code = await plugin.ws_connect(websocket)
            if code is not None:
                return code
        return None

    async def ws_authenticate(self, websocket: WebSocket, token: str) -> Principal | None:
        for plugin in self.items:
            principal = await plugin.ws_authenticate(websocket, token)
            if principal is not None:
                return principal
        return None

    async def ws_authorize(self, principal: Principal | None, room: str) -> bool | None:
        verdict: bool | None = None
        for plugin in self.items:
            answer = await plugin.ws_authorize(principal, room)
            if answer is False:
                return False
            if answer is True:
                verdict = True
        return verdict

    def ws_welcome(self, websocket: WebSocket) -> dict[str, Any]:
        """Every plugin's fields for a ``welcome``, in plugin order (an earlier plugin's win)."""
        fields: dict[str, Any] = {}
        for plugin in self.items:
            hook = getattr(plugin, "ws_welcome", None)
            extra = hook(websocket) if hook is not None else None
            for name, value in (extra or {}).items():
                fields.setdefault(name, value)
        return fields

    async def user_changed(self, user_id: int) -> None:
        """Tell every plugin that has the hook; the change is committed, so one that fails is
        logged and the others are still told."""
        for plugin in self.items:
            hook = getattr(plugin, "user_changed", None)
            if hook is None:
                continue
            try:
                await hook(user_id)
            except Exception:
                logger.exception("plugin %r: user_changed(%d) failed", plugin.name, user_id)

    def environment(self) -> set[str]:
        """Every environment variable the plugins say they read (``environment()``)."""
        names: set[str] = set()
        for plugin in self.items:
            hook = getattr(plugin, "environment", None)
            if hook is not None:
                names.update(hook())
        return names

    def login_routes(self) -> dict[tuple[str, str], LoginRoute]:
        """Every plugin's ``login_routes()``, by (method, path); the first plugin to name one wins."""
        found: dict[tuple[str, str], LoginRoute] = {}
        for plugin in self.items:
            hook = getattr(plugin, "login_routes", None)
            for route in hook() if hook is not None else ():
                found.setdefault((route.method.upper(), route.path), route)
        return found

    async def ws_message(self, connection_id: str, principal: Principal | None, message_type: str) -> str | None:
        for plugin in self.items:
            refusal = await plugin.ws_message(connection_id, principal, message_type)
            if refusal is not None:
                return refusal
        return None


def _hook(plugin: object, hook: str) -> Any:
    """What ``plugin``'s optional, argument-less ``hook`` answers; None if it has none."""
    found = getattr(plugin, hook, None)
    return found() if callable(found) else None


def _overrides(plugin: object, hook: str) -> bool:
    """Does ``plugin`` answer ``hook`` with more than :class:`PluginBase`'s no-op?"""
    found = getattr(type(plugin), hook, None)
    return found is not None and found is not getattr(PluginBase, hook, None)


class Tracing:
    """The tracing plugins' hooks (``trace_context``, ``traced_publish``, ``traced_delivery``) as one.

    Contexts travel as JSON text, so the outbox and the broker carry them without knowing what is
    inside."""

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self._plugins = tuple(plugins)

    def context(self) -> dict[str, str] | None:
        """The context of the work running now, every tracing plugin's merged; None if empty."""
        merged: dict[str, str] = {}
        for plugin in self._plugins:
            merged.update(getattr(plugin, "trace_context")() or {})  # noqa: B009 (optional hook)
        return merged or None

    @contextlib.contextmanager
    def publishing(self, events: Sequence[tuple[str, Mapping[str, str] | None]]) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for plugin in self._plugins:
                hook = getattr(plugin, "traced_publish", None)
                if hook is not None:
                    stack.enter_context(hook(events))
            yield

    @contextlib.contextmanager
    def delivering(self, event: str, room: str, context_json: str, subscribers: int) -> Iterator[None]:
        context: dict[str, str] = json.loads(context_json)
        with contextlib.ExitStack() as stack:
            for plugin in self._plugins:
                hook = getattr(plugin, "traced_delivery", None)
                if hook is not None:
                    stack.enter_context(hook(event, room, context, subscribers))
            yield


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "plugin")


def _instantiate(name: str, factory: Any, settings: Settings) -> Plugin:
    plugin = factory(settings) if callable(factory) else factory
    if not isinstance(plugin, Plugin):
        raise PluginError(f"plugin {name!r} did not produce a plugin object (got {type(plugin).__name__})")
    return plugin


def load_plugins(
    settings: Settings,
    *,
    entry_points: Callable[[], Sequence[importlib.metadata.EntryPoint]] | None = None,
) -> Plugins:
    """Load the plugins named by ``settings.plugins``, then those registered as entry points."""
    loaded: list[Plugin] = []
    seen: set[int] = set()

    def add(name: str, load: Callable[[], Any], *, once: bool) -> None:
        """Load one plugin (with ``once``, unless its factory is loaded already); any failure names it."""
        try:
            factory = load()
            if once and id(factory) in seen:
                return
            plugin = _instantiate(name, factory, settings)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
        seen.add(id(factory))
        loaded.append(plugin)

    for path in settings.plugins:
        add(path, functools.partial(_import, path), once=False)
    found = entry_points() if entry_points else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry_point in found:
        add(entry_point.name, entry_point.load, once=True)
    return Plugins(loaded)
