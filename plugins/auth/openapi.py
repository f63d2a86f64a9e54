"""What the auth plugin adds to the served OpenAPI document: its paths and schemas, the bearer
scheme and, beside it, the OAuth2 password flow of the same tokens (so that Swagger UI's
"Authorize" offers a login form), the stream ticket of ``GET /events``, and on each of the core's
operations (those with ``x-petstore-permission``) the security requirement and the 401 that
follow from the permission it needs."""

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
#: The same tokens, as OAuth2 tools know them: RFC 6749's password grant and refresh.
OAUTH2 = "oauth2Password"
PASSWORD_FLOW = {
    "type": "oauth2",
    "description": "Log in with a username and password (RFC 6749 §4.3); the token is then sent as a bearer token",
    "flows": {"password": {"tokenUrl": f"{API}/auth/token", "refreshUrl": f"{API}/auth/refresh", "scopes": {}}},
}
#: The core's event stream, where a stream ticket may stand in for the bearer token.
STREAM_PATH = f"{API}/events"
TICKET_PARAM = {
    "name": "ticket",
    "in": "query",
    "required": False,
    "description": (
        "A single-use stream ticket from `POST /events/ticket`, for browsers (`EventSource` cannot send "
        "`Authorization`). A bearer token is never taken from the URL."
    ),
    "schema": {"type": "string", "maxLength": 128},
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
            "username": {"type": "string", "minLength": 1, "maxLength": 1024},
            "password": {"type": "string", "format": "password", "minLength": 1, "maxLength": 1024},
        },
    },
    "RefreshRequest": {
        "type": "object",
        "required": ["refresh_token"],
        "properties": {
            "grant_type": {"type": "string", "enum": ["refresh_token"]},
            "refresh_token": {"type": "string", "minLength": 1},
        },
        "additionalProperties": False,
    },
    "OAuthError": {
        "description": "The JSON error shape, with RFC 6749 §5.2's `error` and `error_description` where they apply",
        "type": "object",
        "required": ["code", "type", "message"],
        "properties": {
            "code": {"type": "integer", "format": "int32"},
            "type": {"type": "string"},
            "message": {"type": "string"},
            "error": {"type": "string", "enum": ["invalid_request", "invalid_grant", "unsupported_grant_type"]},
            "error_description": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "StreamTicket": {
        "type": "object",
        "required": ["ticket", "expires_in"],
        "properties": {
            "ticket": {"type": "string", "description": "pass once as `GET /events?ticket=...`"},
            "expires_in": {"type": "integer", "description": "seconds left to spend it"},
        },
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


def _oauth_error(description: str) -> dict[str, Any]:
    no_store = {"description": "no-store", "schema": {"type": "string"}}
    return {
        "description": description,
        "headers": {"Cache-Control": no_store},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}},
    }


def _tokens(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenResponse"}}},
    }


def _paths(asymmetric: bool) -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{SCHEME: []}, {OAUTH2: []}]
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
                "description": "An `Authorization` header is ignored here: a client whose session ended can log in.",
                "responses": {
                    "200": _tokens("tokens"),
                    "400": _oauth_error(
                        "missing fields (`invalid_request`) or another grant (`unsupported_grant_type`)"
                    ),
                    "401": _oauth_error("wrong username or password (`invalid_grant`)"),
                    "413": _oauth_error("body too large (`invalid_request`)"),
                    "415": _oauth_error("neither a form nor JSON (`invalid_request`)"),
                    "429": _api_response("too many login attempts"),
                    "503": _api_response("login is unavailable right now"),
                },
            }
        },
        "/auth/refresh": {
            "post": {
                "tags": ["auth"],
                "summary": "Spend a refresh token for a new pair (reusing a spent one revokes the login)",
                "description": (
                    'RFC 6749 §6: a form `grant_type=refresh_token&refresh_token=...`, or JSON `{"refresh_token"}`. '
                    "An `Authorization` header is ignored here."
                ),
                "operationId": "authRefresh",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {"$ref": "#/components/schemas/RefreshRequest"}
                        },
                        "application/json": {"schema": {"$ref": "#/components/schemas/RefreshRequest"}},
                    },
                },
                "responses": {
                    "200": _tokens("a new pair"),
                    "400": _oauth_error(
                        "no refresh token (`invalid_request`) or another grant (`unsupported_grant_type`)"
                    ),
                    "401": _oauth_error("bad, spent or revoked refresh token (`invalid_grant`)"),
                    "413": _oauth_error("body too large (`invalid_request`)"),
                    "415": _oauth_error("neither a form nor JSON (`invalid_request`)"),
                    "503": _api_response("cannot refresh tokens right now"),
                },
            }
        },
        "/events/ticket": {
            "post": {
                "tags": ["events"],
                "summary": "A single-use ticket that opens one event stream as you (for EventSource)",
                "description": (
                    "Spend it within `expires_in` seconds, once, as `GET /events?room=...&ticket=...`: the stream is "
                    "then yours, as if it had sent this bearer token (which is checked again then: revoked, "
                    "expired, role). A browser's `EventSource` cannot send `Authorization`, and a token is never "
                    "taken from a URL."
                ),
                "operationId": "eventsTicket",
                "security": [{SCHEME: []}, {OAUTH2: []}],
                "responses": {
                    "200": {
                        "description": "the ticket",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StreamTicket"}}},
                    },
                    "401": _api_response("no or bad token"),
                    "503": _api_response("cannot issue tickets right now"),
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
                "Prefer POST /auth/token, which keeps the password out of URLs and also returns a refresh token. "
                "An `Authorization` header is ignored here: a client whose session ended can log in again."
            ),
            "operationId": "loginUser",
            "parameters": [
                {
                    "name": "username",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
                },
                {
                    "name": "password",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "format": "password", "minLength": 1, "maxLength": 1024},
                },
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
    token: list[dict[str, list[str]]] = [{SCHEME: []}, {OAUTH2: []}]
    operation["security"] = token if needed else [{}, *token]


def _ticketed(operation: dict[str, Any]) -> None:
    """The event stream: a stream ticket in the query may stand in for the bearer token."""
    operation.setdefault("parameters", []).append(copy.deepcopy(TICKET_PARAM))
    unauthorized = operation.get("responses", {}).get("401")
    if isinstance(unauthorized, dict):
        unauthorized["description"] += "; or a stream ticket that is unknown, spent or expired"


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
    stream = paths.get(STREAM_PATH.removeprefix(API) if prefix == "" else STREAM_PATH, {}).get("get")
    if isinstance(stream, dict):
        _ticketed(stream)
    for path, item in copy.deepcopy(_paths(asymmetric)).items():
        paths[prefix + path] = item
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(copy.deepcopy(SCHEMAS))
    schemes = components.setdefault("securitySchemes", {})
    schemes[SCHEME] = copy.deepcopy(BEARER)
    schemes[OAUTH2] = copy.deepcopy(PASSWORD_FLOW)
    tags = document.setdefault("tags", [])
    if not any(tag.get("name") == "auth" for tag in tags):
        tags.append({"name": "auth", "description": "Bearer tokens: log in, refresh, log out"})
