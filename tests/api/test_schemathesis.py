"""Schemathesis against the served ``/api/v3/openapi.json``: for every operation, generated requests
(valid and invalid) never get a 5xx, and every answer is one the document describes: its status,
its content type, its headers and its body's schema.

The server is a real uvicorn with the header auth fake (``tests.fakes``), on a SQLite database
seeded with users, pets and orders. Requests are sent as an admin, who may call every operation.
Random ids rarely hit a row, so stateful scenarios also follow the document's links (create a
pet, then read, change and delete it) to check the success paths.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis.errors import FlakyStrategyDefinition
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode
from schemathesis.checks import (  # type: ignore[attr-defined]
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from petstore import db, realtime
from petstore.api import pets, store, users
from petstore.api.openapi import declared
from petstore.config import Settings
from petstore.models import Role
from tests.fakes import ApiHarness, make_app
from tests.services import UvicornServer

API = "/api/v3"
ROOT = Path(__file__).resolve().parents[2]
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "upgrade", "expect"}
# An event stream never ends by itself: the client keeps what arrived in this time, then hangs up.
STREAM_SECONDS = 2
# A bound for everything else: a list of 100 new users is 100 Argon2 hashes.
REQUEST_SECONDS = 60
MAX_EXAMPLES = 50  # per operation and mode: about a minute in all
STATEFUL_SCENARIOS = 40
STATEFUL_ROUNDS = 50  # a bound: rounds go on only on replay trouble or until every chain below has run
# Operations reached only through a link from a created thing: each group must succeed at least once.
CHAINED = (
    {"getPetById", "updatePetWithForm", "uploadFile", "deletePet"},
    {"getUserByName", "updateUser", "deleteUser"},
)
STATEFUL_SETTINGS = settings(
    max_examples=STATEFUL_SCENARIOS,
    stateful_step_count=6,
    phases=[Phase.generate],  # replaying or shrinking a scenario would not see the same database
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")  # a PNG header is enough


def seed_data(harness: ApiHarness) -> dict[str, str]:
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


async def create_tables(url: str) -> None:
    """Before any app starts, so that its outbox relay never polls a table that is not there yet."""
    engine = db.create_engine(Settings(database_url=url, plugins=(), env="test"))
    try:
        await db.create_all(engine)
    finally:
        await engine.dispose()


@contextlib.contextmanager
def served_schema(tmp: Path) -> Iterator[Any]:
    """The document as Schemathesis loads it from a real uvicorn serving a freshly seeded database."""
    url = f"sqlite+aiosqlite:///{tmp / 'petstore.db'}"
    media = tmp / "media"
    asyncio.run(create_tables(url))
    with TestClient(make_app(url, media_dir=media)) as client:
        headers = seed_data(ApiHarness(client, media))
    env = {
        "PETSTORE_DATABASE_URL": url,
        "PETSTORE_PLUGINS": "tests.fakes",
        "PETSTORE_MEDIA_DIR": str(media),
        "PETSTORE_ENV": "test",
    }
    # A real server (rather than the app in process): one start and one stop, as in production, and
    # Schemathesis' pytest plugin has no in-process lifespan to stop and restart after every test.
    with UvicornServer(env=env, cwd=ROOT) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}{API}/openapi.json")
        schema.config.headers = headers
        yield schema


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    with served_schema(tmp) as schema:
        yield schema


@pytest.fixture
def fresh_schema(tmp_path: Path) -> Iterator[Any]:
    """A database of its own: what the stateful scenarios find must not depend on the tests run before."""
    with served_schema(tmp_path) as schema:
        yield schema


# Invalid requests for every operation that reads something a client can get wrong.
OPERATIONS = declared([*pets.routes(API), *store.routes(API), *users.routes(API), *realtime.routes()])
CASES = [
    (operation_id, mode)
    for operation_id, (_, spec) in sorted(OPERATIONS.items())
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or spec.params or spec.body
]


def timeout(operation_id: str) -> float:
    return STREAM_SECONDS if operation_id == "events" else REQUEST_SECONDS


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
        # Framing headers with junk values are refused by the HTTP server itself (uvicorn's parser,
        # plain text) before the app sees the request: nothing the document could describe.
        assume(not FRAMING & {name.lower() for name in case.headers or {}})
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=timeout(operation_id))

    check()


def test_linked_operations_conform_in_sequence(fresh_schema: Any) -> None:
    """Stateful: chains the document's links (inferred from its schemas) so that created pets, orders and
    users are then read, changed and deleted, the success paths random ids rarely reach."""
    headers = dict(fresh_schema.config.headers)
    statuses: Counter[tuple[str, int]] = Counter()
    scenarios = 0

    class Scenario(fresh_schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers, "timeout": timeout(case.operation.definition.raw["operationId"])}

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            statuses[(case.operation.definition.raw["operationId"], response.status_code)] += 1
            case.validate_response(response, checks=CHECKS, headers=headers)

        def teardown(self) -> None:
            nonlocal scenarios
            scenarios += 1
            super().teardown()

    def succeeded() -> set[str]:
        return {operation_id for (operation_id, status), _ in statuses.items() if status == 200}

    def chains_ran() -> bool:
        # Things were made, then used by their id or name (random ids miss them).
        done = succeeded()
        return {"addPet", "createUser"} <= done and all(done & group for group in CHAINED)

    for round_number in range(STATEFUL_ROUNDS):
        # Every scenario changes the database, so Hypothesis may find that a later one cannot replay the
        # draws of an earlier one and stop the round. That says nothing about the API: as Schemathesis'
        # own runner does, go on with the next round, each with its own fixed seed. Which draws reach a
        # chain's end is luck (some values come from state the tests run before leave behind), so
        # rounds go on, within the bound, until every chain has been followed to a success.
        seeded = seed(round_number)(type(f"Scenario{round_number}", (Scenario,), {}))
        with contextlib.suppress(FlakyStrategyDefinition):
            run_state_machine_as_test(seeded, settings=STATEFUL_SETTINGS)
        if scenarios >= STATEFUL_SCENARIOS and chains_ran():
            break
    assert scenarios >= STATEFUL_SCENARIOS
    assert chains_ran(), sorted(statuses.items())


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
