"""The public models: the exact JSON each one gives for a row, which the REST answers and the
event payloads both send. Shared bases must not leak a table's or a body's field into it."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from petstore.models import (
    MAX_ID,
    Category,
    CategoryPublic,
    Order,
    OrderPublic,
    Pet,
    PetPublic,
    Tag,
    TagPublic,
    User,
    UserBody,
    UserPublic,
)


def wire(model: type[BaseModel], row: Any) -> str:
    """The JSON text of ``row`` as an answer or an event carries it: keys, order, omissions."""
    public = model.model_validate(row, from_attributes=True)
    return json.dumps(public.model_dump(mode="json", by_alias=True), separators=(",", ":"))


def full_pet() -> Pet:
    return Pet(
        id=7,
        name="Rex",
        status="pending",
        category_id=3,
        photo_urls=["/media/pets/7/a.png", "http://x/b.png"],
        category=Category(id=3, name="Dogs"),
        tags=[Tag(id=9, name="zeta"), Tag(id=2, name="alpha")],
    )


def test_a_pet_shows_every_field_in_the_documents_order_and_no_column_of_its_own() -> None:
    assert wire(PetPublic, full_pet()) == (
        '{"id":7,"name":"Rex","category":{"id":3,"name":"Dogs"},'
        '"photoUrls":["/media/pets/7/a.png","http://x/b.png"],'
        '"tags":[{"id":2,"name":"alpha"},{"id":9,"name":"zeta"}],"status":"pending"}'
    )


def test_what_a_pet_lacks_is_an_absent_key_never_null() -> None:
    pet = Pet(id=8, name="Bare", status="available", photo_urls=[], category=None, tags=[Tag(id=5)])
    assert wire(PetPublic, pet) == '{"id":8,"name":"Bare","photoUrls":[],"tags":[{"id":5}],"status":"available"}'
    assert wire(CategoryPublic, Category(id=4)) == '{"id":4}'
    assert wire(TagPublic, Tag(name="calm")) == '{"name":"calm"}'


def test_a_pets_tags_are_shown_by_id_however_the_row_holds_them() -> None:
    pet = full_pet()
    pet.tags = [Tag(id=30, name="c"), Tag(id=1, name="a"), Tag(id=20, name="b")]
    assert [tag["id"] for tag in json.loads(wire(PetPublic, pet))["tags"]] == [1, 20, 30]


def test_an_order_shows_every_field_and_not_its_owner() -> None:
    order = Order(
        id=5,
        pet_id=7,
        quantity=2,
        ship_date=datetime(2030, 1, 2, 1, 4, 5),  # as SQLite gives it back: no zone, stored in UTC
        status="approved",
        complete=False,
        user_id=3,
    )
    assert wire(OrderPublic, order) == (
        '{"id":5,"petId":7,"quantity":2,"shipDate":"2030-01-02T01:04:05Z","status":"approved","complete":false}'
    )
    order.ship_date = None
    assert wire(OrderPublic, order) == '{"id":5,"petId":7,"quantity":2,"status":"approved","complete":false}'


def test_a_user_shows_every_field_but_never_the_password_hash_or_the_role() -> None:
    user = User(
        id=321,
        username="maxi",
        first_name="Max",
        last_name="Imum",
        email="",
        phone="123",
        user_status=0,
        password_hash="$argon2id$secret",
        role="admin",
    )
    assert wire(UserPublic, user) == (
        '{"id":321,"username":"maxi","firstName":"Max","lastName":"Imum","email":"","phone":"123","userStatus":0}'
    )
    bare = User(id=4, username="minnie", password_hash="$argon2id$secret", role="customer")
    assert wire(UserPublic, bare) == '{"id":4,"username":"minnie"}'


def test_no_public_model_declares_a_field_only_a_table_or_a_body_may_hold() -> None:
    private = {"password", "password_hash", "role", "user_id", "category_id"}
    for model in (PetPublic, CategoryPublic, TagPublic, OrderPublic, UserPublic):
        assert not private & set(model.model_fields), model


def test_a_row_is_shown_as_stored_even_past_limits_set_since() -> None:
    """Reads check types, not the bodies' write constraints: an older database's rows stay readable."""
    big = MAX_ID + 10
    pet = Pet(
        id=big,
        name="Old",
        status="available",
        photo_urls=[f"/p/{n}.png" for n in range(101)],
        category=Category(id=big, name="Old"),
        tags=[Tag(id=big, name="old")],
    )
    shown = json.loads(wire(PetPublic, pet))
    assert (shown["id"], shown["category"]["id"], shown["tags"][0]["id"]) == (big, big, big)
    assert len(shown["photoUrls"]) == 101
    order = Order(id=big, pet_id=big, quantity=1, status="placed", complete=False)
    assert json.loads(wire(OrderPublic, order))["petId"] == big


def test_a_user_row_takes_the_bodys_fields_and_only_a_hash_of_its_password() -> None:
    body = UserBody(username="maxi", first_name="Max", email="m@x", password="pw", phone="1", user_status=2)
    user = User.model_validate(body, update={"password_hash": "hash", "role": "customer"})
    assert (user.id, user.username, user.first_name, user.last_name, user.email) == (None, "maxi", "Max", None, "m@x")
    assert (user.phone, user.user_status, user.password_hash, user.role) == ("1", 2, "hash", "customer")
    assert "password" not in vars(user)
