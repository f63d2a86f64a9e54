"""``GET /api/v3/openapi.json``: the OpenAPI 3.1 document of what this server really serves.

The document is assembled once per app, on its first request, from three sources:

- :data:`OPERATIONS`, one entry per operation, keyed by route name (the Petstore's operationIds):
  what the endpoint reads (parameters, bodies), what it answers (every status it can return)
  and whether it needs a bearer token;
- the app's routing table: each operation's path and method are taken from its route, so the
  document cannot drift from what is routed. An entry without a route stops the build; a route
  of the core under ``/api/v3`` without an entry fails ``tests/api/test_openapi.py``;
- the JSON Schemas pydantic generates from the API classes of :mod:`petstore.models`, under the
  Petstore's component names (``Pet``, ``Category``, ``Tag``, ``Order``, ``User``, ``ApiResponse``).

Then every plugin's ``openapi(document)`` hook edits it in place: the auth plugin adds
``/auth/*``, ``/user/login`` and ``/user/logout``, others add their own routes or statuses.
Paths are relative to the server URL ``/api/v3``, as in the Petstore document.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from petstore import __version__
from petstore.api.inputs import MAX_LIMIT
from petstore.models import (
    INT32_MAX,
    INT64_MAX,
    MAX_ID,
    ApiResponse,
    CategoryBody,
    OrderBody,
    OrderPatch,
    PetBody,
    PetStatus,
    TagBody,
    UserBody,
)
from petstore.plugin import Plugins

API = "/api/v3"
DOCUMENT_PATH = f"{API}/openapi.json"
OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "bearerAuth"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


#: API class -> component name. The Petstore's names where it has the noun; the generated
#: ``$defs`` (e.g. ``CategoryBody`` inside ``PetBody``) are renamed the same way.
MODELS: Mapping[str, type[BaseModel]] = {
    "Pet": PetBody,
    "Category": CategoryBody,
    "Tag": TagBody,
    "Order": OrderBody,
    "OrderPatch": OrderPatch,
    "User": UserBody,
    "ApiResponse": ApiResponse,
}

ERROR_SCHEMA: Schema = {
    "type": "object",
    "description": "Every error: the HTTP status, a short machine-readable type and a human message.",
    "required": ["code", "type", "message"],
    "properties": {
        "code": {"type": "integer", "format": "int32", "minimum": 400, "maximum": 599},
        "type": {"type": "string", "examples": ["not_found"]},
        "message": {"type": "string"},
    },
}

INVENTORY_SCHEMA: Schema = {
    "type": "object",
    "description": "How many pets have each status; every status is present (0 where none).",
    "required": [status.value for status in PetStatus],
    "properties": {status.value: {"type": "integer", "format": "int32", "minimum": 0} for status in PetStatus},
    "additionalProperties": False,
}

SSE_SCHEMA: Schema = {
    "type": "object",
    "description": "One event of a text/event-stream: its fields as the stream carries them.",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "description": "`<room>:<epoch>:<offset>`, for `Last-Event-ID`"},
        "event": {"type": "string", "description": "`subscribed`, or the event's name (`pet.created`, ...)"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "The `subscribed` or `event` message of SPEC §3, as JSON",
        },
        "retry": {"type": "integer", "minimum": 0},
    },
}

# A URL-encoded form is flat: the Pet fields a form can carry (a list repeats its key).
PET_FORM_FIELDS = ("id", "name", "photoUrls", "status")


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    schema: Schema
    description: str
    required: bool = False

    def render(self) -> Schema:
        param: Schema = {
            "name": self.name,
            "in": self.where,
            "description": self.description,
            "required": self.where == "path" or self.required,
            "schema": self.schema,
        }
        if self.schema.get("type") == "array":
            param |= {"style": "form", "explode": True}
        return param


@dataclass(frozen=True)
class Operation:
    """One operation: its documentation, what it reads and every status it answers."""

    tag: str
    summary: str
    #: Schema of the 200 body (JSON unless ``ok_media`` says otherwise).
    ok: Schema
    #: Status -> when it happens. 401 is added for operations with ``auth="required"``.
    errors: Mapping[int, str]
    description: str = ""
    params: Sequence[Param] = ()
    #: Media type -> schema of the request body, if any.
    body: Mapping[str, Schema] = field(default_factory=dict)
    body_required: bool = True
    body_description: str = ""
    #: ``required``: a bearer token is needed. ``optional``: anyone, but a token sent is checked.
    auth: Literal["required", "optional"] = "required"
    ok_media: str = "application/json"
    ok_description: str = "Successful operation"
    #: Operations that take something of the 200 body: operationId -> {parameter: runtime expression}.
    links: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def _id_param(name: str, what: str) -> Param:
    # Every int64: rows from before ids stopped at MAX_ID are still found by theirs (petstore.api.inputs.path_id).
    return Param(name, "path", {"type": "integer", "format": "int64", "minimum": 0, "maximum": INT64_MAX}, what)


PET_ID = _id_param("petId", "ID of the pet")
ORDER_ID = _id_param("orderId", "ID of the order")
USERNAME = Param("username", "path", {"type": "string", "pattern": "^[A-Za-z0-9_.@+-]{1,64}$"}, "The user's name")
BAD_USERNAME = "Invalid username supplied: not a name an account can have"
PAGE = (
    Param(
        "limit",
        "query",
        {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT, "default": 100},
        "At most this many results",
    ),
    Param(
        "offset", "query", {"type": "integer", "minimum": 0, "maximum": INT64_MAX, "default": 0}, "Skip this many first"
    ),
)

BAD_BODY = "Malformed body: not JSON (or not a form where one is accepted), or a bad Content-Length"
TOO_LARGE = "Body larger than the server accepts"
BAD_MEDIA = "Content-Type not accepted"
INVALID = "The body does not match the schema (wrong types, unknown fields, values out of range)"
BAD_PET_ID = "Invalid ID supplied: not an integer, or out of range"
FORBIDDEN_PETS = "Only staff and admins change pets"

# A new account needs a password; a changed one keeps its password when none is sent.
NEW_USER: Schema = {"allOf": [ref("User")], "required": ["username", "password"]}
PET_LINKS = {
    op: {"petId": "$response.body#/id"} for op in ("getPetById", "updatePetWithForm", "uploadFile", "deletePet")
}
ORDER_LINKS = {op: {"orderId": "$response.body#/id"} for op in ("getOrderById", "updateOrder", "deleteOrder")}
USER_LINKS = {op: {"username": "$response.body#/username"} for op in ("getUserByName", "updateUser", "deleteUser")}

JSON_PET = {"application/json": ref("Pet"), "application/x-www-form-urlencoded": ref("PetForm")}
PETS = {"type": "array", "items": ref("Pet")}

OPERATIONS: Mapping[str, Operation] = {
    # --- pet
    "addPet": Operation(
        "pet",
        "Add a new pet to the store.",
        ref("Pet"),
        {
            400: BAD_BODY,
            403: FORBIDDEN_PETS,
            409: "A pet with this id exists",
            413: TOO_LARGE,
            415: BAD_MEDIA,
            422: INVALID,
        },
        "Staff and admins. Without an id, the server assigns one.",
        body=JSON_PET,
        body_description="Create a new pet in the store",
        links=PET_LINKS,
    ),
    "updatePet": Operation(
        "pet",
        "Update an existing pet.",
        ref("Pet"),
        {
            400: BAD_BODY + "; or the pet's id is missing",
            403: FORBIDDEN_PETS,
            404: "Pet not found",
            413: TOO_LARGE,
            415: BAD_MEDIA,
            422: INVALID,
        },
        "Update an existing pet by id (staff and admins).",
        body=JSON_PET,
        body_description="The pet, with its id",
        links=PET_LINKS,
    ),
    "findPetsByStatus": Operation(
        "pet",
        "Finds Pets by status.",
        PETS,
        {400: "Invalid status value, limit or offset"},
        "`status=a,b` and `status=a&status=b` alike; `available` when absent. Ordered by id.",
        params=(
            Param(
                "status",
                "query",
                {"type": "array", "items": ref("PetStatus"), "default": ["available"]},
                "Status values to consider",
            ),
            *PAGE,
        ),
        auth="optional",
    ),
    "findPetsByTags": Operation(
        "pet",
        "Finds Pets by tags.",
        PETS,
        {400: "No tag given, a tag longer than 255 characters, or an invalid limit or offset"},
        "Pets with any of the tags: `tags=a,b` and `tags=a&tags=b` alike. Ordered by id.",
        params=(
            Param(
                "tags",
                "query",
                {"type": "array", "items": {"type": "string", "maxLength": 255}, "minItems": 1},
                "Tag names to filter by",
                required=True,
            ),
            *PAGE,
        ),
        auth="optional",
    ),
    "getPetById": Operation(
        "pet",
        "Find pet by ID.",
        ref("Pet"),
        {400: BAD_PET_ID, 404: "Pet not found"},
        params=(PET_ID,),
        auth="optional",
    ),
    "updatePetWithForm": Operation(
        "pet",
        "Updates a pet in the store with form data.",
        ref("Pet"),
        {
            400: BAD_PET_ID + "; invalid status value; or a form body that is not UTF-8",
            403: FORBIDDEN_PETS,
            404: "Pet not found",
            413: TOO_LARGE,
            422: "Invalid name",
        },
        "`name` and `status` from the query string or a form body (the form wins). Staff and admins.",
        params=(
            PET_ID,
            Param("name", "query", {"type": "string", "minLength": 1, "maxLength": 255}, "New name of the pet"),
            Param("status", "query", ref("PetStatus"), "New status of the pet"),
        ),
        body={
            "application/x-www-form-urlencoded": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 255},
                    "status": ref("PetStatus"),
                },
            }
        },
        body_required=False,
    ),
    "deletePet": Operation(
        "pet",
        "Deletes a pet.",
        ref("ApiResponse"),
        {400: BAD_PET_ID, 403: FORBIDDEN_PETS, 404: "Pet not found"},
        "Staff and admins.",
        params=(PET_ID,),
    ),
    "uploadFile": Operation(
        "pet",
        "Uploads an image.",
        ref("ApiResponse"),
        {
            400: BAD_PET_ID + "; no file uploaded; or a malformed multipart body",
            403: FORBIDDEN_PETS,
            404: "Pet not found",
            409: "The pet already has as many photos as a pet may have",
            413: "Image larger than the server accepts",
            415: "Not a PNG, JPEG, GIF or WebP image, or a Content-Type not accepted",
        },
        "Stores a PNG, JPEG, GIF or WebP image, sent as the body or as the file of a multipart form, "
        "and appends its URL to the pet's `photoUrls`. Staff and admins.",
        params=(PET_ID, Param("additionalMetadata", "query", {"type": "string"}, "Additional metadata")),
        body={
            "application/octet-stream": {"type": "string", "format": "binary"},
            "multipart/form-data": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            },
        },
    ),
    # --- store
    "getInventory": Operation(
        "store",
        "Returns pet inventories by status.",
        ref("Inventory"),
        {},
        "Counts pets by status.",
        auth="optional",
    ),
    "placeOrder": Operation(
        "store",
        "Place an order for a pet.",
        ref("Order"),
        {
            400: BAD_BODY,
            403: "Only staff may place an order as delivered",
            404: "Pet not found",
            409: "The pet is not available, or (staff) an order with this id exists",
            413: TOO_LARGE,
            415: BAD_MEDIA,
            422: INVALID,
        },
        "The pet must be `available`; it becomes `pending` (`sold` for an order placed as delivered). "
        "The server picks the id of a customer's order (an `id` sent is ignored); staff may choose it.",
        body={"application/json": ref("Order"), "application/x-www-form-urlencoded": ref("Order")},
        links=ORDER_LINKS,
    ),
    "listOrders": Operation(
        "store",
        "Lists orders, newest first.",
        {"type": "array", "items": ref("Order")},
        {400: "Invalid limit or offset"},
        "Your own orders; every order for staff and admins. (Not in the Petstore document.)",
        params=PAGE,
    ),
    "getOrderById": Operation(
        "store",
        "Find purchase order by ID.",
        ref("Order"),
        {400: "Invalid ID supplied", 404: "Order not found (or not yours)"},
        params=(ORDER_ID,),
    ),
    "updateOrder": Operation(
        "store",
        "Change an order's status.",
        ref("Order"),
        {
            400: BAD_BODY + "; or an invalid ID",
            403: "Only staff and admins change orders",
            404: "Order not found",
            409: "A delivered order cannot go back",
            413: TOO_LARGE,
            415: BAD_MEDIA,
            422: INVALID,
        },
        "Staff and admins; `delivered` makes the pet `sold`. (Not in the Petstore document.)",
        params=(ORDER_ID,),
        body={"application/json": ref("OrderPatch")},
    ),
    "deleteOrder": Operation(
        "store",
        "Delete purchase order by identifier.",
        ref("ApiResponse"),
        {400: "Invalid ID supplied", 404: "Order not found (or not yours)"},
        "An order not yet delivered gives its pet back (`available`).",
        params=(ORDER_ID,),
    ),
    # --- user
    "createUser": Operation(
        "user",
        "Create user.",
        ref("User"),
        {400: BAD_BODY, 409: "The username or id is taken", 413: TOO_LARGE, 415: BAD_MEDIA, 422: INVALID},
        "Anyone may sign up, as a customer. A password is required.",
        body={"application/json": NEW_USER, "application/x-www-form-urlencoded": NEW_USER},
        body_description="Created user object",
        auth="optional",
        links=USER_LINKS,
    ),
    "createUsersWithListInput": Operation(
        "user",
        "Creates list of users with given input array.",
        ref("User"),
        {
            400: BAD_BODY + "; or not a non-empty array of at most 100 users",
            403: "Only admins",
            409: "A username or id is taken, or named twice",
            413: TOO_LARGE,
            415: BAD_MEDIA,
            422: INVALID,
        },
        "Admins. Answers with the first user created.",
        body={"application/json": {"type": "array", "items": NEW_USER, "minItems": 1, "maxItems": 100}},
        links=USER_LINKS,
    ),
    "getUserByName": Operation(
        "user",
        "Get user by user name.",
        ref("User"),
        {400: BAD_USERNAME, 404: "User not found (or not you)"},
        "Your own account; any account for admins.",
        params=(USERNAME,),
    ),
    "updateUser": Operation(
        "user",
        "Update user resource.",
        ref("User"),
        {
            400: BAD_BODY + "; the id would change; or an invalid username",
            404: "User not found (or not you)",
            409: "The new username is taken",
            413: TOO_LARGE,
            415: BAD_MEDIA,
            422: INVALID,
        },
        "Your own account; any account for admins.",
        params=(USERNAME,),
        body={"application/json": ref("User"), "application/x-www-form-urlencoded": ref("User")},
        body_description="The user's new details",
    ),
    "deleteUser": Operation(
        "user",
        "Delete user resource.",
        ref("ApiResponse"),
        {400: BAD_USERNAME, 404: "User not found (or not you)"},
        "Your own account; any account for admins.",
        params=(USERNAME,),
    ),
    # --- real time (not in the Petstore document)
    "events": Operation(
        "events",
        "Stream rooms' events as Server-Sent Events.",
        ref("ServerSentEvent"),
        {
            400: "No room named, too many rooms, or a malformed `since` / `Last-Event-ID`",
            403: "Your role may not subscribe to one of the rooms",
            404: "No such room",
            503: "Events are unavailable right now (the broker is down); retry shortly",
        },
        "Each room first sends `event: subscribed` (its position and snapshot), then every event as "
        "`id: <room>:<epoch>:<offset>`, `event: <name>`, `data: <the event message>`. A reconnect with "
        "`Last-Event-ID`, or `since` once per room, recovers what was missed. `orders` needs staff; "
        "`user:{username}` that user or an admin (401 without a token).",
        params=(
            Param(
                "room",
                "query",
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "Rooms: `inventory`, `pets`, `pet:{id}`, `orders`, `user:{username}`",
                required=True,
            ),
            Param(
                "since",
                "query",
                {"type": "array", "items": {"type": "string", "pattern": "^.+:.+:[0-9]+$"}},
                "`<room>:<epoch>:<offset>` of the last event seen, once per room",
            ),
            Param(
                "Last-Event-ID",
                "header",
                {"type": "string", "pattern": "^.+:.+:[0-9]+$"},
                "Sent by a reconnecting EventSource: the id of the last event it saw",
            ),
        ),
        auth="optional",
        ok_media="text/event-stream",
        ok_description="The event stream, until the client goes away",
    ),
}

TAGS = [
    {"name": "pet", "description": "Everything about your Pets"},
    {"name": "store", "description": "Access to Petstore orders"},
    {"name": "user", "description": "Operations about user"},
    {"name": "events", "description": "Live events of the rooms (SPEC §3); WebSocket clients use /ws"},
]

DESCRIPTION = """\
The Swagger Petstore v3 operations, as this server serves them: JSON bodies (and URL-encoded forms
where the Petstore lists them), errors as JSON `{"code", "type", "message"}`, `limit` and `offset`
on lists, write-only passwords, and orders that move their pet through `pending` and `sold`.
Writes need a bearer token (`Authorization: Bearer …`); roles decide who may do what."""


# --- schemas ------------------------------------------------------------------------------------


def _tidy(node: Any, renames: Mapping[str, str]) -> Any:
    """Petstore names in ``$ref``, no per-field titles ("Photourls"), and OpenAPI's integer formats."""
    if isinstance(node, list):
        return [_tidy(item, renames) for item in node]
    if not isinstance(node, dict):
        return node
    tidy: Schema = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key == "properties":
            tidy[key] = {name: _tidy(sub, renames) for name, sub in value.items()}
        elif key == "$ref":
            prefix, _, name = value.rpartition("/")
            tidy[key] = f"{prefix}/{renames.get(name, name)}"
        else:
            tidy[key] = _tidy(value, renames)
    if tidy.get("type") == "integer" and "format" not in tidy:
        # Ids are int64 in the Petstore document; ours stop at MAX_ID, where JavaScript stops.
        if tidy.get("maximum") in (INT64_MAX, MAX_ID):
            tidy["format"] = "int64"
        elif tidy.get("maximum") == INT32_MAX:
            tidy["format"] = "int32"
    return tidy


def component_schemas() -> dict[str, Schema]:
    """The JSON Schemas of the API classes, generated by pydantic, under the Petstore's names."""
    renames = {model.__name__: name for name, model in MODELS.items()}
    generated: dict[str, Schema] = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            generated[renames.get(def_name, def_name)] = definition
        generated[name] = schema
    schemas = {name: _tidy(schema, renames) | {"title": name} for name, schema in sorted(generated.items())}
    # Sent, never returned (SPEC §2).
    schemas["User"]["properties"]["password"]["writeOnly"] = True
    pet = schemas["Pet"]
    schemas["PetForm"] = {
        "title": "PetForm",
        "type": "object",
        "description": "A Pet as a URL-encoded form: its flat fields; `photoUrls` repeats its key.",
        "required": [name for name in pet["required"] if name in PET_FORM_FIELDS],
        "properties": {name: pet["properties"][name] for name in PET_FORM_FIELDS},
        "additionalProperties": False,
    }
    schemas["Inventory"] = INVENTORY_SCHEMA | {"title": "Inventory"}
    schemas["Error"] = ERROR_SCHEMA | {"title": "Error"}
    schemas["ServerSentEvent"] = SSE_SCHEMA | {"title": "ServerSentEvent"}
    return schemas


# --- the document -------------------------------------------------------------------------------


HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
HEADERS_TOO_LARGE = "The request line and headers are larger than the server reads (`PETSTORE_MAX_HEADER_BYTES`)"


def _error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def _operation(operation_id: str, spec: Operation) -> Schema:
    responses: dict[str, Schema] = {
        "200": {"description": spec.ok_description, "content": {spec.ok_media: {"schema": spec.ok}}}
    }
    errors = dict(spec.errors)
    errors[401] = (
        "A bearer token is required: it is missing, malformed, expired or revoked"
        if spec.auth == "required"
        else "A bearer token was sent and is not valid (malformed, expired or revoked)"
    )
    for status in sorted(errors):
        responses[str(status)] = _error(errors[status])
    if "503" in responses:
        responses["503"]["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    responses["401"]["headers"] = {
        "WWW-Authenticate": {"description": "The scheme to authenticate with", "schema": {"type": "string"}}
    }
    if spec.links:
        responses["200"]["links"] = {
            target[0].upper() + target[1:]: {"operationId": target, "parameters": dict(parameters)}
            for target, parameters in spec.links.items()
        }
    rendered: Schema = {
        "tags": [spec.tag],
        "summary": spec.summary,
        "operationId": operation_id,
    }
    if spec.description:
        rendered["description"] = spec.description
    if spec.params:
        rendered["parameters"] = [param.render() for param in spec.params]
    if spec.body:
        body: Schema = {
            "required": spec.body_required,
            "content": {media: {"schema": schema} for media, schema in spec.body.items()},
        }
        if spec.body_description:
            body["description"] = spec.body_description
        rendered["requestBody"] = body
    rendered["responses"] = responses
    # An empty requirement makes the token optional; one sent is still checked.
    rendered["security"] = [{SECURITY_SCHEME: []}] if spec.auth == "required" else [{}, {SECURITY_SCHEME: []}]
    return rendered


def _documented_routes(routes: Iterable[BaseRoute]) -> list[tuple[str, str, str]]:
    """(operationId, path relative to the server URL, method) for every route of the table."""
    found = []
    for route in routes:
        if isinstance(route, Route) and route.name in OPERATIONS:
            if not route.path.startswith(API + "/"):
                raise RuntimeError(f"operation {route.name} is routed outside {API}: {route.path}")
            methods = sorted((route.methods or set()) - {"HEAD"})
            if len(methods) != 1:
                raise RuntimeError(f"operation {route.name} must have exactly one method, has {methods}")
            found.append((route.name, route.path.removeprefix(API), methods[0].lower()))
    missing = set(OPERATIONS) - {operation_id for operation_id, _, _ in found}
    if missing:
        raise RuntimeError(f"operations documented but not routed: {', '.join(sorted(missing))}")
    return found


def build_document(routes: Iterable[BaseRoute], plugins: Plugins) -> dict[str, Any]:
    """The document for an app with these routes and plugins (each plugin edits it in turn)."""
    paths: dict[str, Schema] = {}
    for operation_id, path, method in _documented_routes(routes):
        paths.setdefault(path, {})[method] = _operation(operation_id, OPERATIONS[operation_id])
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Petstore",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "Apache 2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": API}],
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token: `Authorization: Bearer <token>`",
                }
            },
        },
    }
    # The table's schemas are shared constants: plugins edit a copy of their own.
    document = copy.deepcopy(document)
    for plugin in plugins:
        plugin.openapi(document)
    # Any request, a plugin's too: a request line and headers past PETSTORE_MAX_HEADER_BYTES are
    # refused by the HTTP layer itself (petstore.server.uvicorn_http) before any operation runs.
    for item in document["paths"].values():
        for method, operation in item.items():
            if method in HTTP_METHODS and isinstance(operation, dict):
                operation.setdefault("responses", {}).setdefault("431", _error(HEADERS_TOO_LARGE))
    return document


class OpenApiEndpoint:
    """Serves one app's document, built on its first request from that app's own routes."""

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        self.document: dict[str, Any] | None = None

    async def serve(self, request: Request) -> Response:
        if self.document is None:
            self.document = build_document(request.app.routes, self.plugins)
        return JSONResponse(self.document)


def routes(plugins: Plugins) -> list[BaseRoute]:
    return [Route(DOCUMENT_PATH, OpenApiEndpoint(plugins).serve, methods=["GET"], name="openapi")]
