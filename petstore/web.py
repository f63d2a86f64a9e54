"""Reading requests safely: bodies with a size limit, JSON or form, ids, lists, pagination.

Every way a request can be malformed ends here as an :class:`~petstore.errors.ApiError`, so the
endpoints only see valid values.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from petstore.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from petstore.models import INT64_MAX
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


async def read_data(request: Request, *, form: bool = False) -> Any:
    """The body as JSON (or, where the Petstore lists it, a URL-encoded form) as plain data."""
    media = _media_type(request)
    limit = app_state(request).settings.max_body_bytes
    if media in ("application/json", "") or media.endswith("+json"):
        raw = await read_body(request, limit)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("malformed JSON: nested too deeply") from None
    if form and media == "application/x-www-form-urlencoded":
        raw = await read_body(request, limit)
        from urllib.parse import parse_qsl

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


def path_id(request: Request, name: str, what: str) -> int:
    raw = request.path_params[name]
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"invalid {what} id: {raw[:40]!r} is not an integer") from None
    if value < 0 or value > INT64_MAX:
        raise BadRequest(f"invalid {what} id: out of range")
    return value


def query_list(request: Request, name: str) -> list[str]:
    """``name=a,b`` and ``name=a&name=b`` alike."""
    values: list[str] = []
    for raw in request.query_params.getlist(name):
        values.extend(part.strip() for part in raw.split(",") if part.strip())
    return values


def pagination(request: Request, default_limit: int = 100) -> tuple[int, int]:
    def number(name: str, default: int, maximum: int) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"{name} must be an integer") from None
        if value < 0:
            raise BadRequest(f"{name} must not be negative")
        if value > maximum:
            raise BadRequest(f"{name} must be at most {maximum}")
        return value

    return number("limit", default_limit, MAX_LIMIT), number("offset", 0, INT64_MAX)
