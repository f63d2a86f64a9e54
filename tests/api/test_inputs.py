"""``petstore.api.inputs``: every malformed request ends as an ApiError before an endpoint sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from petstore.api.inputs import MAX_LIMIT, pagination, path_id, query_list, read_body, read_data, read_model
from petstore.config import Settings
from petstore.db import create_engine, create_sessionmaker
from petstore.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from petstore.models import MAX_ID, OrderBody, PetBody
from petstore.plugin import Plugins
from petstore.state import AppState

LIMIT = 200_000


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[AppState]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", plugins=(), max_body_bytes=LIMIT)
    engine = create_engine(settings)
    yield AppState(settings=settings, engine=engine, sessions=create_sessionmaker(engine), plugins=Plugins([]))
    await engine.dispose()


def request(
    state: AppState | None = None,
    body: list[bytes] | None = None,
    headers: dict[str, str] | None = None,
    query: str = "",
    path_params: dict[str, str] | None = None,
) -> tuple[Request, list[int]]:
    """A request whose body arrives in the given chunks; the list returned counts the chunks read."""
    chunks = list(body or [])
    read = [0]

    async def receive() -> dict[str, Any]:
        if read[0] >= len(chunks):
            return {"type": "http.request", "body": b"", "more_body": False}
        read[0] += 1
        return {"type": "http.request", "body": chunks[read[0] - 1], "more_body": True}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "path_params": path_params or {},
        "state": {"petstore": state} if state else {},
    }
    return Request(scope, receive), read


# ------------------------------------------------------------------------------------ bodies


async def test_read_body_joins_the_chunks() -> None:
    req, _ = request(body=[b"ab", b"cd"])
    assert await read_body(req, 10) == b"abcd"


async def test_a_declared_length_beyond_the_limit_is_refused_before_reading() -> None:
    req, read = request(body=[b"x"], headers={"Content-Length": "11"})
    with pytest.raises(PayloadTooLarge):
        await read_body(req, 10)
    assert read == [0]


async def test_a_body_streaming_past_the_limit_stops_being_read() -> None:
    req, read = request(body=[b"x" * 6] * 100)
    with pytest.raises(PayloadTooLarge):
        await read_body(req, 10)
    assert read == [2]


@pytest.mark.parametrize("declared", ["-1", "ten", "1e3", " 5"])
async def test_an_invalid_content_length_is_400(declared: str) -> None:
    req, _ = request(body=[b"x"], headers={"Content-Length": declared})
    with pytest.raises(BadRequest):
        await read_body(req, 10)


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/merge-patch+json", ""]
)
async def test_json_bodies_by_content_type(state: AppState, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    req, _ = request(state, [b'{"a": [1, "\\u00e9"]}'], headers)
    assert await read_data(req) == {"a": [1, "é"]}


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"NaN", b'{"x": Infinity}', b"[" * 100_000, b'"\\ud800"', b'{"\\udc00": 1}', b"1" * 5000, b"\xff"],
)
async def test_malformed_json_is_400(state: AppState, raw: bytes) -> None:
    req, _ = request(state, [raw], {"Content-Type": "application/json"})
    with pytest.raises(BadRequest):
        await read_data(req)


async def test_a_surrogate_pair_is_one_valid_character(state: AppState) -> None:
    req, _ = request(state, [b'"\\ud83d\\udc36"'], {"Content-Type": "application/json"})
    assert await read_data(req) == "🐶"


async def test_form_bodies_only_where_allowed_and_photo_urls_repeat(state: AppState) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    req, _ = request(state, [b"name=R%C3%A9x&photoUrls=a&photoUrls=b&name=Rex2"], headers)
    assert await read_data(req, form=True) == {"name": "Rex2", "photoUrls": ["a", "b"]}
    req, _ = request(state, [b"name=x"], headers)
    with pytest.raises(UnsupportedMediaType):
        await read_data(req)


async def test_a_body_beyond_max_body_bytes_is_413(state: AppState) -> None:
    req, _ = request(state, [b'"' + b"x" * LIMIT + b'"'], {"Content-Type": "application/json"})
    with pytest.raises(PayloadTooLarge):
        await read_data(req)


async def test_read_model_validates(state: AppState) -> None:
    req, _ = request(state, [b'{"name": "Rex", "photoUrls": []}'], {"Content-Type": "application/json"})
    assert (await read_model(req, PetBody)).name == "Rex"
    req, _ = request(state, [b'{"petId": 1, "shipDate": 1700000000}'], {"Content-Type": "application/json"})
    with pytest.raises(ValidationFailed):
        await read_model(req, OrderBody)


# ------------------------------------------------------------------------- ids, lists, pages


@pytest.mark.parametrize(
    ("raw", "value"), [("0", 0), ("42", 42), (str(MAX_ID + 1), MAX_ID + 1), (str(2**63 - 1), 2**63 - 1), ("007", 7)]
)
def test_path_ids(raw: str, value: int) -> None:
    assert path_id(request(path_params={"petId": raw})[0], "petId", "pet") == value


@pytest.mark.parametrize("raw", ["-1", str(2**63), "x", "", " 1", "+1", "1_0", "\u0663", "1.0", "9" * 5000])
def test_path_ids_that_are_not_int64_are_400(raw: str) -> None:
    with pytest.raises(BadRequest):
        path_id(request(path_params={"petId": raw})[0], "petId", "pet")


@pytest.mark.parametrize(
    ("query", "values"),
    [("", []), ("s=a", ["a"]), ("s=a,b", ["a", "b"]), ("s=a&s=b,c", ["a", "b", "c"]), ("s=a,,%20b,&s=", ["a", "b"])],
)
def test_query_lists_take_both_forms(query: str, values: list[str]) -> None:
    assert query_list(request(query=query)[0], "s") == values


def test_pagination_defaults_and_values() -> None:
    assert pagination(request()[0]) == (100, 0)
    with pytest.raises(BadRequest, match="limit must be an integer"):  # present but empty: not a number
        pagination(request(query="limit=&offset=")[0])
    assert pagination(request(query=f"limit={MAX_LIMIT}&offset=5")[0]) == (MAX_LIMIT, 5)
    assert pagination(request(query="limit=0")[0], default_limit=7) == (0, 0)


@pytest.mark.parametrize(
    "query", ["limit=-1", "offset=-1", f"limit={MAX_LIMIT + 1}", "limit=x", "offset=1.5", f"offset={2**63}", "limit=+5"]
)
def test_bad_pagination_is_400(query: str) -> None:
    with pytest.raises(BadRequest):
        pagination(request(query=query)[0])
