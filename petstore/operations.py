"""An HTTP operation, declared once beside its handler: its route, the permission it needs, and
what the OpenAPI document says of it.

::

    @operation("DELETE", "/pet/{petId}", "deletePet", permission=WRITE_PETS,
               tag="pet", summary="Deletes a pet.", ok=ref("ApiResponse"),
               params=(PET_ID,), errors={400: BAD_PET_ID, 404: "Pet not found"})
    async def delete_pet(request: Request, who: Principal) -> Response: ...

The declaration is the check. Its route runs the handler only for a principal that holds the
permission (a scope of :mod:`petstore.access`; :func:`~petstore.access.require` answers 401 to
an anonymous request, 403 to a role without it) and hands the handler that principal; the
handler of an operation without a permission (``permission=None``: anyone) takes the request
alone. mypy holds the two shapes apart, and so does :func:`operation` when it is called.

The document follows from the same object (:mod:`petstore.api.openapi` renders it; an auth
plugin's ``openapi()`` hook reads ``x-petstore-permission``). :meth:`Operation.statuses` derives
what the check answers (401, and 403 where some role lacks the scope) and what reading the body
answers (:data:`READ_ERRORS`); ``errors`` holds only what the handler raises itself, where it
raises it, and ``tests/test_operations.py`` checks that every status a handler can raise is
declared. Paths are relative to the API's prefix (``/api/v3``).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, Unpack, cast, overload

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from petstore.access import ROLE_SCOPES, Principal, principal, require
from petstore.errors import ApiError
from petstore.models import Role

audit_logger = logging.getLogger("petstore.audit")
#: A created object's answer larger than this is not read back for its id (a pet is far smaller).
_AUDIT_BODY_LIMIT = 64 * 1024

Schema = dict[str, Any]
Handler = Callable[[Request], Awaitable[Response]]
SignedInHandler = Callable[[Request, Principal], Awaitable[Response]]

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

#: What reading a JSON (or form) body answers (:func:`petstore.api.inputs.read_model`).
READ_ERRORS: Mapping[int, str] = {
    400: "Malformed body: not JSON (or not a form where one is accepted), or a bad Content-Length",
    413: "Body larger than the server accepts",
    415: "Content-Type not accepted",
    422: "The body does not match the schema (wrong types, unknown fields, values out of range)",
}
#: What a conditional read answers when the client's copy is current (:attr:`Operation.etag`).
NOT_MODIFIED = "Not modified: `If-None-Match` holds the current ETag"
#: What the permission check answers to an anonymous request.
UNAUTHENTICATED = "Authentication required: the request is anonymous"
#: Every role, as a 403 names those that hold a scope ("Only staff and admins hold `pets:write`").
_ROLES_PLURAL = {Role.customer: "customers", Role.staff: "staff", Role.admin: "admins"}


def ref(name: str) -> Schema:
    """A component schema of the document (``Pet``, ``Order``, ``Error``...)."""
    return {"$ref": f"#/components/schemas/{name}"}


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    schema: Schema
    description: str
    required: bool = False


#: The request header of a conditional read.
IF_NONE_MATCH = Param(
    "If-None-Match",
    "header",
    {"type": "string"},
    "ETags of the copies the client holds (or `*`): 304, without a body, if one is current",
)


@dataclass(frozen=True)
class Body:
    #: Media type -> schema.
    content: Mapping[str, Schema]
    description: str = ""
    required: bool = True
    #: Status -> when, for what reading it answers: :data:`READ_ERRORS` unless the handler reads
    #: it another way (and then declares its statuses itself).
    errors: Mapping[int, str] = field(default_factory=lambda: READ_ERRORS)


class Doc(TypedDict, total=False):
    """The optional parts of a declaration (see :class:`Operation`)."""

    description: str
    params: Sequence[Param]
    body: Body
    errors: Mapping[int, str]
    ok_media: str
    ok_description: str
    links: Mapping[str, Mapping[str, str]]
    etag: bool
    ok_headers: Mapping[str, Schema]


def _refusal(scope: str) -> str | None:
    """The 403 of an operation that needs ``scope``: None when every role holds it."""
    holders = [plural for role, plural in _ROLES_PLURAL.items() if scope in ROLE_SCOPES[role]]
    return None if len(holders) == len(_ROLES_PLURAL) else f"Only {' and '.join(holders)} hold `{scope}`"


@dataclass(frozen=True)
class Operation:
    """One operation. ``operation_id`` is also its route's name; ``ok`` the schema of its 200 body."""

    method: str
    path: str
    operation_id: str
    handler: Handler | SignedInHandler
    #: The scope a caller must hold (:mod:`petstore.access`), or None: anyone may call it.
    permission: str | None
    tag: str
    summary: str
    ok: Schema
    description: str = ""
    params: Sequence[Param] = ()
    body: Body | None = None
    #: Status -> when, for what the handler raises itself (not what the check or the body answers).
    errors: Mapping[int, str] = field(default_factory=dict)
    ok_media: str = JSON
    ok_description: str = "Successful operation"
    #: Operations that take something of the 200 body: operationId -> {parameter: runtime expression}.
    links: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: The handler answers through :func:`petstore.api.caching.conditional`: an ETag on its 200,
    #: and 304 to an ``If-None-Match`` that holds it (both in the document).
    etag: bool = False
    #: Headers of the 200 besides the ETag: name -> the OpenAPI header object (description, schema).
    ok_headers: Mapping[str, Schema] = field(default_factory=dict)

    def statuses(self) -> dict[int, str]:
        """Every status but 200, and when: what the check and the body answer, then ``errors``
        (a status that both answer says both)."""
        derived = dict(self.body.errors) if self.body is not None else {}
        if self.permission is not None:
            derived[401] = UNAUTHENTICATED
            refusal = _refusal(self.permission)
            if refusal is not None:
                derived[403] = refusal
        if self.etag:
            derived[304] = NOT_MODIFIED
        for status, when in self.errors.items():
            derived[status] = f"{derived[status]}; {when}" if status in derived else when
        return dict(sorted(derived.items()))

    async def endpoint(self, request: Request) -> Response:
        if self.method == "GET":
            return await self._call(request)
        try:
            response = await self._call(request)
        except ApiError as refused:
            _audit(self, request, refused.status, refused.type, None)
            raise
        except BaseException:
            _audit(self, request, 500, "internal_error", None)
            raise
        _audit(self, request, response.status_code, "ok", response)
        return response

    async def _call(self, request: Request) -> Response:
        if self.permission is None:
            return await cast(Handler, self.handler)(request)
        who = require(request, self.permission)
        return await cast(SignedInHandler, self.handler)(request, who)

    def route(self, prefix: str) -> OperationRoute:
        return OperationRoute(prefix, self)


class OperationRoute(Route):
    """The route of an :class:`Operation`: its path under ``prefix``, its one method, its id as name."""

    def __init__(self, prefix: str, operation: Operation) -> None:
        super().__init__(
            prefix + operation.path, operation.endpoint, methods=[operation.method], name=operation.operation_id
        )
        self.operation = operation


def _target(request: Request, response: Response | None) -> str | None:
    """What a write was about: its path's ids, else the id (or username) of what it created."""
    if request.path_params:
        return ",".join(f"{name}={value}" for name, value in request.path_params.items())
    if isinstance(response, JSONResponse) and len(response.body) <= _AUDIT_BODY_LIMIT:
        created = json.loads(bytes(response.body))
        if isinstance(created, dict):
            for key in ("id", "username"):
                if key in created:
                    return f"{key}={created[key]}"
    return None


def _audit(op: Operation, request: Request, status: int, result: str, response: Response | None) -> None:
    """One ``petstore.audit`` line per write: who, what, which, and how it ended. Never a body."""
    if not audit_logger.isEnabledFor(logging.INFO):
        return
    who = principal(request)
    actor = who.username if who is not None else None
    target = _target(request, response) if status < 400 else _target(request, None)
    audit_logger.info(
        "%s %s by %s: %d %s",
        op.operation_id,
        target or "-",
        actor or "anonymous",
        status,
        result,
        extra={"actor": actor, "operation": op.operation_id, "target": target, "status": status, "result": result},
    )


@overload
def operation(
    method: str,
    path: str,
    operation_id: str,
    *,
    permission: None,
    tag: str,
    summary: str,
    ok: Schema,
    **doc: Unpack[Doc],
) -> Callable[[Handler], Operation]: ...
@overload
def operation(
    method: str,
    path: str,
    operation_id: str,
    *,
    permission: str,
    tag: str,
    summary: str,
    ok: Schema,
    **doc: Unpack[Doc],
) -> Callable[[SignedInHandler], Operation]: ...
def operation(
    method: str,
    path: str,
    operation_id: str,
    *,
    permission: str | None,
    tag: str,
    summary: str,
    ok: Schema,
    **doc: Unpack[Doc],
) -> Callable[[Handler], Operation] | Callable[[SignedInHandler], Operation]:
    """Declare the decorated handler's operation (see the module docstring); the handler takes
    ``(request, who)`` when there is a permission, ``(request)`` when there is none."""

    def declare(handler: Handler | SignedInHandler) -> Operation:
        takes = len(inspect.signature(handler).parameters)
        if takes != (1 if permission is None else 2):
            needs = "(request)" if permission is None else f"(request, who), as it needs {permission!r}"
            raise TypeError(f"the handler of {operation_id} must take {needs}")
        return Operation(method, path, operation_id, handler, permission, tag, summary, ok, **doc)

    return declare
