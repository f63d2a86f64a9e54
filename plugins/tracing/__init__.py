"""``plugins.tracing``: OpenTelemetry traces of HTTP requests, SQL, Redis and event delivery.

Optional, and not in the default ``PETSTORE_PLUGINS``: add it (``plugins.auth,plugins.ratelimit,
plugins.metrics,plugins.tracing``) and install ``petstore[tracing]``. Configured by the standard
``OTEL_*`` variables (:mod:`plugins.tracing.provider`); spans go out over OTLP/HTTP in batches.

What makes one trace, from a REST write to the WebSocket or SSE write of its event on any
instance:

- the request's SERVER span (:mod:`plugins.tracing.http`), with the SQL spans of the app's
  engine and the Redis spans of the process's one client (rate limits, revocation) as children;
- ``trace_context()``: as the change commits, the request's context (W3C ``traceparent``) is
  kept with its outbox rows by the core, which never knows what is in it;
- ``traced_publish()``: the relay's publish of a batch of rows, a PRODUCER span linked to the
  context of each row (OpenTelemetry's messaging conventions for batches), and the child of it
  when every row of the batch came from one request (the usual case), with the Redis publish
  as its child;
- ``traced_delivery()``: on each instance, the hand-over of one event to its local subscribers
  of one room, a CONSUMER span child of the request's context, with the subscriber count as an
  attribute: one span per event, room and instance, never one per subscriber.

Client spans (SQL, Redis) with no parent are the real-time layer's background work (the relay's
poll, history reads) and are not recorded (:class:`~plugins.tracing.provider.WithoutBackgroundClients`).
Attributes never hold a header, a query string or a statement's parameters: no token, no password.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import AttributeValue
from starlette.middleware import Middleware

from petstore.config import Settings
from petstore.plugin import App, PluginBase
from petstore.realtime import rooms
from plugins.tracing.http import TracingMiddleware
from plugins.tracing.provider import create_provider

__all__ = ["TracingPlugin", "plugin"]

SCOPE = "plugins.tracing"
#: ``messaging.system`` of the publish and delivery spans: the store's own event pipeline.
MESSAGING_SYSTEM = "petstore"


class TracingPlugin(PluginBase):
    name = "tracing"
    # Around everything, as metrics: the 401s and 429s other plugins answer are requests too, and
    # the rate limiter's Redis calls belong in the request's trace.
    outermost = True

    def __init__(self, settings: Settings, exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self.provider: TracerProvider = create_provider(exporter)
        self.tracer = self.provider.get_tracer(SCOPE)
        self._redis: object | None = None

    def middleware(self) -> Sequence[Middleware]:
        return [Middleware(TracingMiddleware, tracer=self.tracer)]

    async def startup(self, app: App) -> None:
        # This app's engine and Redis client only, with this plugin's provider: nothing global is
        # patched (SQLAlchemyInstrumentor().instrument() would wrap create_engine for the process).
        connections = NoOpMeterProvider().get_meter(SCOPE).create_up_down_counter("db.client.connections.usage")
        sql_tracer = self.provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
        EngineTracer(sql_tracer, app.engine.sync_engine, connections)  # type: ignore[no-untyped-call]
        if app.redis is not None:
            RedisInstrumentor.instrument_client(app.redis, tracer_provider=self.provider)
            self._redis = app.redis

    async def shutdown(self, app: App) -> None:
        if self._redis is not None:
            RedisInstrumentor.uninstrument_client(self._redis)  # type: ignore[arg-type]
            self._redis = None
        # Flushing waits on the exporter's HTTP calls: off the event loop.
        await asyncio.to_thread(self.provider.shutdown)

    # -- the tracing hooks of petstore.plugin ------------------------------------------------

    def trace_context(self) -> dict[str, str] | None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    @contextlib.contextmanager
    def traced_publish(self, events: Sequence[tuple[str, Mapping[str, str] | None]]) -> Iterator[None]:
        linked: dict[tuple[int, int], trace.SpanContext] = {}
        for _, carrier in events:
            if carrier:
                found = trace.get_current_span(propagate.extract(carrier)).get_span_context()
                if found.is_valid:
                    linked.setdefault((found.trace_id, found.span_id), found)
        # One request's rows (the usual batch): the publish is part of its trace. Rows of several
        # requests: a trace of its own, found from each of theirs through its links.
        (only,) = linked.values() if len(linked) == 1 else (None,)
        parent = trace.set_span_in_context(trace.NonRecordingSpan(only)) if only is not None else Context()
        attributes: dict[str, AttributeValue] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": "outbox",
            "messaging.batch.message_count": len(events),
            "petstore.events": [event for event, _ in events],
        }
        with self.tracer.start_as_current_span(
            "publish outbox",
            context=parent,
            kind=SpanKind.PRODUCER,
            links=[Link(context) for context in linked.values()],
            attributes=attributes,
        ):
            yield

    @contextlib.contextmanager
    def traced_delivery(self, event: str, room: str, context: Mapping[str, str], subscribers: int) -> Iterator[None]:
        kind = rooms.room_kind(room) or "unknown"
        attributes: dict[str, AttributeValue] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "deliver",
            "messaging.destination.name": room,
            "messaging.destination.template": kind,
            "petstore.event": event,
            "petstore.subscribers": subscribers,
        }
        with self.tracer.start_as_current_span(
            f"deliver {kind}", context=propagate.extract(context), kind=SpanKind.CONSUMER, attributes=attributes
        ):
            yield


def plugin(settings: Settings) -> TracingPlugin:
    return TracingPlugin(settings)
