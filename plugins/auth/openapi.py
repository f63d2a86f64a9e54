"""What the auth plugin adds to the served OpenAPI document: its paths, schemas and the bearer scheme."""

from __future__ import annotations

import copy
from typing import Any

API = "/api/v3"

ERROR = {"$ref": "#/components/schemas/ApiResponse"}

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
    bearer: list[dict[str, list[str]]] = [{"bearerAuth": []}]
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


def extend(document: dict[str, Any], *, asymmetric: bool) -> None:
    prefix = _prefix(document)
    paths = document.setdefault("paths", {})
    # Copies: the document is edited by other plugins after us and must not reach our constants.
    for path, item in copy.deepcopy(_paths(asymmetric)).items():
        paths[prefix + path] = item
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(copy.deepcopy(SCHEMAS))
    components.setdefault("securitySchemes", {}).setdefault(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    tags = document.setdefault("tags", [])
    if not any(tag.get("name") == "auth" for tag in tags):
        tags.append({"name": "auth", "description": "Bearer tokens: log in, refresh, log out"})
