"""``/api/v3/openapi.json``: a valid OpenAPI 3.1 document of exactly what the server serves."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from starlette.routing import Route
from starlette.testclient import TestClient

from petstore.access import ROLE_SCOPES
from petstore.api.openapi import PERMISSION, build_document, declared
from petstore.app import create_app
from petstore.config import DEFAULT_PLUGINS, Settings
from petstore.operations import Operation
from petstore.plugin import PluginBase, Plugins
from tests.fakes import ApiHarness, running_api

API = "/api/v3"
PETSTORE_OPERATIONS = {  # the 19 of the Petstore document; loginUser / logoutUser belong to the auth plugin
    "addPet", "updatePet", "findPetsByStatus", "findPetsByTags", "getPetById", "updatePetWithForm", "deletePet",
    "uploadFile", "getInventory", "placeOrder", "getOrderById", "deleteOrder", "createUser",
    "createUsersWithListInput", "getUserByName", "updateUser", "deleteUser",
}  # fmt: skip
ANONYMOUS = {
    "findPetsByStatus", "findPetsByTags", "searchPets", "getPetById", "getInventory", "createUser", "events",
}  # fmt: skip


def settings(tmp_path: Path, plugins: tuple[str, ...] = ()) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}",
        plugins=plugins,
        media_dir=tmp_path / "media",
        env="test",
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path))) as client:
        yield client


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def secured(tmp_path: Path) -> dict[str, Any]:
    """The document with the auth plugin, whose hook adds the bearer scheme to the core's operations."""
    with TestClient(create_app(settings(tmp_path, plugins=("plugins.auth",)))) as client:
        body: dict[str, Any] = client.get(f"{API}/openapi.json").json()
    return body


@pytest.fixture
def core_operations(client: TestClient) -> dict[str, tuple[str, Operation]]:
    """operationId -> (path, declaration) of every operation the core routes."""
    return declared(client.app.routes)  # type: ignore[attr-defined]


def operations(document: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """operationId -> (path, method, operation)."""
    found = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            found[operation["operationId"]] = (path, method, operation)
    return found


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema validator for a schema of the document, its ``#/components/...`` refs resolvable."""
    return Draft202012Validator({**schema, "components": document["components"]})


# ------------------------------------------------------------------------------------ the document


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema, or an unresolvable $ref


def test_a_broken_document_is_caught_by_the_validator(document: dict[str, Any]) -> None:
    """The validation above has teeth: a Swagger 2 style body parameter fails it."""
    document["paths"]["/pet/{petId}"]["get"]["parameters"][0]["in"] = "body"
    with pytest.raises(OpenAPIValidationError):
        validate(document)


def test_paths_are_relative_to_the_api_server_url(document: dict[str, Any]) -> None:
    assert document["servers"] == [{"url": "/api/v3"}]
    assert "/pet/{petId}" in document["paths"]
    assert not any(path.startswith(API) for path in document["paths"])


def test_every_api_route_is_documented_with_its_name_as_operation_id(
    client: TestClient, document: dict[str, Any]
) -> None:
    documented = {(path, method): op["operationId"] for op_id, (path, method, op) in operations(document).items()}
    served = {}
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Route) and route.path.startswith(API + "/") and route.name != "openapi":
            for method in (route.methods or set()) - {"HEAD"}:
                served[(route.path.removeprefix(API), method.lower())] = route.name
    assert served == documented
    assert set(served.values()) >= PETSTORE_OPERATIONS


def test_parameters_match_what_the_endpoints_read(document: dict[str, Any]) -> None:
    ops = operations(document)
    status = {p["name"]: p for p in ops["findPetsByStatus"][2]["parameters"]}
    assert status["status"]["in"] == "query" and status["status"]["explode"] is True
    assert resolve(document, status["status"]["schema"]["items"])["enum"] == ["available", "pending", "sold"]
    assert status["limit"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 1000, "default": 100}
    assert status["offset"]["schema"]["minimum"] == 0
    tags = {p["name"]: p for p in ops["findPetsByTags"][2]["parameters"]}
    assert tags["tags"]["schema"]["type"] == "array" and tags["tags"]["explode"] is True
    pet_id = ops["getPetById"][2]["parameters"][0]
    assert pet_id == {
        "name": "petId",
        "in": "path",
        "description": "ID of the pet",
        "required": True,
        "schema": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**63 - 1},
    }
    assert {p["name"] for p in ops["listOrders"][2]["parameters"]} == {"limit", "offset"}


def test_request_bodies_list_the_media_types_each_endpoint_accepts(document: dict[str, Any]) -> None:
    ops = operations(document)

    def media(op: str) -> set[str]:
        return set(ops[op][2]["requestBody"]["content"])

    form_and_json = {"application/json", "application/x-www-form-urlencoded"}
    for op in ("addPet", "updatePet", "placeOrder", "createUser", "updateUser"):
        assert media(op) == form_and_json, op
    assert media("createUsersWithListInput") == {"application/json"}
    assert media("updateOrder") == {"application/json"}
    assert media("updatePetWithForm") == {"application/x-www-form-urlencoded"}
    assert media("uploadFile") == {"application/octet-stream", "multipart/form-data"}
    assert ops["updatePetWithForm"][2]["requestBody"]["required"] is False
    for op in ("getPetById", "deletePet", "getInventory", "getUserByName", "deleteUser", "findPetsByStatus"):
        assert "requestBody" not in ops[op][2], op


def test_components_carry_the_petstore_names_and_the_models_constraints(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert {"Pet", "Category", "Tag", "Order", "User", "ApiResponse", "Error"} <= set(schemas)
    pet = schemas["Pet"]
    assert set(pet["required"]) == {"name", "photoUrls"}
    assert pet["additionalProperties"] is False  # unknown fields are refused
    # No NUL: PostgreSQL cannot store one in text, so the document says so and the API refuses it.
    assert pet["properties"]["name"] == {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00]*$"}
    assert {"$ref": "#/components/schemas/Category"} in pet["properties"]["category"]["anyOf"]
    assert pet["properties"]["tags"]["items"] == {"$ref": "#/components/schemas/Tag"}
    assert schemas["User"]["properties"]["password"]["writeOnly"] is True
    assert schemas["Order"]["properties"]["petId"]["format"] == "int64"
    # Ids stop where a JavaScript number stops being exact (the dashboard's), and stay int64.
    ids = [(name, "id") for name in ("Pet", "Order", "User", "Category", "Tag")] + [("Order", "petId")]
    for name, field in ids:
        schema = schemas[name]["properties"][field]
        schema = next((s for s in schema.get("anyOf", []) if s.get("type") == "integer"), schema)
        assert (schema["format"], schema["minimum"], schema["maximum"]) == ("int64", 0, 9007199254740991), name
    assert schemas["Order"]["properties"]["quantity"]["format"] == "int32"
    assert set(schemas["Error"]["required"]) == {"code", "type", "message"}
    refs = set(re.findall(r"#/components/schemas/(\w+)", json.dumps(document)))
    assert refs <= set(schemas)
    assert not [name for name in schemas if name.endswith("Body")]  # no pydantic class name leaks (PetBody...)


def test_bearer_security_is_declared_and_required_exactly_where_endpoints_require_it(secured: dict[str, Any]) -> None:
    """With the auth plugin: it turns each operation's permission into its bearer scheme and 401s."""
    document = secured
    validate(document)
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token: `Authorization: Bearer <token>`",
    }
    password = document["components"]["securitySchemes"]["oauth2Password"]["flows"]["password"]
    assert password["tokenUrl"] == "/api/v3/auth/token" and password["refreshUrl"] == "/api/v3/auth/refresh"
    core = {op_id: op for op_id, (_, _, op) in operations(document).items() if PERMISSION in op}
    assert set(core) >= PETSTORE_OPERATIONS  # the plugin's own (authToken, loginUser...) are its to describe
    for op_id, op in core.items():
        # The same tokens, also as OAuth2's password flow (Swagger UI's "Authorize" login form).
        if op_id in ANONYMOUS:
            assert op["security"] == [{}, {"bearerAuth": []}, {"oauth2Password": []}], op_id
        else:
            assert op["security"] == [{"bearerAuth": []}, {"oauth2Password": []}], op_id
        assert "401" in op["responses"], op_id
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
    ops = operations(document)
    assert ops["addPet"][2]["responses"]["401"]["description"].startswith("A bearer token is required")
    assert ops["getPetById"][2]["responses"]["401"]["description"].startswith("A bearer token was sent")
    # The core's own reason stays, the token's is added.
    assert ops["events"][2]["responses"]["401"]["description"].startswith("A room that needs a signed-in user")
    assert "bearer token was sent" in ops["events"][2]["responses"]["401"]["description"]


def test_the_core_promises_no_security_scheme_only_the_permission_each_operation_needs(
    document: dict[str, Any], core_operations: dict[str, tuple[str, Operation]]
) -> None:
    """Without an auth plugin nobody can sign in: no bearer scheme, no ``security``. Operations that
    need a permission still document the 401 and 403 that the core's check answers (SPEC §4)."""
    assert "securitySchemes" not in document["components"]
    assert "bearer" not in json.dumps(document).lower()
    for op_id, (_, _, op) in operations(document).items():
        permission = core_operations[op_id][1].permission
        assert "security" not in op, op_id
        assert op[PERMISSION] == permission, op_id
        assert (op_id in ANONYMOUS) == (permission is None), op_id
        if permission is not None:
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"], op_id
            if any(permission not in scopes for scopes in ROLE_SCOPES.values()):
                assert "403" in op["responses"], op_id
        else:
            assert ("401" in op["responses"]) == (op_id == "events"), op_id  # anonymous and a room that needs a user


def test_every_error_response_has_the_json_error_schema(document: dict[str, Any]) -> None:
    for op_id, (_, _, op) in operations(document).items():
        for status, response in op["responses"].items():
            if status == "304":  # a conditional read's: no body
                assert "content" not in response and "ETag" in response["headers"], op_id
            elif status != "200":
                schema = response["content"]["application/json"]["schema"]
                assert 400 <= int(status) < 500 or (op_id, status) == ("events", "503"), (op_id, status)
                assert schema == {"$ref": "#/components/schemas/Error"}, (op_id, status)


def test_documented_statuses_are_the_declared_ones(
    document: dict[str, Any], secured: dict[str, Any], core_operations: dict[str, tuple[str, Operation]]
) -> None:
    """Each operation documents what its declaration says (tests/test_operations.py checks that the
    declaration names every status its handler raises), 200 and the HTTP layer's 431; the auth
    plugin adds its 401 to every one."""
    for op_id, (_, declaration) in core_operations.items():
        declared_statuses = {"200", "431"} | {str(status) for status in declaration.statuses()}
        assert set(operations(document)[op_id][2]["responses"]) == declared_statuses, op_id
        assert set(operations(secured)[op_id][2]["responses"]) == declared_statuses | {"401"}, op_id
    body = core_operations["addPet"][1]
    assert {413, 415, 422} <= set(body.statuses()) and not {413, 415, 422} & set(body.errors)  # derived, not repeated


def test_every_operation_documents_the_header_cap(document: dict[str, Any], tmp_path: Path) -> None:
    """petstore.server.uvicorn_http answers 431 to any request, before an operation runs: a plugin's too."""
    ops = operations(document)
    assert len(ops) >= 19  # the Petstore's operations at least
    for op, (_, _, operation) in ops.items():
        assert operation["responses"]["431"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }, op
    extended = build_document(create_app(settings(tmp_path)).routes, Plugins([DocumentingPlugin("extra")]))
    assert "431" in extended["paths"]["/extra/hello"]["get"]["responses"]


# -------------------------------------------------------------------------------- building it


class DocumentingPlugin(PluginBase):
    """Adds a path of its own, as the auth plugin adds /auth/token; counts how often it is asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def openapi(self, document: dict[str, Any]) -> None:
        self.calls += 1
        document.setdefault("x-edited-by", []).append(self.name)
        document["paths"][f"/{self.name}/hello"] = {
            "get": {"operationId": f"{self.name}Hello", "responses": {"200": {"description": "Hello"}}}
        }


def first_plugin(settings: Settings) -> DocumentingPlugin:
    return DocumentingPlugin("first")


def second_plugin(settings: Settings) -> DocumentingPlugin:
    return DocumentingPlugin("second")


def test_every_plugin_edits_the_document_in_order_once_per_app(tmp_path: Path) -> None:
    names = ("tests.api.test_openapi:first_plugin", "tests.api.test_openapi:second_plugin")
    with TestClient(create_app(settings(tmp_path, plugins=names))) as client:
        documents = [client.get(f"{API}/openapi.json").json() for _ in range(3)]
        plugins = list(client.app_state["petstore"].plugins)
    assert documents[0] == documents[1] == documents[2]
    assert documents[0]["x-edited-by"] == ["first", "second"]
    assert documents[0]["paths"]["/second/hello"]["get"]["operationId"] == "secondHello"
    assert [plugin.calls for plugin in plugins] == [1, 1]  # built once, then served from the app's copy
    validate(documents[0])


def test_two_apps_have_two_documents(tmp_path: Path) -> None:
    """No module-level cache: an app with a plugin does not leak its paths into another app's document."""
    plugin = DocumentingPlugin("documenting")
    app_routes = create_app(settings(tmp_path)).routes
    with_plugin = build_document(app_routes, Plugins([plugin]))
    without = build_document(app_routes, Plugins([]))
    assert "/documenting/hello" in with_plugin["paths"]
    assert "/documenting/hello" not in without["paths"]


def test_an_operation_is_documented_only_where_it_is_routed(tmp_path: Path) -> None:
    app_routes = create_app(settings(tmp_path)).routes
    routes = [r for r in app_routes if getattr(r, "name", None) != "deletePet"]
    document = build_document(routes, Plugins([]))
    assert "deletePet" not in {op["operationId"] for item in document["paths"].values() for op in item.values()}
    assert "delete" not in document["paths"]["/pet/{petId}"]


def test_an_operation_routed_twice_or_outside_the_api_stops_the_build(tmp_path: Path) -> None:
    app_routes = create_app(settings(tmp_path)).routes
    add_pet = declared(app_routes)["addPet"][1]
    with pytest.raises(RuntimeError, match="addPet is routed twice"):
        build_document([*app_routes, add_pet.route(API)], Plugins([]))
    with pytest.raises(RuntimeError, match="addPet is routed outside /api/v3"):
        build_document([add_pet.route("/api/v4")], Plugins([]))


# ------------------------------------------------------- what the server answers matches the document


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[ApiHarness, dict[str, Any]]]:
    with running_api(f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}", tmp_path / "media") as harness:
        yield harness, harness.client.get(f"{API}/openapi.json").json()


def assert_conforms(document: dict[str, Any], op_id: str, response: Any) -> None:
    _, _, op = operations(document)[op_id]
    documented = op["responses"].get(str(response.status_code))
    assert documented is not None, f"{op_id} answered {response.status_code}, not documented: {response.text}"
    schema = documented["content"]["application/json"]["schema"]
    errors = sorted(validator(document, schema).iter_errors(response.json()), key=str)
    assert not errors, f"{op_id} {response.status_code}: {[e.message for e in errors]}"


def test_real_answers_conform_to_the_document(live: tuple[ApiHarness, dict[str, Any]]) -> None:
    api, document = live
    staff, customer = api.staff.headers, api.customer.headers

    def call(op_id: str, method: str, path: str, **kwargs: Any) -> Any:
        response = api.client.request(method, f"{API}{path}", **kwargs)
        assert_conforms(document, op_id, response)
        return response

    pet = call(
        "addPet", "POST", "/pet", json={"name": "Rex", "photoUrls": [], "category": {"name": "D"}}, headers=staff
    )
    pet_id = pet.json()["id"]
    call("getPetById", "GET", f"/pet/{pet_id}")
    call("getPetById", "GET", "/pet/999999")
    call("getPetById", "GET", "/pet/nope")
    call("findPetsByStatus", "GET", "/pet/findByStatus", params={"status": "available"})
    call("findPetsByStatus", "GET", "/pet/findByStatus", params={"status": "lost"})
    call("getInventory", "GET", "/store/inventory")
    nul = call("findPetsByTags", "GET", "/pet/findByTags", params={"tags": "a\x00b"})  # PostgreSQL refuses NUL
    assert nul.status_code == 400
    call("addPet", "POST", "/pet", json={"name": "Rex"}, headers=staff)
    call("addPet", "POST", "/pet", json={"name": "Rex", "photoUrls": []})
    call("addPet", "POST", "/pet", json={"name": "Rex", "photoUrls": []}, headers=customer)
    call("addPet", "POST", "/pet", content=b"{", headers=staff | {"content-type": "application/json"})
    call("addPet", "POST", "/pet", content=b"<pet/>", headers=staff | {"content-type": "application/xml"})
    order = call(
        "placeOrder",
        "POST",
        "/store/order",
        json={"petId": pet_id, "shipDate": "2030-01-02T03:04:05Z"},
        headers=customer,
    )
    call("placeOrder", "POST", "/store/order", json={"petId": pet_id}, headers=customer)
    call("getOrderById", "GET", f"/store/order/{order.json()['id']}", headers=customer)
    call("listOrders", "GET", "/store/orders", headers=staff)
    user = call(
        "createUser", "POST", "/user", json={"username": "zoe", "password": "zoe-pw-4567", "email": "z@example.org"}
    )
    assert "password" not in user.json()
    call("createUser", "POST", "/user", json={"username": "zoe", "password": "zoe-pw-4567"})
    call("deleteOrder", "DELETE", f"/store/order/{order.json()['id']}", headers=customer)
    call("deletePet", "DELETE", f"/pet/{pet_id}", headers=staff)


def test_an_upload_never_makes_a_pet_its_own_schema_refuses(live: tuple[ApiHarness, dict[str, Any]]) -> None:
    """Pet.photoUrls has at most 100 items: at the limit, an upload is a documented 409 and changes nothing."""
    api, document = live
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452")
    photos = [f"/media/{n}.png" for n in range(100)]
    pet = api.client.post(f"{API}/pet", json={"name": "Full", "photoUrls": photos}, headers=api.staff.headers).json()
    before = api.snapshot()
    response = api.client.post(f"{API}/pet/{pet['id']}/uploadImage", content=png, headers=api.staff.headers)
    assert response.status_code == 409
    assert_conforms(document, "uploadFile", response)
    assert api.snapshot() == before
    assert_conforms(document, "getPetById", api.client.get(f"{API}/pet/{pet['id']}"))


def test_with_the_default_plugins_the_document_stays_valid_and_complete(tmp_path: Path) -> None:
    """Their hooks add /auth/token, /user/login, 429s...: still valid 3.1, still every routed operation."""
    app_settings = settings(tmp_path, plugins=DEFAULT_PLUGINS)
    with TestClient(create_app(app_settings)) as client:
        document = client.get(f"{API}/openapi.json").json()
        routes = client.app.routes  # type: ignore[attr-defined]
    validate(document)
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    for route in routes:
        if isinstance(route, Route) and route.path.startswith(API + "/") and route.name != "openapi":
            for method in (route.methods or set()) - {"HEAD"}:
                assert (route.path.removeprefix(API), method.lower()) in documented, route.name
    assert {"/user/login", "/user/logout", "/auth/token"} <= set(document["paths"])
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "429" in document["paths"]["/pet/{petId}"]["get"]["responses"]


def test_links_lead_from_what_is_made_to_what_uses_it(document: dict[str, Any]) -> None:
    ops = operations(document)
    links = ops["addPet"][2]["responses"]["200"]["links"]
    assert links["GetPetById"] == {"operationId": "getPetById", "parameters": {"petId": "$response.body#/id"}}
    assert ops["createUser"][2]["responses"]["200"]["links"]["DeleteUser"]["parameters"] == {
        "username": "$response.body#/username"
    }
    for op_id, (_, _, op) in ops.items():
        for link in op["responses"]["200"].get("links", {}).values():
            target = ops[link["operationId"]][2]
            names = {param["name"] for param in target.get("parameters", [])}
            assert set(link["parameters"]) <= names, (op_id, link)


def test_a_new_user_must_have_a_password(document: dict[str, Any]) -> None:
    body = operations(document)["createUser"][2]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"allOf": [{"$ref": "#/components/schemas/User"}], "required": ["username", "password"]}
    assert "password" not in document["components"]["schemas"]["User"]["required"]  # a change may keep it


class VandalPlugin(PluginBase):
    """Edits deep inside the document, as a careless plugin might."""

    name = "vandal"

    def openapi(self, document: dict[str, Any]) -> None:
        document["paths"]["/pet/{petId}"]["get"]["parameters"][0]["schema"]["maximum"] = 7
        document["tags"].append({"name": "vandal"})


def test_a_plugin_editing_its_document_leaves_other_apps_documents_alone(tmp_path: Path) -> None:
    app_routes = create_app(settings(tmp_path)).routes
    edited = build_document(app_routes, Plugins([VandalPlugin()]))
    clean = build_document(app_routes, Plugins([]))
    assert edited["paths"]["/pet/{petId}"]["get"]["parameters"][0]["schema"]["maximum"] == 7
    assert clean["paths"]["/pet/{petId}"]["get"]["parameters"][0]["schema"]["maximum"] == 2**63 - 1
    assert "vandal" not in {tag["name"] for tag in clean["tags"]}
