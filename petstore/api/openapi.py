"""``GET /api/v3/openapi.json``: the OpenAPI 3.1 document of what this server really serves.

The document is assembled once per app, on its first request, from two sources:

- the app's routing table: each route of a declared operation (:class:`~petstore.operations.OperationRoute`,
  declared beside its handler) gives its path, its method and everything it says of itself
  (parameters, body, every status it answers, the permission it needs), so the document cannot
  drift from what is routed and checked;
- the JSON Schemas pydantic generates from the API classes of :mod:`petstore.models`, under the
  Petstore's component names (``Pet``, ``Category``, ``Tag``, ``Order``, ``User``, ``ApiResponse``).

The core authenticates no one, so it names no security scheme: each operation's
``x-petstore-permission`` is the scope it needs (:mod:`petstore.access`), or null when anyone may
call it, and the operations that need one document the 401 and 403 the core answers. Then every
plugin's ``openapi(document)`` hook edits it in place: the auth plugin turns the permissions into
its bearer scheme's ``security`` and 401s and adds ``/auth/*``, ``/user/login`` and
``/user/logout``; others add their own routes or statuses. Paths are relative to the server URL
``/api/v3``, as in the Petstore document.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from petstore import __version__
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
from petstore.operations import FORM, IF_NONE_MATCH, Operation, OperationRoute, Param, Schema, ref
from petstore.passwords import MIN_LENGTH as PASSWORD_MIN_LENGTH
from petstore.plugin import Plugins

API = "/api/v3"
DOCUMENT_PATH = f"{API}/openapi.json"
OPENAPI_VERSION = "3.1.0"
#: The scope an operation needs (:mod:`petstore.access`), or null: read by auth plugins.
PERMISSION = "x-petstore-permission"

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

PET_PAGE_SCHEMA: Schema = {
    "type": "object",
    "description": "A page of `searchPets`: its pets, the cursor of the next page, and how many match.",
    "required": ["items", "next", "total", "total_exact"],
    "properties": {
        "items": {"type": "array", "items": ref("Pet"), "maxItems": 1000},
        "next": {
            "type": ["string", "null"],
            "description": "The `cursor` of the next page (also in the `Link` header); null on the last page",
        },
        "total": {
            "type": "integer",
            "minimum": 0,
            "description": "How many pets match the filters (all pages); an estimate when `total_exact` is false",
        },
        "total_exact": {
            "type": "boolean",
            "description": "Whether `total` is counted (up to 10,000 matches) or estimated (beyond)",
        },
    },
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

TAGS = [
    {"name": "pet", "description": "Everything about your Pets"},
    {"name": "store", "description": "Access to Petstore orders"},
    {"name": "user", "description": "Operations about user"},
    {"name": "events", "description": "Live events of the rooms (SPEC §3); WebSocket clients use /ws"},
]

DESCRIPTION = f"""\
The Swagger Petstore v3 operations, as this server serves them: JSON bodies (and URL-encoded forms
where the Petstore lists them), errors as JSON `{{"code", "type", "message"}}`, `limit` and `offset`
on lists, write-only passwords, and orders that move their pet through `pending` and `sold`.
Writes need a signed-in user; roles decide who may do what (each operation's `{PERMISSION}`
names the scope it needs, null when anyone may call it)."""

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
HEADERS_TOO_LARGE = "The request line and headers are larger than the server reads (`PETSTORE_MAX_HEADER_BYTES`)"


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


def _form_schema(schema: Schema) -> Schema:
    """``schema`` as a URL-encoded form can carry it: no ``null`` (a form has no way to say it)."""
    form = dict(schema)
    properties: Schema = {}
    for name, prop in schema.get("properties", {}).items():
        branches = [branch for branch in prop.get("anyOf", []) if branch.get("type") != "null"]
        if len(branches) == 1:
            prop = {key: value for key, value in prop.items() if key not in ("anyOf", "default")} | branches[0]
        properties[name] = prop
    form["properties"] = properties
    return form


#: Request bodies whose form variant differs from their JSON schema (forms cannot carry null).
FORM_VARIANTS = {"#/components/schemas/Order": "OrderForm", "#/components/schemas/User": "UserForm"}


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
    # The password rule (petstore.passwords), as far as a schema can say it.
    for branch in schemas["User"]["properties"]["password"].get("anyOf", []):
        if branch.get("type") == "string":
            branch["minLength"] = max(branch.get("minLength", 0), PASSWORD_MIN_LENGTH)
    schemas["OrderForm"] = _form_schema(schemas["Order"]) | {"title": "OrderForm"}
    schemas["UserForm"] = _form_schema(schemas["User"]) | {"title": "UserForm"}
    pet = schemas["Pet"]
    schemas["PetForm"] = {
        "title": "PetForm",
        "type": "object",
        "description": "A Pet as a URL-encoded form: its flat fields; `photoUrls` repeats its key.",
        "required": [name for name in pet["required"] if name in PET_FORM_FIELDS],
        "properties": {name: pet["properties"][name] for name in PET_FORM_FIELDS},
        "additionalProperties": False,
    }
    # A form has no way to send an empty list: a required one has at least one item there.
    schemas["PetForm"]["properties"]["photoUrls"] = pet["properties"]["photoUrls"] | {"minItems": 1}
    schemas["PetForm"] = _form_schema(schemas["PetForm"])
    schemas["Inventory"] = INVENTORY_SCHEMA | {"title": "Inventory"}
    schemas["PetPage"] = PET_PAGE_SCHEMA | {"title": "PetPage"}
    schemas["Error"] = ERROR_SCHEMA | {"title": "Error"}
    schemas["ServerSentEvent"] = SSE_SCHEMA | {"title": "ServerSentEvent"}
    return schemas


# --- operations ---------------------------------------------------------------------------------


def _error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def _param(param: Param) -> Schema:
    rendered: Schema = {
        "name": param.name,
        "in": param.where,
        "description": param.description,
        "required": param.where == "path" or param.required,
        "schema": param.schema,
    }
    if param.schema.get("type") == "array":
        rendered |= {"style": "form", "explode": True}
    return rendered


def _for_media(media: str, schema: Any) -> Any:
    """A form body's schema refers to the form variants (``allOf`` and the like included)."""
    if media != FORM or not isinstance(schema, dict):
        return schema
    variant = FORM_VARIANTS.get(schema.get("$ref", ""))
    if variant:
        return ref(variant)
    return {
        key: [_for_media(media, item) for item in value] if isinstance(value, list) else value
        for key, value in schema.items()
    }


def render(op: Operation) -> Schema:
    """One operation of the document, as its declaration says it."""
    ok: Schema = {"description": op.ok_description, "content": {op.ok_media: {"schema": op.ok}}}
    if op.links:
        ok["links"] = {
            target[0].upper() + target[1:]: {"operationId": target, "parameters": dict(parameters)}
            for target, parameters in op.links.items()
        }
    responses = {"200": ok} | {str(status): _error(when) for status, when in op.statuses().items()}
    if op.etag:  # petstore.api.caching.conditional
        etag = {"ETag": {"description": "A weak tag of this JSON body", "schema": {"type": "string"}}}
        ok["headers"] = etag
        responses["304"] = {"description": responses["304"]["description"], "headers": etag}
    if op.ok_headers:
        ok["headers"] = {**ok.get("headers", {}), **op.ok_headers}
    if "401" in responses:  # petstore.errors.Unauthorized
        responses["401"]["headers"] = {
            "WWW-Authenticate": {"description": "The scheme to authenticate with", "schema": {"type": "string"}}
        }
    if "503" in responses:
        responses["503"]["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    rendered: Schema = {"tags": [op.tag], "summary": op.summary, "operationId": op.operation_id}
    if op.description:
        rendered["description"] = op.description
    params = (*op.params, IF_NONE_MATCH) if op.etag else op.params
    if params:
        rendered["parameters"] = [_param(param) for param in params]
    if op.body is not None:
        body: Schema = {
            "required": op.body.required,
            "content": {media: {"schema": _for_media(media, schema)} for media, schema in op.body.content.items()},
        }
        if op.body.description:
            body["description"] = op.body.description
        rendered["requestBody"] = body
    rendered["responses"] = responses
    rendered[PERMISSION] = op.permission
    return rendered


def declared(routes: Iterable[BaseRoute]) -> dict[str, tuple[str, Operation]]:
    """operationId -> (path relative to the server URL, operation), for every declared route."""
    found: dict[str, tuple[str, Operation]] = {}
    for route in routes:
        if isinstance(route, OperationRoute):
            op = route.operation
            if not route.path.startswith(API + "/"):
                raise RuntimeError(f"operation {op.operation_id} is routed outside {API}: {route.path}")
            if op.operation_id in found:
                raise RuntimeError(f"operation {op.operation_id} is routed twice")
            found[op.operation_id] = (route.path.removeprefix(API), op)
    return found


# --- the document -------------------------------------------------------------------------------


def build_document(routes: Iterable[BaseRoute], plugins: Plugins) -> dict[str, Any]:
    """The document for an app with these routes and plugins (each plugin edits it in turn)."""
    paths: dict[str, Schema] = {}
    for path, op in declared(routes).values():
        paths.setdefault(path, {})[op.method.lower()] = render(op)
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
        "components": {"schemas": component_schemas()},
    }
    # The declarations' schemas are shared constants: plugins edit a copy of their own.
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
        root_path = request.scope.get("root_path", "").rstrip("/")
        if root_path:  # served behind a proxy's path prefix (`petstore serve --root-path`): the API is under it
            return JSONResponse(under_prefix(self.document, root_path))
        return JSONResponse(self.document)


def under_prefix(document: dict[str, Any], root_path: str) -> dict[str, Any]:
    """``document`` as a client behind a path prefix sees it: its server, and every OAuth2 flow's
    token and refresh URLs (absolute paths, which a client resolves against the host alone)."""
    schemes = document.get("components", {}).get("securitySchemes", {})
    moved = {}
    for name, scheme in schemes.items():
        flows = scheme.get("flows")
        if flows:
            flows = {
                flow: {
                    key: root_path + value if key in ("tokenUrl", "refreshUrl", "authorizationUrl") else value
                    for key, value in settings.items()
                }
                for flow, settings in flows.items()
            }
            scheme = {**scheme, "flows": flows}
        moved[name] = scheme
    components = {**document.get("components", {}), "securitySchemes": moved} if schemes else None
    prefixed = {**document, "servers": [{"url": root_path + API}]}
    if components is not None:
        prefixed["components"] = components
    return prefixed


def routes(plugins: Plugins) -> list[BaseRoute]:
    return [Route(DOCUMENT_PATH, OpenApiEndpoint(plugins).serve, methods=["GET"], name="openapi")]
