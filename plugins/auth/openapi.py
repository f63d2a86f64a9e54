"""What the auth plugin adds to the served OpenAPI document: its paths and schemas, the bearer
scheme, and on each of the core's operations (those with ``x-petstore-permission``) the security
requirement and the 401 that follow from the permission it needs."""

from __future__ import annotations

import copy
from typing import Any

API = "/api/v3"

ERROR = {"$ref": "#/components/schemas/ApiResponse"}
#: The scope a core operation needs, or null when anyone may call it (petstore.api.openapi).
PERMISSION = "x-petstore-permission"
SCHEME = "bearerAuth"
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "An access token: `Authorization: Bearer <token>`",
}
UNAUTHORIZED_WITHOUT = "A bearer token is required: it is missing, malformed, expired or revoked"
UNAUTHORIZED_SENT = "a bearer token was sent and is not valid (malformed, expired or revoked)"
SIGNING_IN = "Signed in means a bearer token: `Authorization: Bearer <token>`, from `POST /auth/token`."

SCHEMAS: dict[str, Any] = {
    "TokenResponse": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": {"type": "string", "description": "JWT to send as Authorization: Bearer"},
            "token_type": {"type": "string", "enum": ["bearer"]},
            "expires_in": {"type": "integer", "description": "seconds until the access token expires"},
            "refresh_token": {"type": "string", "description": "spend once at /auth/refresh for a new pair"},
        },
    },
    "TokenRequest": {
        "type": "object",
        "required": ["username", "password"],
        "properties": {
            "grant_type": {"type": "string", "enum": ["password"]},
            "username": {"type": "string", "maxLength": 1024},
            "password": {"type": "string", "format": "password", "maxLength": 1024},
        },
    },
    "RefreshRequest": {
        "type": "object",
        "required": ["refresh_token"],
        "properties": {"refresh_token": {"type": "string"}},
        "additionalProperties": False,
    },
    "JWKS": {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": {"type": "object", "additionalProperties": True}}},
    },
}


def _api_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _tokens(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenResponse"}}},
    }


def _paths(asymmetric: bool) -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{SCHEME: []}]
    paths: dict[str, Any] = {
        "/auth/token": {
            "post": {
                "tags": ["auth"],
                "summary": "Log in (OAuth2 password grant): an access and a refresh token",
                "operationId": "authToken",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": {"$ref": "#/components/schemas/TokenRequest"}},
                        "application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}},
                    },
                },
                "responses": {
                    "200": _tokens("tokens"),
                    "400": _api_response("missing fields"),
                    "401": _api_response("wrong username or password"),
                    "413": _api_response("body too large"),
                    "415": _api_response("neither a form nor JSON"),
                    "429": _api_response("too many login attempts"),
                    "503": _api_response("login is unavailable right now"),
                },
            }
        },
        "/auth/refresh": {
            "post": {
                "tags": ["auth"],
                "summary": "Spend a refresh token for a new pair (reusing a spent one revokes the login)",
                "operationId": "authRefresh",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RefreshRequest"}}},
                },
                "responses": {
                    "200": _tokens("a new pair"),
                    "401": _api_response("bad, spent or revoked refresh token"),
                },
            }
        },
        "/auth/logout": {
            "post": {
                "tags": ["auth"],
                "summary": "Revoke this access token and every token of its login, on every instance",
                "operationId": "authLogout",
                "security": bearer,
                "responses": {
                    "200": _api_response("logged out"),
                    "401": _api_response("no or bad token"),
                    "503": _api_response("cannot log out right now"),
                },
            }
        },
    }
    paths["/user/login"] = {
        "get": {
            "tags": ["user"],
            "summary": "Logs user into the system",
            "description": (
                "Returns the access token as a JSON string; send it as `Authorization: Bearer`. "
                "Prefer POST /auth/token, which keeps the password out of URLs and also returns a refresh token."
            ),
            "operationId": "loginUser",
            "parameters": [
                {"name": "username", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "password", "in": "query", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "successful operation",
                    "headers": {
                        "X-Rate-Limit": {
                            "description": "calls per hour allowed by the user",
                            "schema": {"type": "integer", "format": "int32"},
                        },
                        "X-Expires-After": {
                            "description": "date in UTC when the token expires (RFC 3339)",
                            "schema": {"type": "string", "format": "date-time"},
                        },
                    },
                    "content": {"application/json": {"schema": {"type": "string"}}},
                },
                "400": _api_response("Invalid username/password supplied"),
                "429": _api_response("too many login attempts"),
                "503": _api_response("login is unavailable right now"),
            },
        }
    }
    paths["/user/logout"] = {
        "get": {
            "tags": ["user"],
            "summary": "Logs out current logged in user session",
            "description": "As POST /auth/logout: revokes the access token and every token of its login.",
            "operationId": "logoutUser",
            "security": bearer,
            "responses": {
                "200": _api_response("logged out"),
                "401": _api_response("no or bad token"),
                "503": _api_response("cannot log out right now"),
            },
        }
    }
    if asymmetric:
        paths["/auth/jwks.json"] = {
            "get": {
                "tags": ["auth"],
                "summary": "The public keys that verify this server's tokens (RFC 7517)",
                "operationId": "authJwks",
                "responses": {
                    "200": {
                        "description": "JWK Set",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JWKS"}}},
                    }
                },
            }
        }
    return paths


def _prefix(document: dict[str, Any]) -> str:
    """Paths are relative to ``servers[0].url`` (``/api/v3``) in the Petstore document; full otherwise."""
    servers = document.get("servers") or []
    base = str(servers[0].get("url", "")) if servers and isinstance(servers[0], dict) else ""
    return "" if base.rstrip("/").endswith(API) else API


def _secure(operation: dict[str, Any]) -> None:
    """A permission needs a token; without one, a token sent is still checked (and 401 if bad)."""
    needed = operation[PERMISSION] is not None
    responses = operation.setdefault("responses", {})
    own = responses.get("401", {}).get("description")  # the core's reason (a room that needs a user)
    if needed:
        description = UNAUTHORIZED_WITHOUT
    elif own:
        description = f"{own}; or {UNAUTHORIZED_SENT}"
    else:
        description = UNAUTHORIZED_SENT.capitalize()
    responses["401"] = {
        "description": description,
        "headers": {
            "WWW-Authenticate": {"description": "The scheme to authenticate with", "schema": {"type": "string"}}
        },
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    operation["responses"] = dict(sorted(responses.items()))
    # An empty requirement makes the token optional.
    operation["security"] = [{SCHEME: []}] if needed else [{}, {SCHEME: []}]


def extend(document: dict[str, Any], *, asymmetric: bool) -> None:
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and PERMISSION in operation:
                _secure(operation)
    info = document.get("info")
    if isinstance(info, dict) and info.get("description"):
        info["description"] += "\n" + SIGNING_IN
    prefix = _prefix(document)
    paths = document.setdefault("paths", {})
    # Copies: the document is edited by other plugins after us and must not reach our constants.
    for path, item in copy.deepcopy(_paths(asymmetric)).items():
        paths[prefix + path] = item
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(copy.deepcopy(SCHEMAS))
    components.setdefault("securitySchemes", {})[SCHEME] = copy.deepcopy(BEARER)
    tags = document.setdefault("tags", [])
    if not any(tag.get("name") == "auth" for tag in tags):
        tags.append({"name": "auth", "description": "Bearer tokens: log in, refresh, log out"})
