"""plugins.metrics: SPEC §5 metrics at /metrics, route templates as labels, one registry per app,
clean for promtool, and correct across the worker processes of `petstore serve --workers 2`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from petstore import db
from petstore.app import create_app
from petstore.config import Settings
from petstore.errors import error_response
from petstore.migrations import migrate
from petstore.models import OutboxEvent, Pet, PetStatus
from petstore.plugin import PluginBase
from petstore.state import app_state
from tests.ops.contract import METRICS
from tests.services import UvicornServer, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# One happening of each kind the core reports, with the labels it reports them with.
ONE_OF_EACH = [
    ("ws.connected", 1, {}),
    ("ws.subscribed", 1, {"room_kind": "inventory"}),
    ("ws.message_sent", 1, {"room_kind": "pets"}),
    ("ws.message_received", 1, {"type": "subscribe"}),
    ("ws.slow_consumer", 1, {}),
    ("ws.disconnected", 1, {"code": "1013"}),
    ("event.published", 1, {"event": "pet.created"}),
    ("event.delivery_lag", 0.012, {}),
    ("broker.reconnected", 1, {}),
    ("outbox.pending", 3, {}),
    ("inventory.pets", 4, {"status": "available"}),
    ("auth.failure", 1, {"reason": "expired"}),
    ("ratelimit.rejected", 1, {"scope": "login"}),
    ("ratelimit.backend_error", 1, {}),
]


# ---------------------------------------------------------------------------- test plugins


async def observe_endpoint(request: Request) -> Response:
    """Report happenings through the app's real dispatcher, as core components do."""
    for name, value, labels in await request.json():
        app_state(request).plugins.observe(name, value, **labels)
    return JSONResponse({"observed": True})


class Probe(PluginBase):
    name = "test-probe"

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/_probe/observe", observe_endpoint, methods=["POST"]),
            # A sub-router: its own routes' paths are relative to the mount.
            Mount("/_probe/mounted", routes=[Route("/items/{item}", observe_endpoint, methods=["POST"])]),
        ]


def probe(settings: Settings) -> Probe:
    return Probe()


class RefuseMiddleware:
    """Answers 429 itself, before the router runs, when asked to (as a rate limiter would)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(name == b"x-refuse" for name, _ in scope["headers"]):
            await error_response(429, "rate_limited", "refused by the test")(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Refuser(PluginBase):
    name = "test-refuser"

    def middleware(self) -> Sequence[Middleware]:
        return [Middleware(RefuseMiddleware)]


def refuser(settings: Settings) -> Refuser:
    return Refuser()


# Listed last, as in the default PETSTORE_PLUGINS: metrics must still wrap the refuser.
PLUGINS = ("tests.plugins.test_metrics:refuser", "tests.plugins.test_metrics:probe", "plugins.metrics")


# -------------------------------------------------------------------------------- helpers


def settings_for(tmp_path: Path, name: str = "metrics.db") -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / name}", plugins=PLUGINS, media_dir=tmp_path / "media"
    )


def prepare_database(settings: Settings, pets: Sequence[str] = (), pending_events: int = 0) -> None:
    async def run() -> None:
        engine = db.create_engine(settings)
        try:
            await db.create_all(engine)
            async with db.create_sessionmaker(engine)() as session:
                session.add_all(Pet(name=f"pet {i}", status=status, photo_urls=[]) for i, status in enumerate(pets))
                session.add_all(
                    OutboxEvent(event="pet.created", rooms=["pets"], data={}) for _ in range(pending_events)
                )
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(run())


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = settings_for(tmp_path)
    prepare_database(settings)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def parse(text: str) -> tuple[Samples, dict[str, Any]]:
    """Samples by (name, labels), and the metric families by name."""
    samples: Samples = {}
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, families


def scrape(client: TestClient) -> tuple[Samples, dict[str, Any]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def http_count(samples: Samples, method: str, route: str, status: int) -> float:
    return value(samples, "petstore_http_requests_total", method=method, route=route, status=str(status))


# ---------------------------------------------------------------------------------- HTTP


def test_requests_are_counted_under_the_route_template_never_the_raw_path(client: TestClient) -> None:
    for pet_id in (1, 2, 3, 2):
        assert client.get(f"/api/v3/pet/{pet_id}").status_code == 404
    assert client.get("/api/v3/pet/findByStatus").status_code == 200
    assert client.get("/healthz").status_code == 200

    samples, _ = scrape(client)

    assert http_count(samples, "GET", "/api/v3/pet/{petId}", 404) == 4
    assert http_count(samples, "GET", "/api/v3/pet/findByStatus", 200) == 1
    assert http_count(samples, "GET", "/healthz", 200) == 1
    duration_count = value(
        samples, "petstore_http_request_duration_seconds_count", method="GET", route="/api/v3/pet/{petId}"
    )
    assert duration_count == 4
    routes = {dict(labels).get("route") for (_, labels) in samples}
    assert routes.isdisjoint({"/api/v3/pet/1", "/api/v3/pet/2", "/api/v3/pet/3"})


def test_unmatched_paths_share_one_label(client: TestClient) -> None:
    for path in ("/nope", "/wp-admin/login.php", "/api/v3/pets/1/extra", "/api/v3/%00"):
        assert client.get(path).status_code == 404

    samples, _ = scrape(client)

    assert http_count(samples, "GET", "unmatched", 404) == 4
    assert {dict(labels).get("route") for (name, labels) in samples if name == "petstore_http_requests_total"} == {
        "unmatched"
    }


def test_a_known_path_with_the_wrong_method_keeps_its_template(client: TestClient) -> None:
    assert client.delete("/healthz").status_code == 405
    samples, _ = scrape(client)
    assert http_count(samples, "DELETE", "/healthz", 405) == 1


def test_a_response_another_plugin_answers_before_routing_is_counted_under_its_route(client: TestClient) -> None:
    assert client.get("/api/v3/pet/7", headers={"X-Refuse": "1"}).status_code == 429
    samples, _ = scrape(client)
    assert http_count(samples, "GET", "/api/v3/pet/{petId}", 429) == 1


def test_a_mount_is_labelled_with_its_own_template_whatever_it_routes_inside(client: TestClient) -> None:
    assert client.get("/static/dashboard.css").status_code == 200
    assert client.post("/_probe/mounted/items/5", json=[]).status_code == 200
    assert client.post("/_probe/mounted/items/5", json=[], headers={"X-Refuse": "1"}).status_code == 429
    samples, _ = scrape(client)
    assert http_count(samples, "GET", "/static/{path}", 200) == 1
    assert http_count(samples, "POST", "/_probe/mounted/{path}", 200) == 1
    assert http_count(samples, "POST", "/_probe/mounted/{path}", 429) == 1


def test_an_unknown_method_is_folded_into_other(client: TestClient) -> None:
    client.request("BREW", "/healthz")
    samples, _ = scrape(client)
    assert http_count(samples, "other", "/healthz", 405) == 1
    assert not any(dict(labels).get("method") == "BREW" for (_, labels) in samples)


def test_requests_in_progress_counts_the_scrape_itself_and_returns_to_zero(client: TestClient) -> None:
    samples, _ = scrape(client)
    assert value(samples, "petstore_http_requests_in_progress", method="GET") == 1  # the scrape
    client.post("/_probe/observe", json=[])
    samples, _ = scrape(client)
    assert value(samples, "petstore_http_requests_in_progress", method="POST") == 0


def test_a_websocket_is_counted_by_the_core_happenings_not_as_an_http_request(client: TestClient) -> None:
    with client.websocket_connect("/ws") as websocket:
        welcome = websocket.receive_json()
        assert (welcome[0] if isinstance(welcome, list) else welcome)["type"] == "welcome"
        samples, _ = scrape(client)
        assert value(samples, "petstore_ws_connections") == 1

    def closed() -> Samples | None:
        samples, _ = scrape(client)
        return samples if value(samples, "petstore_ws_connections") == 0 else None

    samples = wait_until(closed, 10, "the server to see the WebSocket close")
    assert sum(v for (name, _), v in samples.items() if name == "petstore_ws_disconnects_total") == 1
    assert not any(dict(labels).get("route") == "/ws" for (_, labels) in samples)


# ----------------------------------------------------------------------------- happenings


def test_every_spec_metric_is_exposed_with_its_type_and_labels(client: TestClient) -> None:
    client.get("/healthz")
    assert client.post("/_probe/observe", json=ONE_OF_EACH).status_code == 200

    samples, families = scrape(client)

    assert not [name for name, _ in samples if name.endswith("_created")]  # one worker or many: same series
    for name, (kind, labels) in METRICS.items():
        family_name = name.removesuffix("_total") if kind == "counter" else name
        assert family_name in families, name
        family = families[family_name]
        assert family.type == kind, name
        assert family.samples, f"{name} has no sample"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)


def test_happenings_feed_their_metrics(client: TestClient) -> None:
    happenings = [
        ("ws.connected", 1, {}),
        ("ws.connected", 1, {}),
        ("ws.connected", 1, {}),
        ("ws.connected", 1, {}),
        ("ws.connected", 1, {}),
        ("ws.disconnected", 1, {"code": "1000"}),
        ("ws.disconnected", 1, {"code": "1013"}),
        ("ws.disconnected", 1, {"code": "4000"}),  # client-chosen codes: one series, not a thousand
        ("ws.disconnected", 1, {"code": "4999"}),
        ("ws.subscribed", 1, {"room_kind": "pet"}),
        ("ws.subscribed", 1, {"room_kind": "pet"}),
        ("ws.unsubscribed", 1, {"room_kind": "pet"}),
        ("ws.message_sent", 5, {"room_kind": "inventory"}),
        ("ws.message_received", 1, {"type": "ping"}),
        ("ws.message_received", 1, {"type": "made-up-by-a-client"}),
        ("event.published", 1, {"event": "inventory.changed"}),
        ("event.delivery_lag", 0.02, {}),
        ("event.delivery_lag", 0.5, {}),
        ("auth.failure", 1, {"reason": "expired"}),
        ("auth.failure", 1, {"reason": "expired"}),
        ("ratelimit.rejected", 1, {"scope": "http"}),
        ("ratelimit.rejected", 1, {"scope": "ws"}),
        ("http.request", 1, {"method": "GET", "route": "/x", "status": "200"}),  # measured by the middleware
        ("someone.elses.happening", 1, {}),  # ignored, never an error
    ]
    assert client.post("/_probe/observe", json=happenings).status_code == 200

    samples, _ = scrape(client)

    assert value(samples, "petstore_ws_connections") == 1
    assert value(samples, "petstore_ws_disconnects_total", code="1000") == 1
    assert value(samples, "petstore_ws_disconnects_total", code="1013") == 1
    assert value(samples, "petstore_ws_disconnects_total", code="4xxx") == 2
    codes = {dict(labels)["code"] for (name, labels) in samples if name == "petstore_ws_disconnects_total"}
    assert codes == {"1000", "1013", "4xxx"}
    assert value(samples, "petstore_ws_subscriptions", room_kind="pet") == 1
    assert value(samples, "petstore_ws_messages_sent_total", room_kind="inventory") == 5
    assert value(samples, "petstore_ws_messages_received_total", type="ping") == 1
    assert value(samples, "petstore_ws_messages_received_total", type="other") == 1
    assert value(samples, "petstore_events_published_total", event="inventory.changed") == 1
    assert value(samples, "petstore_event_delivery_lag_seconds_count") == 2
    assert value(samples, "petstore_event_delivery_lag_seconds_bucket", le="0.025") == 1
    assert value(samples, "petstore_auth_failures_total", reason="expired") == 2
    assert value(samples, "petstore_ratelimit_rejections_total", scope="http") == 1
    assert value(samples, "petstore_ratelimit_rejections_total", scope="ws") == 1
    assert http_count(samples, "GET", "/x", 200) == 0


def test_inventory_is_read_from_the_database_at_scrape_and_the_outbox_drains_to_zero(tmp_path: Path) -> None:
    """Pets written straight to the database (no event reported them) are counted at the first
    scrape; outbox rows left from before the start are published by the relay, and pending falls to 0."""
    settings = settings_for(tmp_path)
    prepare_database(settings, pets=["available", "available", "sold"], pending_events=5)
    with TestClient(create_app(settings)) as client:

        def drained() -> Samples | None:
            samples, _ = scrape(client)
            published = value(samples, "petstore_events_published_total", event="pet.created")
            return samples if published == 5 and value(samples, "petstore_outbox_pending") == 0 else None

        samples = wait_until(drained, 10, "the relay to publish the outbox")
    assert value(samples, "petstore_inventory_pets", status=PetStatus.available) == 2
    assert value(samples, "petstore_inventory_pets", status=PetStatus.pending) == 0
    assert value(samples, "petstore_inventory_pets", status=PetStatus.sold) == 1


def test_two_apps_in_one_process_keep_separate_counts(tmp_path: Path) -> None:
    first, second = settings_for(tmp_path, "one.db"), settings_for(tmp_path, "two.db")
    prepare_database(first)
    prepare_database(second)
    with TestClient(create_app(first)) as one, TestClient(create_app(second)) as two:
        for _ in range(3):
            one.get("/healthz")
        two.get("/healthz")
        one_samples, _ = scrape(one)
        two_samples, _ = scrape(two)
    assert http_count(one_samples, "GET", "/healthz", 200) == 3
    assert http_count(two_samples, "GET", "/healthz", 200) == 1


@pytest.mark.process
@pytest.mark.prometheus
def test_promtool_finds_nothing_to_complain_about(client: TestClient) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package prometheus): run scripts/test", pytrace=False)
    client.get("/api/v3/pet/1")
    client.get("/nope")
    client.post("/_probe/observe", json=ONE_OF_EACH)
    text = client.get("/metrics").text

    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


# ------------------------------------------------------------------------ several workers


def _by_pid(samples: Samples, name: str) -> dict[str, float]:
    return {dict(labels)["pid"]: v for (n, labels), v in samples.items() if n == name}


def _workers(metrics_dir: Path) -> set[int]:
    """Pids of live workers: each keeps a live-sum gauge file until it is marked dead."""
    return {int(path.stem.rsplit("_", 1)[1]) for path in metrics_dir.glob("gauge_livesum_*.db")}


@pytest.mark.process
def test_request_counts_add_up_across_two_workers_and_survive_a_worker_crash(tmp_path: Path) -> None:
    """`petstore serve --workers 2`: N requests on fresh connections sum to N in /metrics; a killed
    worker is replaced, its live gauges are dropped and its counts are kept."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'workers.db'}"
    migrate(database_url)
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"  # left by an earlier run: the CLI must empty the directory
    stale.write_bytes(b"not a metrics file")
    petstore = Path(sys.executable).with_name("petstore")
    server = UvicornServer(
        command=[str(petstore), "serve", "--host", "{host}", "--port", "{port}", "--workers", "2"],
        env={
            "PETSTORE_DATABASE_URL": database_url,
            "PETSTORE_PLUGINS": "plugins.metrics",
            "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
        cwd=tmp_path,
    )
    requests = 60
    with server:
        workers = wait_until(lambda: len(_workers(metrics_dir)) == 2 and _workers(metrics_dir), 30, "two workers")
        assert not stale.exists()

        def hit(count: int) -> None:
            for _ in range(count):
                # A new connection each time, so the kernel spreads them over both workers.
                with httpx.Client(base_url=server.url) as http:
                    assert http.get("/api/v3/pet/1").status_code == 404

        threads = [threading.Thread(target=hit, args=(requests // 6,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        samples, _ = parse(httpx.get(f"{server.url}/metrics").text)
        assert http_count(samples, "GET", "/api/v3/pet/{petId}", 404) == requests
        assert value(samples, "petstore_http_requests_in_progress", method="GET") == 1  # only the scrape
        # process_* once per worker, whichever worker answered the scrape.
        memory = _by_pid(samples, "process_resident_memory_bytes")
        assert set(memory) == {str(pid) for pid in workers} and all(v > 1_000_000 for v in memory.values())
        assert set(_by_pid(samples, "process_cpu_seconds_total")) == set(memory)

        crashed = min(workers)
        os.kill(crashed, signal.SIGKILL)
        wait_until(lambda: crashed not in _workers(metrics_dir) and len(_workers(metrics_dir)) == 2, 30, "a new worker")

        samples, _ = parse(httpx.get(f"{server.url}/metrics").text)
        assert http_count(samples, "GET", "/api/v3/pet/{petId}", 404) == requests  # the dead worker's counts stay
        # N in-process brokers: the command says so.
        assert "PETSTORE_REDIS_URL is not set" in server.log_path.read_text()
    assert not _workers(metrics_dir)  # every worker marked dead at shutdown


def test_the_in_process_broker_reports_itself_connected(client: TestClient) -> None:
    """It cannot lose a connection; reading 0 would page PetstoreDeliveryStalled for ever."""
    samples, _ = scrape(client)
    assert value(samples, "petstore_broker_connected") == 1.0


def test_process_and_python_metrics_are_exposed(client: TestClient) -> None:
    samples, families = scrape(client)
    assert value(samples, "process_resident_memory_bytes") > 1_000_000
    assert value(samples, "process_open_fds") > 0
    assert families["process_cpu_seconds"].type == "counter"
    assert value(samples, "python_gc_objects_collected_total", generation="0") >= 0
    assert any(name == "python_info" for name, _ in samples)
