"""The tracer provider of one app: configured by the standard ``OTEL_*`` variables, exporting over
OTLP/HTTP, and leaving out the background work of the real-time layer.

Everything the OpenTelemetry SDK reads from the environment it reads here too:
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (the service is ``petstore`` unless they
name one), ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and their
``_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``, ``OTEL_BSP_*`` for the batch processor,
``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SDK_DISABLED``.

One provider per app, never the global one: two apps in one process (tests) trace apart, and a
host application's own OpenTelemetry set-up is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

DEFAULT_SERVICE_NAME = "petstore"


class WithoutBackgroundClients(Sampler):
    """``delegate``, except that a client span (SQL, Redis) with no parent is dropped.

    Such a span is background work, not a request's: the relay's look at the outbox every second,
    the broker's history reads for a WebSocket subscription. Kept, each would be a trace of its
    own, several a second per instance; a request's queries and the relay's publish have a parent
    and are kept (as the configured sampler decides).
    """

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"WithoutBackgroundClients{{{self._delegate.get_description()}}}"


def resource() -> Resource:
    """The ``OTEL_*`` resource; ``service.name`` is ``petstore`` unless the environment names one."""
    found = Resource.create({})
    if str(found.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        found = found.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return found


def create_provider(exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider exporting in batches to ``exporter`` (by default OTLP/HTTP, as ``OTEL_*`` say)."""
    # The sampler OTEL_TRACES_SAMPLER names, as the SDK builds it (a provider made for that only).
    configured = TracerProvider(shutdown_on_exit=False).sampler
    provider = TracerProvider(
        sampler=WithoutBackgroundClients(configured),
        resource=resource(),
        shutdown_on_exit=False,  # the plugin's shutdown flushes and stops it
    )
    provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
    return provider
