"""``plugins.metrics``: Prometheus metrics at ``/metrics``, every one of SPEC §5.

Where each metric comes from:

- ``petstore_http_*``: :class:`HttpMetricsMiddleware`, a pure ASGI middleware around the app,
  outermost of all (the plugin asks the core for it), so it also counts what other plugins'
  middleware answer themselves (401, 429).
  The ``route`` label is the route *template* (``/api/v3/pet/{petId}``), found by matching the
  request against the app's routes; a path no route matches is ``"unmatched"``, so a scan of
  random URLs cannot blow up the number of series.
- everything else: the core's happenings (:data:`petstore.plugin.HAPPENINGS`), reported
  through the ``observe`` hook. The core never imports prometheus_client.
- ``petstore_inventory_pets`` and ``petstore_outbox_pending`` are also read from the database
  at each scrape, so they are right from the first scrape and whatever the relay reports.

Each plugin instance (so each app) has its own ``CollectorRegistry``: two apps in one process
never share counters. With several worker processes (``petstore serve --workers N``: the
plugin's ``workers()`` hook prepares ``PROMETHEUS_MULTIPROC_DIR`` in the supervisor, and marks
each worker that is gone dead), prometheus_client's multiprocess mode is used: each worker
writes its values to files in that directory and ``/metrics`` adds them up with
``MultiProcessCollector``. One process reads only its own values, whatever the environment.
Gauges say how: live sums for what each worker holds (requests in
progress, connections, subscriptions), the most recent live value for the database-wide counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Metric,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from petstore.config import Settings
from petstore.errors import ConfigurationError
from petstore.models import OutboxEvent
from petstore.plugin import PluginBase
from petstore.realtime import events, rooms
from petstore.routing import RouteTemplates
from petstore.state import AppState, app_state

logger = logging.getLogger("plugins.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Set by :meth:`MetricsPlugin.workers` beside ``PROMETHEUS_MULTIPROC_DIR``, for the workers it
#: prepares: a directory left in the environment of a single process is not read (it would add
#: up the files of some earlier run).
WORKERS_ENV = "PETSTORE_METRICS_WORKERS"
OTHER = "other"

# Label values come from a closed set; anything else is folded into "other". A client picks its
# HTTP method and its WebSocket message types: unchecked, each new one would be a new series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ROOM_KINDS = frozenset(rooms.ROOM_KINDS)
CLIENT_MESSAGE_TYPES = frozenset({"auth", "subscribe", "unsubscribe", "ping"})
TASKS = frozenset({"redis-broker-listener", "outbox-relay"})
RESUME_OUTCOMES = frozenset({"accepted", "refused"})

# From a cache hit (sub-millisecond) to a slow publish through a reconnecting broker.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _bounded(value: str | None, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


def _close_code(code: str) -> str:
    """A close code as a label: the codes of RFC 6455 and IANA (1000-3999) as they are; the
    private range 4000-4999, which any client may choose, as one ``4xxx`` series."""
    if not (code.isascii() and code.isdigit() and len(code) == 4):
        return OTHER
    return "4xxx" if code.startswith("4") else code


class Instruments:
    """The metrics of SPEC §5, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.http_requests = Counter(
            "petstore_http_requests_total", "HTTP requests answered.", ("method", "route", "status"), registry=r
        )
        self.http_duration = Histogram(
            "petstore_http_request_duration_seconds",
            "Time to answer an HTTP request, from the first byte in to the last byte out.",
            ("method", "route"),
            registry=r,
        )
        self.http_in_progress = Gauge(
            "petstore_http_requests_in_progress",
            "HTTP requests being answered now.",
            ("method",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ws_connections = Gauge(
            "petstore_ws_connections", "Open WebSocket connections.", registry=r, multiprocess_mode="livesum"
        )
        self.ws_disconnects = Counter(
            "petstore_ws_disconnects_total", "WebSocket connections closed, by close code.", ("code",), registry=r
        )
        self.ws_subscriptions = Gauge(
            "petstore_ws_subscriptions",
            "Live room subscriptions over WebSocket, by kind of room.",
            ("room_kind",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ws_sent = Counter(
            "petstore_ws_messages_sent_total", "Event messages sent to WebSocket clients.", ("room_kind",), registry=r
        )
        self.ws_received = Counter(
            "petstore_ws_messages_received_total", "Messages received from WebSocket clients.", ("type",), registry=r
        )
        self.ws_slow = Counter(
            "petstore_ws_slow_consumer_disconnects_total",
            "WebSocket clients closed with 1013 because they could not keep up.",
            registry=r,
        )
        self.events_published = Counter(
            "petstore_events_published_total", "Events published to the broker.", ("event",), registry=r
        )
        self.delivery_lag = Histogram(
            "petstore_event_delivery_lag_seconds",
            "From the commit of a change to the send of its event to a subscriber.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.broker_reconnects = Counter(
            "petstore_broker_reconnects_total", "Times the broker connection was re-established.", registry=r
        )
        self.broker_connected = Gauge(
            "petstore_broker_connected",
            "1 while this instance's broker listener is connected and delivering, else 0.",
            registry=r,
            multiprocess_mode="livemin",  # with several workers: 0 as soon as one of them is cut off
        )
        self.task_restarts = Counter(
            "petstore_realtime_task_restarts_total",
            "Background tasks of the real-time layer (listener, relay) that failed and were restarted.",
            ("task",),
            registry=r,
        )
        self.outbox_pending = Gauge(
            "petstore_outbox_pending",
            "Events committed but not yet published.",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.ratelimit_rejections = Counter(
            "petstore_ratelimit_rejections_total",
            "Requests and messages refused by a rate limit.",
            ("scope",),
            registry=r,
        )
        self.ratelimit_backend_errors = Counter(
            "petstore_ratelimit_backend_errors_total",
            "Rate-limit checks that could not reach the shared backend.",
            registry=r,
        )
        self.ratelimit_resumes = Counter(
            "petstore_ratelimit_resumes_total",
            "WebSocket reconnects that brought a resume pass: accepted (spent) or refused.",
            ("outcome",),
            registry=r,
        )
        self.auth_failures = Counter(
            "petstore_auth_failures_total", "Refused credentials, by reason.", ("reason",), registry=r
        )
        self.inventory_pets = Gauge(
            "petstore_inventory_pets",
            "Pets in the store, by status.",
            ("status",),
            registry=r,
            multiprocess_mode="livemostrecent",
        )

    def observe(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        """Feed one happening (see :data:`petstore.plugin.HAPPENINGS`) to its metric."""
        match name:
            case "ws.connected":
                self.ws_connections.inc(value)
            case "ws.disconnected":
                self.ws_connections.dec(value)
                code = labels.get("code", "")
                self.ws_disconnects.labels(_close_code(code)).inc(value)
            case "ws.subscribed":
                self.ws_subscriptions.labels(_bounded(labels.get("room_kind"), ROOM_KINDS)).inc(value)
            case "ws.unsubscribed":
                self.ws_subscriptions.labels(_bounded(labels.get("room_kind"), ROOM_KINDS)).dec(value)
            case "ws.message_sent":
                self.ws_sent.labels(_bounded(labels.get("room_kind"), ROOM_KINDS)).inc(value)
            case "ws.message_received":
                self.ws_received.labels(_bounded(labels.get("type"), CLIENT_MESSAGE_TYPES)).inc(value)
            case "ws.slow_consumer":
                self.ws_slow.inc(value)
            case "event.published":
                self.events_published.labels(labels.get("event", OTHER)).inc(value)
            case "event.delivery_lag":
                self.delivery_lag.observe(value)
            case "broker.reconnected":
                self.broker_reconnects.inc(value)
            case "broker.connected":
                self.broker_connected.set(value)
            case "realtime.task_restarted":
                self.task_restarts.labels(_bounded(labels.get("task"), TASKS)).inc(value)
            case "outbox.pending":
                self.outbox_pending.set(value)
            case "inventory.pets":
                self.inventory_pets.labels(labels.get("status", OTHER)).set(value)
            case "auth.failure":
                self.auth_failures.labels(labels.get("reason", OTHER)).inc(value)
            case "ratelimit.rejected":
                self.ratelimit_rejections.labels(labels.get("scope", OTHER)).inc(value)
            case "ratelimit.backend_error":
                self.ratelimit_backend_errors.inc(value)
            case "ratelimit.resume":
                self.ratelimit_resumes.labels(_bounded(labels.get("outcome"), RESUME_OUTCOMES)).inc(value)
            case _:
                # "http.request" is measured by the middleware itself (counting it here too would
                # count each request twice); names from third-party plugins are not ours to map.
                return


class HttpMetricsMiddleware:
    """Pure ASGI: counts, times and tracks every HTTP request; WebSocket and lifespan pass through."""

    def __init__(self, app: ASGIApp, instruments: Instruments) -> None:
        self.app = app
        self.instruments = instruments
        self.route_of = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = _bounded(scope["method"], METHODS)
        # The router rewrites path and root_path in place when it enters a Mount: keep the
        # request as it came in, to match it against the app's routes afterwards.
        incoming = dict(scope)
        status = 500  # unless a response starts: an exception escaping the app becomes a 500
        in_progress = self.instruments.http_in_progress.labels(method)
        in_progress.inc()
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - started
            in_progress.dec()
            route = self.route_of(incoming, scope.get("route"))
            self.instruments.http_requests.labels(method, route, str(status)).inc()
            self.instruments.http_duration.labels(method, route).observe(elapsed)


class WorkerProcesses(Collector):
    """``process_*`` of every live worker, one series each (label ``pid``), read from ``/proc``.

    prometheus_client's multiprocess mode has no process metrics, and a worker's own collector
    would show whichever worker a scrape reached. The live workers are those whose live-gauge
    files are in the directory (a worker that is gone is marked dead, and its files removed).
    ``python_gc_*`` is a process's own and cannot be read from another: with one process only.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def pids(self) -> list[int]:
        found = set()
        for path in self.directory.glob("gauge_live*_*.db"):
            pid = path.stem.rsplit("_", 1)[1]
            if pid.isdigit():
                found.add(int(pid))
        return sorted(found)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self.pids():
            reader = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for family in reader.collect():  # nothing for a pid that has just exited
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """``PROMETHEUS_MULTIPROC_DIR`` for one run: the configured one emptied, else a temporary one removed after."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        # A previous run's files would be added to this run's counts.
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="petstore-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def multiprocess_run() -> Iterator[Callable[[int], None]]:
    """Around ``petstore serve --workers N``, in the supervisor: the directory the workers write
    to, in the environment they inherit; its value marks a gone worker dead (its live gauges,
    such as connections open, stop counting; its counters keep counting)."""
    saved = {name: os.environ.get(name) for name in (MULTIPROC_ENV, WORKERS_ENV)}
    with metrics_directory() as path:
        os.environ[MULTIPROC_ENV] = str(path)
        os.environ[WORKERS_ENV] = "1"
        try:
            yield lambda pid: mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    if not value or not os.environ.get(WORKERS_ENV):
        return None
    path = Path(value)
    if not path.is_dir():
        raise ConfigurationError(f"{MULTIPROC_ENV}={value} is not a directory")
    if prometheus_values.ValueClass is prometheus_values.MutexValue:
        # prometheus_client picks its value store when first imported: set after that, the
        # variable would be ignored and each worker would report only its own counts.
        raise ConfigurationError(f"{MULTIPROC_ENV} was set after prometheus_client was imported")
    return path


class MetricsPlugin(PluginBase):
    name = "metrics"
    # Wrap everything, CORS and the other plugins included, wherever metrics is listed in
    # PETSTORE_PLUGINS: the 401s and 429s that auth and rate limiting answer are requests too.
    outermost = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.multiprocess_dir = _multiprocess_dir()
        # No `*_created` series beside each counter and histogram: nothing here queries them, they
        # double the series count, and multiprocess mode cannot produce them anyway, so one
        # worker or many expose the same names.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.instruments = Instruments(self.registry)
        if self.multiprocess_dir is not None:
            # Exposition reads every worker's files; the instruments above write this worker's.
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
            # process_* of each live worker, read from /proc by whichever worker is scraped.
            self.exposition.register(WorkerProcesses(self.multiprocess_dir))
            PlatformCollector(registry=self.exposition)
        else:
            self.exposition = self.registry
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def workers(self, count: int) -> contextlib.AbstractContextManager[Callable[[int], None]]:
        return multiprocess_run()

    def environment(self) -> Sequence[str]:
        return (WORKERS_ENV,)  # set by multiprocess_run for the workers

    def middleware(self) -> Sequence[Middleware]:
        return [Middleware(HttpMetricsMiddleware, instruments=self.instruments)]

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/metrics", self.metrics, methods=["GET"], name="metrics", include_in_schema=False)]

    def observe(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        self.instruments.observe(name, value, labels)

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text format."""
        await self._refresh_database_gauges(app_state(request))
        if self.multiprocess_dir is not None:
            body = await run_in_threadpool(generate_latest, self.exposition)  # reads one file per worker
        else:
            body = generate_latest(self.exposition)
        # The classic text format (what prometheus_client itself serves by default): every
        # Prometheus version parses it, while "version=1.0.0" is unknown to older servers.
        return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    async def _refresh_database_gauges(self, state: AppState) -> None:
        # Two cheap indexed counts per scrape keep the database-wide gauges true even before
        # (or without) a component reporting them.
        try:
            async with state.sessions() as session:
                counts = await events.inventory_counts(session)
                pending = await session.scalar(
                    select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))  # type: ignore[union-attr,arg-type]
                )
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("metrics: database gauges not refreshed: %s", type(exc).__name__)
            return
        for status, count in counts.items():
            self.instruments.inventory_pets.labels(status).set(count)
        self.instruments.outbox_pending.set(pending or 0)


def plugin(settings: Settings) -> MetricsPlugin:
    """Entry point for ``PETSTORE_PLUGINS=plugins.metrics``."""
    return MetricsPlugin(settings)


__all__ = ["HttpMetricsMiddleware", "Instruments", "MetricsPlugin", "WorkerProcesses", "plugin"]
