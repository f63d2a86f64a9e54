"""Ids are never reused: a pet, order, user or event made without an id never gets one an earlier row had.

A reused id is a deleted pet coming back as another on a dashboard watching ``pet:{id}``, old
orders pointing at a different pet, and an outbox id the broker drops as a repeat. SQLite gives a
new row the largest id in use plus one unless the table is AUTOINCREMENT (revision 0002);
PostgreSQL's sequences never go back unless moved back, as setting them to the largest id in use
after a client-chosen id did. Each test runs on SQLite and PostgreSQL (the ``api`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete

from petstore import db
from petstore.config import Settings
from petstore.db import SEQUENCE_CEILING
from petstore.migrations import alembic_config, migrate
from petstore.models import INT64_MAX, MAX_ID, Category, OutboxEvent, Pet, Tag
from tests.fakes import ApiHarness, assert_error, create_schema

API = "/api/v3"
_names = itertools.count()


@dataclass(frozen=True)
class Resource:
    """How to create (optionally with a chosen id) and delete one kind of row through REST."""

    name: str
    create: Callable[..., dict[str, Any]]
    delete: Callable[[ApiHarness, dict[str, Any]], None]


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _create_order(api: ApiHarness, **fields: Any) -> dict[str, Any]:
    pet = api.new_pet(f"for-order-{next(_names)}")
    body = {"petId": pet["id"], **fields}
    who = api.staff if "id" in fields else api.customer  # only staff choose an order's id
    return _ok(api.client.post(f"{API}/store/order", json=body, headers=who.headers))


def _create_user(api: ApiHarness, **fields: Any) -> dict[str, Any]:
    body = {"username": f"user-{next(_names)}", "password": "s3cret-Passw0rd", **fields}
    return _ok(api.client.post(f"{API}/user", json=body))


def _delete(path: str, who: str) -> Callable[[ApiHarness, dict[str, Any]], None]:
    def delete_row(api: ApiHarness, row: dict[str, Any]) -> None:
        _ok(api.client.delete(f"{API}/{path.format(**row)}", headers=getattr(api, who).headers))

    return delete_row


RESOURCES = [
    Resource("pet", lambda api, **fields: api.new_pet(f"pet-{next(_names)}", **fields), _delete("pet/{id}", "staff")),
    Resource("order", _create_order, _delete("store/order/{id}", "staff")),
    Resource("user", _create_user, _delete("user/{username}", "admin")),
]
each_resource = pytest.mark.parametrize("resource", RESOURCES, ids=[r.name for r in RESOURCES])


@each_resource
def test_the_newest_rows_id_is_not_handed_out_again_after_it_is_deleted(api: ApiHarness, resource: Resource) -> None:
    first = resource.create(api)
    newest = resource.create(api)
    resource.delete(api, newest)
    again = resource.create(api)
    assert again["id"] > newest["id"] > first["id"]


@each_resource
def test_a_client_chosen_free_id_does_not_bring_deleted_ids_back(api: ApiHarness, resource: Resource) -> None:
    """PostgreSQL once set its sequence to the largest id in use after a chosen id: back past deleted rows."""
    rows = [resource.create(api) for _ in range(3)]
    for row in reversed(rows[1:]):
        resource.delete(api, row)
    chosen = resource.create(api, id=rows[1]["id"])  # free again, and a client may choose it
    assert chosen["id"] == rows[1]["id"]
    assert resource.create(api)["id"] > rows[2]["id"]


@each_resource
def test_the_largest_chosen_id_neither_stops_generated_ids_nor_brings_deleted_ones_back(
    api: ApiHarness, resource: Resource
) -> None:
    """SQLite's AUTOINCREMENT alone would go on from a chosen id of MAX_ID, past what JavaScript holds."""
    resource.create(api)
    newest = resource.create(api)
    resource.delete(api, newest)
    assert resource.create(api, id=MAX_ID)["id"] == MAX_ID
    after = resource.create(api)
    assert newest["id"] < after["id"] < SEQUENCE_CEILING <= MAX_ID
    assert newest["id"] < resource.create(api)["id"] < SEQUENCE_CEILING


@each_resource
def test_a_chosen_id_just_below_the_ceiling_still_leaves_generated_ids_within_the_largest(
    api: ApiHarness, resource: Resource
) -> None:
    """A chosen id moves the sequence past it: below the ceiling, the next ids are still ones a browser holds."""
    assert resource.create(api, id=SEQUENCE_CEILING - 1)["id"] == SEQUENCE_CEILING - 1
    assert SEQUENCE_CEILING - 1 < resource.create(api)["id"] <= MAX_ID


@pytest.mark.parametrize("chosen", [MAX_ID + 1, 2**62, INT64_MAX])
def test_ids_past_the_largest_a_javascript_client_holds_are_refused_in_every_body(api: ApiHarness, chosen: int) -> None:
    """The dashboard would show 2**53 + 1 as 2**53 (and send that back): such ids are a 422, nothing made."""
    pet = api.new_pet("for-orders")
    before = api.snapshot()
    for path, who, body in [
        ("pet", api.staff, {"id": chosen, "name": "x", "photoUrls": []}),
        ("pet", api.staff, {"name": "x", "photoUrls": [], "tags": [{"id": chosen, "name": "t"}]}),
        ("pet", api.staff, {"name": "x", "photoUrls": [], "category": {"id": chosen, "name": "c"}}),
        ("store/order", api.staff, {"id": chosen, "petId": pet["id"]}),
        ("store/order", api.customer, {"petId": chosen}),
        ("user", None, {"id": chosen, "username": f"u{next(_names)}", "password": "s3cret-Passw0rd"}),
    ]:
        headers = who.headers if who is not None else {}
        response = api.client.post(f"{API}/{path}", json=body, headers=headers)
        assert_error(response, 422, "validation_error")
        assert str(MAX_ID) in response.json()["message"], response.text
    assert api.snapshot() == before


def test_rows_from_before_ids_stopped_at_the_javascript_limit_are_still_served(api: ApiHarness) -> None:
    """A database written when ids went up to int64 keeps its rows: found, listed, changed and deleted by id."""
    legacy = 2**60

    async def add_legacy_pet() -> None:
        async with api.state.sessions() as session, session.begin():
            category = Category(id=legacy, name="old-category")
            tag = Tag(id=legacy, name="old-tag")
            session.add(Pet(id=legacy, name="Old", photo_urls=[], status="available", category=category, tags=[tag]))

    api.run(add_legacy_pet)
    pet = _ok(api.client.get(f"{API}/pet/{legacy}"))
    assert (pet["id"], pet["category"]["id"], pet["tags"][0]["id"]) == (legacy, legacy, legacy)
    listed = api.client.get(f"{API}/pet/findByStatus", params={"status": "available"}).json()
    assert legacy in [row["id"] for row in listed]
    renamed = api.client.post(f"{API}/pet/{legacy}", params={"name": "Older"}, headers=api.staff.headers)
    assert _ok(renamed)["name"] == "Older"
    assert api.client.delete(f"{API}/pet/{legacy}", headers=api.staff.headers).status_code == 200
    assert api.client.get(f"{API}/pet/{legacy}").status_code == 404


def test_outbox_ids_go_on_after_published_events_are_deleted(api: ApiHarness) -> None:
    """The broker ignores an outbox id it has seen (a retried publish): a reused one would be lost."""
    api.new_pet("before")
    seen = max(row.id for row in api.rows(OutboxEvent))

    async def prune() -> None:  # what the relay does to rows published an hour ago
        async with api.state.sessions() as session:
            await session.execute(delete(OutboxEvent))
            await session.commit()

    api.run(prune)
    api.new_pet("after")
    assert min(row.id for row in api.rows(OutboxEvent)) > seen


# ------------------------------------------------------------------------------ revision 0002 on SQLite

#: Categories and tags are never deleted: their ids cannot come back, so they stay as they were.
NEVER_REUSED = ("pet", "purchase_order", "users", "outbox")


def _sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in tables
            if not table.startswith(("sqlite_", "alembic_"))
        }


def _is_autoincrement(path: Path, table: str) -> bool:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    return "AUTOINCREMENT" in sql


def _fill_at_revision_0001(path: Path) -> None:
    """A store in use before revision 0002: rows in every table, and pets a client gave the largest ids."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO category (id, name) VALUES (1, 'dogs')")
        conn.executemany("INSERT INTO tag (id, name) VALUES (?, ?)", [(1, "small"), (2, "loud")])
        pets = [
            (1, "Rex", "available", 1),
            (2, "Tom", "pending", None),
            (3, "Max", "sold", 1),
            (MAX_ID - 5, "High", "available", None),
            (INT64_MAX, "Top", "available", None),
        ]
        conn.executemany("INSERT INTO pet (id, name, status, category_id, photo_urls) VALUES (?, ?, ?, ?, '[]')", pets)
        conn.executemany("INSERT INTO pet_tag (pet_id, tag_id) VALUES (?, ?)", [(1, 1), (1, 2), (3, 2)])
        conn.execute("INSERT INTO users (id, username, password_hash, role) VALUES (7, 'ann', 'x', 'customer')")
        conn.execute(
            "INSERT INTO purchase_order (id, pet_id, quantity, status, complete, user_id)"
            " VALUES (4, 2, 1, 'placed', 0, 7)"
        )
        conn.execute(
            "INSERT INTO outbox (id, event, rooms, data, created_at)"
            " VALUES (9, 'pet.created', '[\"pets\"]', '{}', '2026-01-01')"
        )


def test_revision_0002_keeps_every_row_and_then_never_reuses_the_newest_deleted_id(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate(url, "0001")
    _fill_at_revision_0001(path)
    before = _sqlite_rows(path)

    migrate(url, "0002")
    assert _sqlite_rows(path) == before  # pet_tag too: no cascade from rebuilding pet, no SET NULL from users
    assert all(_is_autoincrement(path, table) for table in NEVER_REUSED)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        # Where SQLite's own counter goes on from: the largest id below petstore.db's ceiling.
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'pet'").fetchone() == (3,)

    async def delete_newest_then_add() -> int:
        engine = db.create_engine(Settings(database_url=url, plugins=(), env="test"))
        try:
            sessions = db.create_sessionmaker(engine)
            async with sessions() as session:
                await session.execute(delete(Pet).where(Pet.id == 3))  # type: ignore[arg-type]
                await session.commit()
            async with sessions() as session:
                pet = Pet(name="New", status="available")
                session.add(pet)
                await session.commit()
                assert pet.id is not None
                return pet.id
        finally:
            await engine.dispose()

    # Past the deleted 3, and not on from the clients' MAX_ID - 5 or INT64_MAX; with the later
    # revisions too, so that the models of today can write.
    migrate(url)
    assert asyncio.run(delete_newest_then_add()) == 4

    command.downgrade(alembic_config(url), "0002")
    in_use = _sqlite_rows(path)
    command.downgrade(alembic_config(url), "0001")
    assert _sqlite_rows(path) == in_use
    assert not any(_is_autoincrement(path, table) for table in NEVER_REUSED)


def test_the_models_and_the_migrations_make_the_same_autoincrement_tables(tmp_path: Path) -> None:
    """Autogenerate does not compare AUTOINCREMENT: the two ways of making a schema are compared here."""
    migrated, created = tmp_path / "migrated.db", tmp_path / "created.db"
    migrate(f"sqlite+aiosqlite:///{migrated}")
    asyncio.run(create_schema(f"sqlite+aiosqlite:///{created}"))
    for path in (migrated, created):
        autoincrement = {table for table in (*NEVER_REUSED, "category", "tag") if _is_autoincrement(path, table)}
        assert autoincrement == set(NEVER_REUSED)
