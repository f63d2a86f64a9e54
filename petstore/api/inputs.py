"""Reading requests safely: bodies with a size limit, JSON or form, ids, lists, pagination.

Every way a request can be malformed ends here as an :class:`~petstore.errors.ApiError`, so the
endpoints only see valid values.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from petstore.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from petstore.models import INT64_MAX
from petstore.operations import Param
from petstore.state import app_state

M = TypeVar("M", bound=BaseModel)

MAX_LIMIT = 1000


async def limited_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks; 413 as soon as the declared or the received size passes ``limit``.

    Nothing past the limit is read, so a client streaming an endless body (chunked, without
    ``Content-Length``) costs at most ``limit`` bytes of memory or disk.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in limited_stream(request, limit)])


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


_LIST_FIELDS = {"photoUrls", "photo_urls"}


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"malformed JSON: {name} is not JSON")


def _parse_json(raw: bytes) -> Any:
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
        # A lone surrogate ("\ud800") parses, but no UTF-8 text can hold it: not in the database,
        # not even in the error message naming it. Refuse it here, where it can still be said.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("malformed JSON: a string holds a lone surrogate (\\ud800-\\udfff)") from None
    except UnicodeDecodeError:
        raise BadRequest("malformed JSON: not UTF-8") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        raise BadRequest(f"malformed JSON: {str(exc)[:200]}") from None
    return data


async def read_data(request: Request, *, form: bool = False) -> Any:
    """The body as JSON (or, where the Petstore lists it, a URL-encoded form) as plain data."""
    media = _media_type(request)
    limit = app_state(request).settings.max_body_bytes
    if media in ("application/json", "") or media.endswith("+json"):
        return _parse_json(await read_body(request, limit))
    if form and media == "application/x-www-form-urlencoded":
        raw = await read_body(request, limit)
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadRequest("form body is not UTF-8") from None
        data: dict[str, Any] = {}
        for key, value in pairs:
            if key in _LIST_FIELDS:
                data.setdefault(key, []).append(value)
            else:
                data[key] = value
        return data
    accepted = "application/json" + (" or application/x-www-form-urlencoded" if form else "")
    raise UnsupportedMediaType(f"send {accepted}")


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc) from None


async def read_model(request: Request, model: type[M], *, form: bool = False) -> M:
    return validate(model, await read_data(request, form=form))


# ASCII digits only: int() also takes " 7", "1_000", "+7" and the digits of other scripts.
_INTEGER = re.compile(r"-?[0-9]{1,30}")


def _integer(raw: str) -> int | None:
    return int(raw) if _INTEGER.fullmatch(raw) else None


def id_param(name: str, what: str) -> Param:
    """How an operation declares the ``{name}`` that :func:`path_id` reads."""
    return Param(name, "path", {"type": "integer", "format": "int64", "minimum": 0, "maximum": INT64_MAX}, what)


def path_id(request: Request, name: str, what: str) -> int:
    """The ``{name}`` id of the path: 400 when it is no int64 (the document's format).

    Ids past :data:`~petstore.models.MAX_ID` are looked up like any other (404 when no row has
    one): bodies refuse them now, but a database from before may hold such rows, still theirs.
    """
    raw = request.path_params[name]
    value = _integer(raw)
    if value is None:
        raise BadRequest(f"invalid {what} id: {raw[:40]!r} is not an integer")
    if value < 0 or value > INT64_MAX:
        raise BadRequest(f"invalid {what} id: out of range")
    return value


def query_list(request: Request, name: str) -> list[str]:
    """``name=a,b`` and ``name=a&name=b`` alike."""
    values: list[str] = []
    for raw in request.query_params.getlist(name):
        values.extend(part.strip() for part in raw.split(",") if part.strip())
    return values


#: A name as :func:`query_list` reads one (a tag's): not empty, no comma (it separates names), no NUL.
LISTED_NAME = {"type": "string", "maxLength": 255, "pattern": "^[^,\\x00]*[^,\\s\\x00][^,\\x00]*$"}


def check_names(names: list[str], what: str) -> list[str]:
    """``names`` (of tags, a category...) from a query, if a row could have them: 400 past 255
    characters, or with a NUL (no name has one, and PostgreSQL refuses it in a query)."""
    if any(len(name) > 255 for name in names):
        raise BadRequest(f"invalid {what} value: longer than 255 characters")
    if any("\x00" in name for name in names):
        raise BadRequest(f"invalid {what} value: contains a NUL character")
    return names


#: How an operation declares the ``limit`` and ``offset`` that :func:`pagination` reads.
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


def query_integer(request: Request, name: str, default: int, maximum: int, minimum: int = 0) -> int:
    """The integer query parameter ``name`` (``default`` when absent): 400 unless it is ASCII
    digits between ``minimum`` and ``maximum``."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = _integer(raw)
    if value is None:
        raise BadRequest(f"{name} must be an integer")
    if value < minimum:
        raise BadRequest(f"{name} must not be negative" if minimum == 0 else f"{name} must be at least {minimum}")
    if value > maximum:
        raise BadRequest(f"{name} must be at most {maximum}")
    return value


def pagination(request: Request, default_limit: int = 100) -> tuple[int, int]:
    return query_integer(request, "limit", default_limit, MAX_LIMIT), query_integer(request, "offset", 0, INT64_MAX)
