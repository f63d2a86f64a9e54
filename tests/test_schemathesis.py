"""Schemathesis against the served ``/api/v3/openapi.json``: for every operation, generated requests
(valid and invalid) never get a 5xx, and every answer is one the document describes: its status,
its content type, its headers and its body's schema.

The app runs in process with the header auth fake, on a SQLite database seeded with users, pets
and orders, so that generated ids and names sometimes hit real rows and the success paths run too.
Requests are sent as an admin, who may call every operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (  # type: ignore[attr-defined]
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python.asgi import shutdown_lifespans
from starlette.testclient import TestClient

from petstore import db
from petstore.models import Role
from petstore.openapi import OPERATIONS
from tests.fakes import ApiHarness, make_app

API = "/api/v3"
# An event stream never ends by itself: the client keeps what arrived in this time, then hangs up.
STREAM_SECONDS = 2
MAX_EXAMPLES = 50  # per operation and mode: about half a minute in all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")  # a PNG header is enough


def seed(harness: ApiHarness) -> dict[str, str]:
    """Users of every role, pets of every status with tags and a photo, orders: rows for generated ids to hit."""
    admin = harness.user("the-admin", Role.admin)
    customer = harness.user("the-customer", Role.customer)
    harness.user("user1", Role.staff)
    for number, status in enumerate(["available", "available", "pending", "sold", "available"], start=1):
        body = {"name": f"pet{number}", "photoUrls": [], "status": status, "tags": [{"name": f"tag{number}"}]}
        pet = harness.client.post(f"{API}/pet", json=body, headers=admin.headers).json()
        reply = harness.client.post(f"{API}/pet/{pet['id']}/uploadImage", content=PNG, headers=admin.headers)
        assert reply.status_code == 200, reply.text
    for pet_id, who in ((1, customer), (2, admin)):
        reply = harness.client.post(f"{API}/store/order", json={"petId": pet_id}, headers=who.headers)
        assert reply.status_code == 200, reply.text
    return admin.headers


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite+aiosqlite:///{tmp / 'petstore.db'}"
    media = tmp / "media"
    # Seed through one app, then hand a fresh one (same database) to Schemathesis, which runs its lifespan.
    with TestClient(make_app(url, media_dir=media)) as client:
        harness = ApiHarness(client, media)
        harness.run(db.create_all, harness.state.engine)
        headers = seed(harness)
    app = make_app(url, media_dir=media)
    schema = schemathesis.openapi.from_asgi(f"{API}/openapi.json", app)
    schema.config.headers = headers
    yield schema
    shutdown_lifespans()


# Invalid requests for every operation that reads something a client can get wrong.
CASES = [
    (operation_id, mode)
    for operation_id, spec in sorted(OPERATIONS.items())
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or spec.params or spec.body
]


def find_operation(schema: Any, operation_id: str) -> Any:
    for path, item in schema.raw_schema["paths"].items():
        for method, operation in item.items():
            if operation["operationId"] == operation_id:
                return schema[path][method.upper()]
    raise AssertionError(f"{operation_id} is not in the served document")


# One test per operation and mode (rather than Schemathesis' own pytest loader, whose fixture
# plumbing does not run under this pytest): a failure names the operation.
@pytest.mark.parametrize(("operation_id", "mode"), CASES, ids=[f"{op}-{mode.value}" for op, mode in CASES])
def test_the_api_conforms_to_its_document(api_schema: Any, operation_id: str, mode: GenerationMode) -> None:
    operation = find_operation(api_schema, operation_id)
    headers = dict(api_schema.config.headers)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,  # the same cases on every run: a failure here is reproducible, never flaky
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=STREAM_SECONDS)

    check()


@pytest.mark.parametrize(
    ("rooms", "role", "status"),
    [
        (["inventory", "pets", "pet:1"], None, 200),
        (["orders"], Role.admin, 200),
        (["orders"], Role.customer, 403),
        (["user:the-admin"], None, 401),
        (["nowhere"], None, 404),
    ],
)
def test_event_streams_conform_to_the_document(
    api_schema: Any, rooms: list[str], role: Role | None, status: int
) -> None:
    """Random room names are rarely real ones: the stream itself, event by event, checked on purpose."""
    operation = find_operation(api_schema, "events")
    headers = {"X-Test-User": f"someone:99:{role.value}"} if role else {}
    response = operation.Case(query={"room": rooms}).call_and_validate(
        headers=headers, checks=CHECKS, timeout=STREAM_SECONDS
    )
    assert response.status_code == status
    if status == 200:
        assert response.text.count("event: subscribed") == len(rooms)


def test_the_admin_header_reaches_every_operation_as_admin(tmp_path: Path) -> None:
    """The run above really is authenticated: without the header, a write is 401; with it, it is not."""
    with TestClient(make_app(f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}", media_dir=tmp_path / "m")) as client:
        harness = ApiHarness(client, tmp_path / "m")
        harness.run(db.create_all, harness.state.engine)
        assert client.get(f"{API}/store/orders").status_code == 401
        admin = harness.user("the-admin", Role.admin)
        assert client.get(f"{API}/store/orders", headers=admin.headers).status_code == 200
