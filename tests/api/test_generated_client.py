"""A client generated from the canonical Petstore document works unchanged against this server.

``openapi-python-client`` generates a client from ``tests/data/openapi-v3.yaml`` into a temp
directory during the test (no network). The client then does every one of the document's 19
operations against a real uvicorn running the default plugins (JWT auth, rate limits, metrics),
with base URL ``http://127.0.0.1:PORT/api/v3`` and bearer tokens from ``GET /user/login``, the
Petstore's own login operation.

A quirk of the generator, not of the server: where an operation lists JSON and a URL-encoded
form for one schema (``addPet``, ``updatePet``, ``placeOrder``, ``createUser``, ``updateUser``),
the generated code sends the form. A form is flat, so pets made through this client carry no
category or tags (the tagged pet that ``findPetsByTags`` finds is made with plain JSON).
"""

from __future__ import annotations

import contextlib
import importlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.services import PostgresServer, UvicornServer

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process

CANONICAL = Path(__file__).resolve().parent.parent / "data" / "openapi-v3.yaml"  # its origin: tests/data/README.md
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PETSTORE = Path(sys.executable).with_name("petstore")
PACKAGE = "swagger_petstore_open_api_3_0_client"
ADMIN = ("client-admin", "admin-password-1")
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, f"{argv[:3]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The generated package, imported from the temp directory it was generated into."""
    tmp = tmp_path_factory.mktemp("generated-client")
    spec = tmp / "openapi-v3.yaml"
    shutil.copy(CANONICAL, spec)
    config = tmp / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run on the generated code: nothing outside the venv
    run(
        [str(GENERATOR), "generate", "--path", str(spec), "--output-path", str(tmp / "client"), "--config", str(config)]
    )
    import_missing_unset(tmp / "client" / PACKAGE)
    sys.path.insert(0, str(tmp / "client"))
    try:
        yield Client(importlib.import_module(PACKAGE))
    finally:
        sys.path.remove(str(tmp / "client"))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def import_missing_unset(package: Path) -> list[str]:
    """Work around openapi-python-client issue 1451 (open in 0.29): an operation whose required body
    has several media types (``addPet``, ``updatePet``) is annotated ``... | Unset`` without importing
    ``Unset``, so the module fails to import. Add the import the generator forgot; change nothing else."""
    repaired = []
    for module in sorted((package / "api").rglob("*.py")):
        source = module.read_text()
        if re.search(r"\bUnset\b", source) and not re.search(r"^from \.\.\.types import .*\bUnset\b", source, re.M):
            module.write_text(
                source.replace("from ... import errors\n", "from ... import errors\nfrom ...types import Unset\n", 1)
            )
            repaired.append(module.name)
    return repaired


class Client:
    """The generated package's modules by short names: ``client.op("pet.add_pet")``, ``client.model("Pet")``."""

    def __init__(self, package: ModuleType) -> None:
        self.package = package

    def op(self, dotted: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.api.{dotted}")

    def model(self, name: str) -> Any:
        return getattr(importlib.import_module(f"{PACKAGE}.models"), name)

    def anonymous(self, base_url: str, stack: contextlib.ExitStack) -> Any:
        client = self.package.Client(base_url=base_url, raise_on_unexpected_status=True)
        return stack.enter_context(client)  # closes its connections at the end

    def authenticated(self, base_url: str, token: str, stack: contextlib.ExitStack) -> Any:
        client = self.package.AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
        return stack.enter_context(client)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    """The real server with its default plugins, a migrated database (SQLite, then PostgreSQL) and an admin."""
    tmp = tmp_path_factory.mktemp("generated-client-server")
    database_url = f"sqlite+aiosqlite:///{tmp / 'petstore.db'}"
    if request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        if not postgres.running:
            postgres.start()
        database_url = postgres.async_url(postgres.create_database())
    env = {
        "PETSTORE_DATABASE_URL": database_url,
        "PETSTORE_PLUGINS": "plugins.auth,plugins.ratelimit,plugins.metrics",
        "PETSTORE_JWT_SECRET": "generated-client-test-secret-0123456789",
        "PETSTORE_RATE_LIMIT": "10000/minute",
        "PETSTORE_MEDIA_DIR": str(tmp / "media"),
    }
    run([str(PETSTORE), "migrate"], env=env, cwd=tmp)
    run([str(PETSTORE), "users", "create", ADMIN[0], "--password", ADMIN[1], "--role", "admin"], env=env, cwd=tmp)
    with UvicornServer(env=env, cwd=tmp) as server:
        yield server


def ok(response: Any) -> Any:
    """The parsed body of a 200, or a failure showing what the server said."""
    assert response.status_code == 200, f"{response.status_code}: {response.content!r}"
    return response.parsed


def test_every_operation_of_the_canonical_document_works_through_the_generated_client(
    generated: Client, server: UvicornServer
) -> None:
    with contextlib.ExitStack() as stack:
        every_operation(generated, server, stack)


def every_operation(generated: Client, server: UvicornServer, stack: contextlib.ExitStack) -> None:
    base_url = f"{server.url}/api/v3"
    Pet, Order, User = generated.model("Pet"), generated.model("Order"), generated.model("User")
    PetStatus = generated.model("PetStatus")
    anonymous = generated.anonymous(base_url, stack)
    op = generated.op

    # loginUser: the token is the JSON string body, with the Petstore's headers.
    login = op("user.login_user").sync_detailed(client=anonymous, username=ADMIN[0], password=ADMIN[1])
    token = ok(login)
    assert isinstance(token, str) and token.count(".") == 2  # a JWT
    assert int(login.headers["X-Rate-Limit"]) > 0
    assert login.headers["X-Expires-After"]
    admin = generated.authenticated(base_url, token, stack)

    # createUser (anyone may sign up), then the new customer logs in too.
    zoe = ok(
        op("user.create_user").sync_detailed(
            client=anonymous, body=User(username="zoe", password="zoe-password-1", email="zoe@example.org")
        )
    )
    assert (zoe.username, zoe.email) == ("zoe", "zoe@example.org")
    assert not zoe.password  # write-only
    zoe_token = ok(op("user.login_user").sync_detailed(client=anonymous, username="zoe", password="zoe-password-1"))
    customer = generated.authenticated(base_url, zoe_token, stack)

    # createUsersWithListInput (admins), getUserByName, updateUser.
    first = ok(
        op("user.create_users_with_list_input").sync_detailed(
            client=admin,
            body=[User(username="amy", password="amy-password-1"), User(username="bob", password="bob-password-1")],
        )
    )
    assert first.username == "amy"
    assert ok(op("user.get_user_by_name").sync_detailed("bob", client=admin)).username == "bob"
    updated = op("user.update_user").sync_detailed("zoe", client=customer, body=User(username="zoe", phone="555-0100"))
    assert updated.status_code == 200, updated.content
    assert ok(op("user.get_user_by_name").sync_detailed("zoe", client=customer)).phone == "555-0100"

    # addPet, updatePet, getPetById, updatePetWithForm, uploadFile.
    rex = ok(
        op("pet.add_pet").sync_detailed(
            client=admin, body=Pet(name="Rex", photo_urls=["/media/rex.png"], status=PetStatus.AVAILABLE)
        )
    )
    assert isinstance(rex.id, int) and rex.name == "Rex"
    rex = ok(
        op("pet.update_pet").sync_detailed(
            client=admin, body=Pet(id=rex.id, name="Rex II", photo_urls=["/media/rex.png"], status=PetStatus.AVAILABLE)
        )
    )
    assert rex.name == "Rex II"
    assert ok(op("pet.get_pet_by_id").sync_detailed(rex.id, client=anonymous)).name == "Rex II"
    rex = ok(op("pet.update_pet_with_form").sync_detailed(rex.id, client=admin, name="Rex III", status="available"))
    assert (rex.name, rex.status) == ("Rex III", PetStatus.AVAILABLE)
    upload = ok(
        op("pet.upload_file").sync_detailed(
            rex.id, client=admin, body=generated.package.types.File(payload=PNG), additional_metadata="front"
        )
    )
    assert upload.code == 200
    photos = ok(op("pet.get_pet_by_id").sync_detailed(rex.id, client=anonymous)).photo_urls
    assert len(photos) == 2 and photos[1].startswith(f"/media/pets/{rex.id}/")
    assert httpx.get(f"{server.url}{photos[1]}").content == PNG

    # findPetsByStatus, findPetsByTags (a tagged pet needs JSON: see the module docstring), getInventory.
    tagged = httpx.post(
        f"{base_url}/pet",
        json={"name": "Tiddles", "photoUrls": [], "tags": [{"name": "cat"}], "status": "pending"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert tagged.status_code == 200, tagged.text
    FindStatus = generated.model("FindPetsByStatusStatus")
    available = ok(op("pet.find_pets_by_status").sync_detailed(client=anonymous, status=FindStatus.AVAILABLE))
    assert [pet.name for pet in available] == ["Rex III"]
    cats = ok(op("pet.find_pets_by_tags").sync_detailed(client=anonymous, tags=["cat", "dog"]))
    assert [(pet.name, [tag.name for tag in pet.tags]) for pet in cats] == [("Tiddles", ["cat"])]
    inventory = ok(op("store.get_inventory").sync_detailed(client=anonymous))
    assert inventory.additional_properties == {"available": 1, "pending": 1, "sold": 0}

    # placeOrder (the customer), getOrderById, deleteOrder: the pet goes pending, then back.
    order = ok(op("store.place_order").sync_detailed(client=customer, body=Order(pet_id=rex.id, quantity=1)))
    assert (order.pet_id, order.status.value, order.complete) == (rex.id, "placed", False)
    assert ok(op("pet.get_pet_by_id").sync_detailed(rex.id, client=anonymous)).status == PetStatus.PENDING
    assert ok(op("store.get_order_by_id").sync_detailed(order.id, client=customer)).id == order.id
    assert op("store.delete_order").sync_detailed(order.id, client=customer).status_code == 200
    assert ok(op("pet.get_pet_by_id").sync_detailed(rex.id, client=anonymous)).status == PetStatus.AVAILABLE

    # deletePet, deleteUser.
    assert op("pet.delete_pet").sync_detailed(rex.id, client=admin).status_code == 200
    assert op("pet.get_pet_by_id").sync_detailed(rex.id, client=anonymous).status_code == 404
    assert op("user.delete_user").sync_detailed("bob", client=admin).status_code == 200
    assert op("user.get_user_by_name").sync_detailed("bob", client=admin).status_code == 404

    # logoutUser: the token stops working at once.
    assert op("user.logout_user").sync_detailed(client=customer).status_code == 200
    refused = op("user.get_user_by_name").sync_detailed("zoe", client=customer)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
