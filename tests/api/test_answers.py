"""The pets' JSON built by the database (``petstore.db.answers``) is ``PetPublic``'s, for pets of every shape.

The REST reads answer with the database's JSON; events, snapshots and the write answers still dump
``PetPublic``. A client must not see two forms of one pet: each shape below is read both ways and
compared, on SQLite byte for byte (the ETag of a pet is a hash of those bytes) and on PostgreSQL
as JSON with its keys in the same order.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.responses import JSONResponse

from petstore.db import answers
from petstore.db.queries import load_pet
from petstore.models import MAX_ID, PetPublic
from tests.fakes import ApiHarness

API = "/api/v3"

SHAPES: dict[str, dict[str, Any]] = {
    "bare": {"name": "Rex", "photoUrls": []},
    "everything": {
        "name": "Rex",
        "category": {"name": "Dogs"},
        "photoUrls": ["https://example.test/a.png", "/media/b.png"],
        "tags": [{"name": "friendly"}, {"name": "big"}],
        "status": "sold",
    },
    "category by id, no name": {"name": "Rex", "category": {"id": 7071}, "photoUrls": []},
    "tag by id, no name": {"name": "Rex", "photoUrls": [], "tags": [{"id": 9091}, {"name": "named"}]},
    "tags out of id order": {"name": "Rex", "photoUrls": [], "tags": [{"id": 9999}, {"id": 8888}, {"id": 9000}]},
    "text JSON must escape": {
        "name": 'quote " backslash \\ slash / tab \t newline \n bell \x07 del \x7f',
        "category": {"name": "\u2028line separator\u2029"},
        "photoUrls": ["é", "日本", "🐕", ""],
        "tags": [{"name": "<script>&amp;"}],
        "status": "pending",
    },
    "largest id": {"id": MAX_ID, "name": "far", "photoUrls": [], "tags": [{"id": MAX_ID, "name": "t"}]},
    "a hundred photos": {"name": "many", "photoUrls": [f"/media/{n}.png" for n in range(100)]},
}


def _orm_answer(api: ApiHarness, pet_id: int) -> bytes:
    """What the ORM way renders: the pet loaded with its relations, validated, dumped."""

    async def read() -> bytes:
        async with api.state.sessions() as session:
            pet = await load_pet(session, pet_id)
            dumped = PetPublic.model_validate(pet, from_attributes=True).model_dump(mode="json", by_alias=True)
            return bytes(JSONResponse(dumped).body)

    return api.run(read)


def _same(api: ApiHarness, ours: bytes, orm: bytes) -> None:
    if api.state.engine.dialect.name == "sqlite":
        assert ours == orm
    else:
        assert list(json.loads(ours).items()) == list(json.loads(orm).items())


@pytest.mark.parametrize("shape", SHAPES)
def test_a_pet_read_by_id_is_the_json_of_its_public_model(api: ApiHarness, shape: str) -> None:
    pet = api.new_pet(**SHAPES[shape])
    response = api.client.get(f"{API}/pet/{pet['id']}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    _same(api, response.content, _orm_answer(api, pet["id"]))
    assert response.json() == pet  # and what addPet answered (the model's dump of what it wrote)


def test_pages_are_the_json_of_each_pet_in_order(api: ApiHarness) -> None:
    made = [api.new_pet(**SHAPES[shape]) for shape in SHAPES]
    page = api.client.get(f"{API}/pet/findByStatus", params={"status": "available,pending,sold"})
    assert page.status_code == 200
    assert [pet["id"] for pet in page.json()] == sorted(pet["id"] for pet in made)
    for shown, raw in zip(page.json(), _split(page.content), strict=True):
        _same(api, raw, _orm_answer(api, shown["id"]))
    searched = api.client.get(f"{API}/pet/search", params={"sort": "-id"}).json()
    assert searched["items"] == list(reversed(page.json()))
    tagged = api.client.get(f"{API}/pet/findByTags", params={"tags": "friendly,named"}).json()
    assert tagged == [pet for pet in page.json() if {"friendly", "named"} & {t.get("name") for t in pet["tags"]}]


def test_an_empty_page_is_an_empty_array(api: ApiHarness) -> None:
    response = api.client.get(f"{API}/pet/findByTags", params={"tags": "nobody-has-this"})
    assert response.status_code == 200 and response.content == b"[]"
    assert answers.json_array([]) == b"[]"


def test_a_read_right_after_a_write_shows_the_write(api: ApiHarness) -> None:
    """No cache between the answer and the database: each change is in the very next read."""
    pet = api.new_pet("Rex", category={"name": "Dogs"}, tags=[{"name": "a"}])
    tags = api.client.get(f"{API}/pet/{pet['id']}").json()["tags"]
    for n in range(5):
        body = {**pet, "name": f"Rex {n}", "tags": [*tags, {"name": f"t{n}"}], "category": {"name": f"c{n}"}}
        updated = api.client.put(f"{API}/pet", json=body, headers=api.staff.headers).json()
        assert api.client.get(f"{API}/pet/{pet['id']}").json() == updated
        tags = updated["tags"]
    renamed = api.client.put(
        f"{API}/pet",
        json={**updated, "category": {"id": updated["category"]["id"], "name": "renamed"}},
        headers=api.staff.headers,
    ).json()
    assert api.client.get(f"{API}/pet/{pet['id']}").json()["category"] == renamed["category"]
    assert api.client.delete(f"{API}/pet/{pet['id']}", headers=api.staff.headers).status_code == 200
    assert api.client.get(f"{API}/pet/{pet['id']}").status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_the_hot_reads_leave_the_engine_alone(api: ApiHarness) -> None:
    """getPetById and findByStatus run on the reader's own connection (petstore.db.reader)."""
    pet = api.new_pet("Rex")
    with api.count_statements() as counted:
        assert api.client.get(f"{API}/pet/{pet['id']}").json() == pet
        assert api.client.get(f"{API}/pet/findByStatus", params={"status": "available,sold"}).json() == [pet]
        assert api.client.get(f"{API}/pet/findByStatus", params={"status": "sold"}).json() == []
    assert counted.count == 0, counted.statements


def _split(array: bytes) -> list[bytes]:
    """The raw JSON of each element of a JSON array of objects (as the server wrote them)."""
    decoder = json.JSONDecoder()
    text, position, parts = array.decode(), 1, []
    while text[position] != "]":
        _, end = decoder.raw_decode(text, position)
        parts.append(text[position:end].encode())
        position = end + 1 if text[end] == "," else end
    return parts
