"""plugins.tracing: one trace from a REST write to the WebSocket delivery of its event, on any instance.

In process (the memory broker, spans kept by the SDK's in-memory exporter): the carrier's round
trip through the outbox, the publish and the delivery; what the core does without the plugin; no
token in any attribute. Across processes (two uvicorn servers, real PostgreSQL and Redis): the
SDK's real OTLP/HTTP exporter sends to a receiver the test runs (:mod:`tests.otlp`), and the trace
of ``POST /api/v3/pet`` on one instance holds the delivery of its ``pet.created`` on the other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import petstore.models  # noqa: F401  (registers the tables)
from petstore import db
from petstore.config import Settings
from petstore.models import OutboxEvent
from petstore.plugin import PluginBase, Plugins
from petstore.realtime import events
from plugins.tracing import TracingPlugin
from tests.otlp import Span, otlp_receiver
from tests.realtime.support import DEADLINE, add_pet, petstore_instances, serve, settings_for, until, ws_client
from tests.services import UvicornServer

SECRET_TOKEN = "s3cret-bearer-token-do-not-trace"
SECRET_QUERY = "s3cret-query-token-do-not-trace"

#: Tracing plugins made by the factory below, newest last, each with its in-memory exporter.
MADE: list[tuple[TracingPlugin, InMemorySpanExporter]] = []


def in_memory(settings: Settings) -> TracingPlugin:
    """``plugins.tracing`` exporting to memory (loaded as ``tests.plugins.test_tracing:in_memory``)."""
    exporter = InMemorySpanExporter()
    plugin = TracingPlugin(settings, exporter=exporter)
    MADE.append((plugin, exporter))
    return plugin


def finished(plugin: TracingPlugin, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    plugin.provider.force_flush()
    return list(exporter.get_finished_spans())


def hex_id(value: int) -> str:
    return format(value, "032x")


# ------------------------------------------------------------------ the carrier, in process


def test_a_context_kept_at_write_time_makes_the_delivery_a_child_of_the_request() -> None:
    plugin = in_memory(Settings(env="test", plugins=()))
    exporter = MADE[-1][1]
    tracing = Plugins([plugin]).tracing
    assert tracing is not None
    with plugin.tracer.start_as_current_span("POST /api/v3/pet") as request:
        kept = tracing.context()
    assert kept is not None and set(kept) >= {"traceparent"}
    stored = json.dumps(kept)  # as the outbox column and the broker carry it
    with tracing.delivering("pet.created", "pets", stored, 3):
        pass
    (delivery,) = [span for span in finished(plugin, exporter) if span.name == "deliver pets"]
    assert delivery.kind is SpanKind.CONSUMER
    assert delivery.parent is not None and delivery.parent.span_id == request.get_span_context().span_id
    assert delivery.context.trace_id == request.get_span_context().trace_id
    assert delivery.attributes is not None and delivery.attributes["petstore.subscribers"] == 3


def test_a_batch_of_one_request_is_its_child_and_a_batch_of_several_links_each() -> None:
    plugin = in_memory(Settings(env="test", plugins=()))
    exporter = MADE[-1][1]
    tracing = Plugins([plugin]).tracing
    assert tracing is not None
    contexts = []
    for name in ("first", "second"):
        with plugin.tracer.start_as_current_span(name):
            contexts.append(tracing.context())
    with tracing.publishing([("pet.created", contexts[0]), ("inventory.changed", contexts[0])]):
        pass
    with tracing.publishing([("pet.created", contexts[0]), ("pet.created", contexts[1]), ("pet.deleted", None)]):
        pass
    spans = finished(plugin, exporter)
    first, second = (next(s for s in spans if s.name == name) for name in ("first", "second"))
    one, several = [s for s in spans if s.name == "publish outbox"]
    assert one.parent is not None and one.parent.span_id == first.context.span_id
    assert [link.context.span_id for link in one.links] == [first.context.span_id]
    assert several.parent is None  # a trace of its own, found from each request through its links
    assert {link.context.span_id for link in several.links} == {first.context.span_id, second.context.span_id}
    assert several.attributes is not None and several.attributes["messaging.batch.message_count"] == 3


def test_without_a_tracing_plugin_the_core_has_no_tracing_and_keeps_no_context() -> None:
    assert Plugins([PluginBase()]).tracing is None


async def test_outbox_rows_keep_the_context_only_when_asked(tmp_path: Path) -> None:
    engine = db.create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'o.db'}", env="test"))
    await db.create_all(engine)
    try:
        plain, traced = db.create_sessionmaker(engine), db.create_sessionmaker(engine)
        events.keep_trace_context(traced, lambda: {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
        for sessions in (plain, traced):
            async with sessions() as session:
                events.pet_deleted(session, 7)
                await session.commit()
        async with plain() as session:
            kept = (await session.execute(select(OutboxEvent.trace_context).order_by(OutboxEvent.id))).scalars()
            assert list(kept) == [None, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}]
    finally:
        await engine.dispose()


# ------------------------------------------------------------- the whole app, in process


async def test_in_process_a_post_is_traced_to_its_delivery_and_no_attribute_holds_a_token(tmp_path: Path) -> None:
    plugins = (
        "tests.realtime.support:expiring_auth",
        "tests.realtime.support:probe",
        "tests.plugins.test_tracing:in_memory",
    )
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'traced.db'}", plugins=plugins, media_dir=tmp_path)
    async with serve(settings) as server:
        plugin, exporter = MADE[-1]
        async with ws_client(server.ws_url) as first, ws_client(server.ws_url) as second:
            for client in (first, second):
                await client.request({"type": "subscribe", "room": "pets"}, "subscribed")
            async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
                created = await http.post(
                    "/api/v3/pet",
                    params={"token": SECRET_QUERY},
                    json={"name": "Traced", "photoUrls": []},
                    headers={"X-Test-User": "stan:2:staff", "Authorization": f"Bearer {SECRET_TOKEN}"},
                )
                assert created.status_code == 200, created.text
                pet_id = created.json()["id"]
                found = await http.get(f"/api/v3/pet/{pet_id}", params={"api_key": SECRET_QUERY})
                assert found.status_code == 200
            for client in (first, second):
                event = await client.expect("event")
                assert event["event"] == "pet.created" and "trace" not in json.dumps(event)

            def delivered() -> list[ReadableSpan]:
                return [s for s in finished(plugin, exporter) if s.name == "deliver pets"]

            await until(delivered, "the delivery span")
        spans = finished(plugin, exporter)

    (post,) = [s for s in spans if s.name == "POST /api/v3/pet"]
    (get,) = [s for s in spans if s.name == "GET /api/v3/pet/{petId}"]  # the template, never the id
    assert post.kind is SpanKind.SERVER and post.attributes is not None
    assert post.attributes["http.route"] == "/api/v3/pet" and post.attributes["http.response.status_code"] == 200
    trace_id = post.context.trace_id
    assert any(s.instrumentation_scope.name.endswith("sqlalchemy") for s in spans if s.context.trace_id == trace_id)
    (delivery,) = delivered()  # one span for two subscribers
    assert delivery.context.trace_id == trace_id and delivery.attributes is not None
    assert delivery.attributes["petstore.subscribers"] == 2
    assert get.context.trace_id != trace_id
    # The relay's poll of the outbox and the broker's reads have no parent: not recorded.
    assert not [s for s in spans if s.kind is SpanKind.CLIENT and s.parent is None]
    for span in spans:
        for key, value in (span.attributes or {}).items():
            assert SECRET_TOKEN not in str(value) and SECRET_QUERY not in str(value), (span.name, key, value)


# ------------------------------------------------------------- two instances, real OTLP


async def create_tables(pg_url: str) -> None:
    engine = create_async_engine(pg_url)
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    await engine.dispose()


@pytest.fixture
def traced_pair(
    pg_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, UvicornServer, UvicornServer]]:
    """An OTLP receiver, and two petstore servers (services ``petstore-a``, ``petstore-b``) exporting to it."""
    asyncio.run(create_tables(pg_url))
    with otlp_receiver() as receiver, petstore_instances(pg_url, redis_url, tmp_path / "media") as start:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds: spans go out at once
        servers = []
        for name in ("a", "b"):
            monkeypatch.setenv("OTEL_SERVICE_NAME", f"petstore-{name}")
            (server,) = start(1, plugins="tests.fakes,plugins.ratelimit,plugins.tracing")
            servers.append(server)
        yield receiver, servers[0], servers[1]


def in_trace(spans: list[Span], trace_id: str, **match: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace_id and all(getattr(s, k) == v for k, v in match.items())]


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.process
async def test_one_trace_from_a_post_on_one_instance_to_the_websocket_delivery_on_the_other(
    traced_pair: tuple[Any, UvicornServer, UvicornServer],
) -> None:
    receiver, a, b = traced_pair
    async with ws_client(b.ws_url) as one, ws_client(b.ws_url) as two, ws_client(b.ws_url) as three:
        clients = (one, two, three)
        for client in clients:
            await client.request({"type": "subscribe", "room": "pets"}, "subscribed")
        pet = await add_pet(a.url, "Followed")
        for client in clients:
            try:
                event = await client.expect("event")
            except TimeoutError:
                print("A:", a.logtail(), "\nB:", b.logtail())
                raise
            assert event["event"] == "pet.created" and event["data"] == pet
        # Clients get the frame as it always was: no trace context in it.
        assert all("traceparent" not in frame for client in clients for frame in client.frames)

        def posted(spans: list[Span]) -> list[Span]:
            return [
                s for s in spans if s.service == "petstore-a" and s.kind == "SERVER" and s.name == "POST /api/v3/pet"
            ]

        spans = await asyncio.to_thread(receiver.wait_for, lambda spans: bool(posted(spans)), "the POST's span")
        (request,) = posted(spans)
        trace_id = request.trace_id
        assert request.attributes["http.route"] == "/api/v3/pet"

        def delivered_on_b(spans: list[Span], trace: str) -> list[Span]:
            return in_trace(spans, trace, service="petstore-b", name="deliver pets", kind="CONSUMER")

        def whole(spans: list[Span]) -> bool:
            publish = [s for s in spans if s.name == "publish outbox" and (trace_id, request.span_id) in s.links]
            return bool(publish and delivered_on_b(spans, trace_id))

        spans = await asyncio.to_thread(receiver.wait_for, whole, "the publish and B's delivery")
        # A second change: once its delivery span is in, any other span of the first event would be too.
        second = await add_pet(a.url, "Barrier")
        for client in clients:
            assert (await client.expect("event"))["data"] == second

        def barrier(spans: list[Span]) -> bool:
            later = [
                s for s in spans if s.name == "deliver pets" and s.service == "petstore-b" and s.trace_id != trace_id
            ]
            return bool(later)

        spans = await asyncio.to_thread(receiver.wait_for, barrier, "the second event's delivery")

    sql = in_trace(spans, trace_id, scope="opentelemetry.instrumentation.sqlalchemy", service="petstore-a")
    assert any(s.attributes.get("db.system") or s.attributes.get("db.system.name") for s in sql), sql
    redis = in_trace(spans, trace_id, scope="opentelemetry.instrumentation.redis")
    assert redis, "no Redis span in the request's trace (rate limit, publish)"
    (publish,) = [s for s in spans if s.name == "publish outbox" and (trace_id, request.span_id) in s.links]
    assert publish.kind == "PRODUCER" and publish.trace_id == trace_id  # one request's rows: its child too
    assert any(s.parent_span_id == publish.span_id for s in redis)  # the publish script itself
    (delivery,) = delivered_on_b(spans, trace_id)  # exactly one, for three subscribers
    assert delivery.parent_span_id == request.span_id
    assert delivery.attributes["petstore.subscribers"] == 3
    assert delivery.attributes["petstore.event"] == "pet.created"
    assert not in_trace(spans, trace_id, service="petstore-a", name="deliver pets")  # A has no subscriber
