"""Operation declarations (``petstore.operations``): each is its handler's permission check, and it
names every status its handler can raise."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from petstore.access import ROLE_SCOPES, WRITE_PETS, Principal
from petstore.api.inputs import read_model
from petstore.api.openapi import declared
from petstore.errors import ApiError, Conflict
from petstore.models import PetBody, Role
from petstore.operations import Body, Operation, operation, ref
from tests.fakes import ApiHarness, running_api

API = "/api/v3"
#: Every {name} of a path, with a value of the right form that names nothing.
PATH_VALUES = {"petId": "999999", "orderId": "999999", "username": "nobody"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with running_api(f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}", tmp_path / "media") as harness:
        yield harness


def core_operations(api: ApiHarness) -> dict[str, tuple[str, Operation]]:
    return declared(api.client.app.routes)  # type: ignore[attr-defined]


# ------------------------------------------------------------- what a handler raises, read from its code


def _resolve(node: ast.expr, names: dict[str, Any]) -> Any:
    """The object a name or a dotted name of the code stands for (None when it is a local or a call)."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, names)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _status(raised: Any) -> int | None:
    """The status of ``raise X(...)`` or ``raise X.from_something(...)``, X an ApiError."""
    owner = getattr(raised, "__self__", raised)  # a classmethod that builds one
    return owner.status if isinstance(owner, type) and issubclass(owner, ApiError) else None


def raised_statuses(function: Callable[..., Any], seen: set[Callable[..., Any]] | None = None) -> dict[int, str]:
    """Status -> where, for every ApiError that ``function`` raises, itself or in the functions of
    petstore it calls by name (followed to the end)."""
    seen = set() if seen is None else seen
    if function in seen or not inspect.isfunction(function) or not function.__module__.startswith("petstore"):
        return {}
    seen.add(function)
    found: dict[int, str] = {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            status = _status(_resolve(exc, function.__globals__))
            if status is not None:
                found.setdefault(status, f"{function.__module__}.{function.__qualname__}")
        elif isinstance(node, ast.Call):
            callee = _resolve(node.func, function.__globals__)
            if callee is not None:
                for status, where in raised_statuses(callee, seen).items():
                    found.setdefault(status, where)
    return found


def test_every_status_a_handler_can_raise_is_declared(api: ApiHarness) -> None:
    operations = core_operations(api)
    assert len(operations) >= 19
    for op_id, (_, op) in operations.items():
        undeclared = {
            status: where for status, where in raised_statuses(op.handler).items() if status not in op.statuses()
        }
        assert not undeclared, f"{op_id} can answer {undeclared} (status: raised in), not declared"


def test_the_reading_of_the_code_finds_what_a_helper_raises() -> None:
    """The check above has teeth: it follows calls into other modules (read_model → read_data → 415)."""

    async def handler(request: Request) -> Response:
        body = await read_model(request, PetBody)
        if body.id:
            raise Conflict("taken")
        return JSONResponse({})

    handler.__module__ = "petstore.example"
    assert set(raised_statuses(handler)) == {400, 409, 413, 415, 422}
    declared_op = operation(
        "POST", "/x", "x", permission=None, tag="x", summary="x", ok={}, body=Body({"application/json": ref("Pet")})
    )(handler)
    assert set(raised_statuses(handler)) - set(declared_op.statuses()) == {409}


# ---------------------------------------------------------------- the declaration is the permission check


def test_every_permission_is_checked_before_its_handler_runs(api: ApiHarness) -> None:
    """Anonymous: 401 on every operation that needs a permission; a role without it: 403. The
    handler never runs (nothing changes, whatever the body would have been)."""
    accounts = {Role.customer: api.customer, Role.staff: api.staff, Role.admin: api.admin}
    before = api.snapshot()
    checked = 0
    for op_id, (path, op) in core_operations(api).items():
        if op.permission is None:
            continue
        url = API + path.format(**{name: PATH_VALUES[name] for name in PATH_VALUES if f"{{{name}}}" in path})
        response = api.client.request(op.method, url, content=b"not even JSON")
        assert response.status_code == 401, (op_id, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        for role, scopes in ROLE_SCOPES.items():
            response = api.client.request(op.method, url, content=b"not even JSON", headers=accounts[role].headers)
            if op.permission in scopes:
                assert response.status_code not in (401, 403), (op_id, role, response.text)
            else:
                assert response.status_code == 403, (op_id, role, response.text)
        checked += 1
    assert checked >= 13
    assert api.snapshot() == before


def test_a_handler_takes_the_principal_exactly_when_its_operation_needs_a_permission() -> None:
    async def anyone(request: Request) -> Response:
        raise AssertionError("never called")

    async def signed_in(request: Request, who: Principal) -> Response:
        raise AssertionError("never called")

    declare: Any = operation  # what mypy refuses (see petstore.operations) is refused when called too
    with pytest.raises(TypeError, match=r"must take \(request, who\), as it needs 'pets:write'"):
        declare("GET", "/x", "x", permission=WRITE_PETS, tag="x", summary="x", ok={})(anyone)
    with pytest.raises(TypeError, match=r"must take \(request\)"):
        declare("GET", "/x", "x", permission=None, tag="x", summary="x", ok={})(signed_in)


def test_a_permission_some_role_lacks_derives_its_403() -> None:
    async def handler(request: Request, who: Principal) -> Response:
        raise AssertionError("never called")

    pets = operation("GET", "/x", "x", permission=WRITE_PETS, tag="x", summary="x", ok={})(handler)
    assert pets.statuses() == {401: pets.statuses()[401], 403: "Only staff and admins hold `pets:write`"}
    everyone = operation("GET", "/x", "x", permission="authenticated", tag="x", summary="x", ok={})(handler)
    assert set(everyone.statuses()) == {401}


def test_a_status_both_derived_and_raised_says_both() -> None:
    async def handler(request: Request) -> Response:
        raise AssertionError("never called")

    op = operation(
        "PUT",
        "/x",
        "x",
        permission=None,
        tag="x",
        summary="x",
        ok={},
        body=Body({"application/json": {}}),
        errors={400: "or the id is missing"},
    )(handler)
    assert op.statuses()[400].startswith("Malformed body")
    assert op.statuses()[400].endswith("; or the id is missing")
