"""Schemathesis against the served ``/api/v3/openapi.json``: for every operation, generated requests
(valid and invalid) never get a 5xx, and every answer is one the document describes: its status,
its content type, its headers and its body's schema; with every check Schemathesis has on
(``checks=all``: also that invalid data is refused and valid data accepted, that an operation
needing a token refuses a request without one, unsupported methods, use after delete...).

The server is a real uvicorn with the plugins users run (``plugins.auth``, ``plugins.ratelimit``,
``plugins.metrics``: limits set out of the way), on a SQLite database seeded with users, pets and
orders. Requests carry a real bearer token, of a staff user and of an admin, in two runs. Random
ids rarely hit a row, so stateful scenarios also follow the document's links (create a pet, then
read, change and delete it) to check the success paths.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis.errors import FlakyStrategyDefinition
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as REGISTRY
from schemathesis.checks import ensure_resource_availability, load_all_checks
from schemathesis.config import SchemathesisConfig
from starlette.testclient import TestClient

from petstore import realtime
from petstore.api import pets, store, users
from petstore.api.openapi import declared
from petstore.models import Role
from tests.fakes import DEFAULT_PASSWORD, ApiHarness, make_app
from tests.plugins.harness import SECRET, create_tables
from tests.services import UvicornServer

# Every run talks to a real uvicorn (see the fixtures): out of the in-process fast lane.
pytestmark = pytest.mark.process

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
load_all_checks()
#: Every check Schemathesis has (the CLI's ``--checks all``).
CHECKS = list(REGISTRY.get_all())
#: Who the runs are signed in as: a staff user and an admin, each with a real bearer token.
ROLES = {"staff": "the-staff", "admin": "the-admin"}
#: Operations that end the session of the token they are sent with: each call gets a login of its own.
LOGOUTS = {"authLogout", "logoutUser"}
# Valid requests that are still refused, deliberately, with a documented status that a schema
# cannot express the reason of:
# - loginUser: the Petstore answers a wrong username or password with 400 ("Invalid
#   username/password supplied"), and clients generated from its document rely on that;
# - updatePet: the Petstore's Pet has an optional id, and PUT /pet without one is its 400
#   ("Invalid ID supplied");
# - uploadFile: any bytes fit application/octet-stream; only PNG, JPEG, GIF and WebP are
#   stored (415; no bytes at all, 400), since the media directory serves what it stores;
# - createUser, createUsersWithListInput, updateUser: a password of 8 characters or more (the
#   document says so) can still be one of the common passwords refused with 422, "00000000";
#   and updateUser's body may name an id, which must be the user's own (400 otherwise);
# - searchPets: its cursor is opaque; any string of its alphabet fits the schema, and only one
#   the server wrote (a `next`), for the same sort, is taken (400 otherwise).
CONFIG_TOML = """
[[operations]]
include-operation-id = "loginUser"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "429"]

[[operations]]
include-operation-id = "updatePet"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

[[operations]]
include-operation-id = "uploadFile"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "413", "415", "429"]

[[operations]]
include-operation-id = ["createUser", "createUsersWithListInput"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-operation-id = "searchPets"
checks.positive_data_acceptance.expected-statuses = ["2xx", "304", "400", "429"]

[[operations]]
include-operation-id = "updateUser"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429"]
"""
CONFIG = SchemathesisConfig.from_str(CONFIG_TOML)
# A user that anyone signed up is not a staff user's to read, change or delete: 404 (SPEC: no
# existence leak), so "a created resource is available" holds for these only when run as admin.
NOT_STAFFS = {"getUserByName", "updateUser", "deleteUser"}
#: What would end the run's own token if aimed at its own account (see the stateful test).
OWN_ACCOUNT_CHANGES = {"updateUser", "deleteUser", "setUserRole"}
SPARE_USER = "user1"  # seeded, staff


#: The auth plugin's operations (the core's come from its routing table, below).
AUTH_OPERATIONS = {
    "authToken": True,  # True: it reads a body or parameters, so invalid requests are tried too
    "authRefresh": True,
    "loginUser": True,
    "authLogout": False,
    "logoutUser": False,
    "eventsTicket": False,
}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")  # a PNG header is enough


def seed_data(harness: ApiHarness) -> None:
    """Users of every role, pets of every status with tags and a photo, orders: rows for generated ids to hit."""
    admin = harness.user("the-admin", Role.admin)
    customer = harness.user("the-customer", Role.customer)
    harness.user("the-staff", Role.staff)
    harness.user("user1", Role.staff)
    for number, status in enumerate(["available", "available", "pending", "sold", "available"], start=1):
        body = {"name": f"pet{number}", "photoUrls": [], "status": status, "tags": [{"name": f"tag{number}"}]}
        pet = harness.client.post(f"{API}/pet", json=body, headers=admin.headers).json()
        reply = harness.client.post(f"{API}/pet/{pet['id']}/uploadImage", content=PNG, headers=admin.headers)
        assert reply.status_code == 200, reply.text
    for pet_id, who in ((1, customer), (2, admin)):
        reply = harness.client.post(f"{API}/store/order", json={"petId": pet_id}, headers=who.headers)
        assert reply.status_code == 200, reply.text


async def prepare_tables(url: str) -> None:
    """Before any app starts (so that its outbox relay never polls a table that is not there yet),
    the core's tables and the auth plugin's."""
    from petstore import db
    from petstore.config import Settings

    engine = db.create_engine(Settings(database_url=url, plugins=(), env="test"))
    try:
        await create_tables(engine)
    finally:
        await engine.dispose()


def login(base_url: str, username: str) -> dict[str, str]:
    """A fresh bearer token of this seeded user, as headers."""
    form = {"grant_type": "password", "username": username, "password": DEFAULT_PASSWORD}
    reply = httpx.post(f"{base_url}{API}/auth/token", data=form, timeout=REQUEST_SECONDS)
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


@dataclass(frozen=True)
class Run:
    """A served document as Schemathesis loaded it, the server's URL and who the run is signed in as."""

    schema: Any
    url: str
    role: str

    def headers(self, operation_id: str = "") -> dict[str, str]:
        """The run's token; a logout gets a login of its own, so that it ends no one else's session."""
        if operation_id in LOGOUTS:
            return login(self.url, ROLES[self.role])
        return dict(self.schema.config.headers)


@contextlib.contextmanager
def served_schema(tmp: Path, role: str) -> Iterator[Run]:
    """The document as Schemathesis loads it from a real uvicorn serving a freshly seeded database,
    with the headers of a signed-in ``role`` user in ``schema.config.headers``."""
    url = f"sqlite+aiosqlite:///{tmp / 'petstore.db'}"
    media = tmp / "media"
    asyncio.run(prepare_tables(url))
    with TestClient(make_app(url, media_dir=media)) as client:
        seed_data(ApiHarness(client, media))
    lavish = "1000000/minute"
    env = {
        "PETSTORE_DATABASE_URL": url,
        "PETSTORE_PLUGINS": "plugins.auth,plugins.ratelimit,plugins.metrics",
        "PETSTORE_JWT_SECRET": SECRET,
        "PETSTORE_JWT_ACCESS_TTL_SECONDS": "86400",  # a slow run must not outlive its token
        "PETSTORE_RATE_LIMIT": lavish,
        "PETSTORE_RATELIMIT_LOGIN_PER_USER": lavish,
        "PETSTORE_RATELIMIT_LOGIN_PER_IP": lavish,
        "PETSTORE_MEDIA_DIR": str(media),
        "PETSTORE_ENV": "test",
    }
    # A real server (rather than the app in process): one start and one stop, as in production, and
    # Schemathesis' pytest plugin has no in-process lifespan to stop and restart after every test.
    with UvicornServer(env=env, cwd=ROOT) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}{API}/openapi.json", config=CONFIG)
        schema.config.headers = login(server.url, ROLES[role])
        yield Run(schema, server.url, role)


@pytest.fixture(scope="module", params=sorted(ROLES))
def api_schema(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp(f"schemathesis-{request.param}")
    with served_schema(tmp, request.param) as run:
        yield run


@pytest.fixture(params=sorted(ROLES))
def fresh_schema(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Run]:
    """A database of its own: what the stateful scenarios find must not depend on the tests run before."""
    with served_schema(tmp_path, request.param) as run:
        yield run


# Invalid requests for every operation that reads something a client can get wrong.
OPERATIONS = declared([*pets.routes(API), *store.routes(API), *users.routes(API), *realtime.routes()])
TAKES_INPUT = {op_id: bool(spec.params or spec.body) for op_id, (_, spec) in OPERATIONS.items()} | AUTH_OPERATIONS
CASES = [
    (operation_id, mode)
    for operation_id, takes_input in sorted(TAKES_INPUT.items())
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or takes_input
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
def test_the_api_conforms_to_its_document(api_schema: Run, operation_id: str, mode: GenerationMode) -> None:
    operation = find_operation(api_schema.schema, operation_id)

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
        headers = api_schema.headers(operation_id)
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=timeout(operation_id))

    check()


def test_linked_operations_conform_in_sequence(fresh_schema: Run) -> None:
    """Stateful: chains the document's links (inferred from its schemas) so that created pets, orders and
    users are then read, changed and deleted, the success paths random ids rarely reach."""
    statuses: Counter[tuple[str, int]] = Counter()
    scenarios = 0

    class Scenario(fresh_schema.schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            # listUsers links every account, the run's own included: deleting, renaming or demoting
            # it ends the run's token (by design: a changed account's sessions end), and every
            # later step would be a 401 that says nothing of the API. Another seeded user instead.
            operation_id = case.operation.definition.raw["operationId"]
            own = ROLES[fresh_schema.role]
            if operation_id in OWN_ACCOUNT_CHANGES and (case.path_parameters or {}).get("username") == own:
                case.path_parameters["username"] = SPARE_USER
            super().before_call(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            operation_id = case.operation.definition.raw["operationId"]
            return {"headers": fresh_schema.headers(operation_id), "timeout": timeout(operation_id)}

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            statuses[(case.operation.definition.raw["operationId"], response.status_code)] += 1
            headers = dict(response.request.headers)
            operation_id = case.operation.definition.raw["operationId"]
            excluded = (
                [ensure_resource_availability] if fresh_schema.role == "staff" and operation_id in NOT_STAFFS else []
            )
            case.validate_response(
                response, checks=CHECKS, excluded_checks=excluded, headers=headers, recorder=self.recorder
            )

        def teardown(self) -> None:
            nonlocal scenarios
            scenarios += 1
            super().teardown()

    def succeeded() -> set[str]:
        return {operation_id for (operation_id, status), _ in statuses.items() if status == 200}

    def chains_ran() -> bool:
        # Things were made, then used by their id or name (random ids miss them).
        done = succeeded()
        # A staff user may not read or change users it did not sign in as (404): the pet chain only.
        chains = CHAINED if fresh_schema.role == "admin" else CHAINED[:1]
        return {"addPet", "createUser"} <= done and all(done & group for group in chains)

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
    ("rooms", "who", "status"),
    [
        (["inventory", "pets", "pet:1"], None, 200),
        (["orders"], "the-admin", 200),
        (["orders"], "the-customer", 403),
        (["user:the-admin"], None, 401),
        (["nowhere"], None, 404),
    ],
)
def test_event_streams_conform_to_the_document(api_schema: Run, rooms: list[str], who: str | None, status: int) -> None:
    """Random room names are rarely real ones: the stream itself, event by event, checked on purpose."""
    operation = find_operation(api_schema.schema, "events")
    headers = login(api_schema.url, who) if who else {}
    response = operation.Case(query={"room": rooms}).call_and_validate(
        headers=headers, checks=CHECKS, timeout=STREAM_SECONDS
    )
    assert response.status_code == status
    if status == 200:
        assert response.text.count("event: subscribed") == len(rooms)


def test_the_runs_are_signed_in_and_cover_every_served_operation(api_schema: Run) -> None:
    """The runs above really are authenticated (without the token a staff read is 401; with it, it is
    not), and they try every operation the served document has, the auth plugin's included."""
    base = api_schema.url
    assert httpx.get(f"{base}{API}/store/orders", timeout=REQUEST_SECONDS).status_code == 401
    signed_in = httpx.get(f"{base}{API}/store/orders", headers=api_schema.headers(), timeout=REQUEST_SECONDS)
    assert signed_in.status_code == 200, signed_in.text
    served = {op["operationId"] for item in api_schema.schema.raw_schema["paths"].values() for op in item.values()}
    assert served == set(TAKES_INPUT)
