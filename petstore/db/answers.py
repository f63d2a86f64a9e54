"""Pets as the REST reads answer them, built by the database: the JSON of ``PetPublic`` in one query.

Read the ORM way, a pet is three queries (the pet, its category, its tags), a ``Pet`` object
with its relationships, then a ``PetPublic`` validated from it and dumped: about 1.2 ms of CPU,
nearly all of it in Python. Asked for the JSON itself, the database answers in one query what
costs about 0.15 ms, and a page of 100 pets is still one query instead of three and 100
validations. The answer cannot be staler than the database: it is the database's, read in the
request's own query, so a GET right after a committed write shows the write on every instance
without any cache to keep coherent.

The JSON is ``PetPublic``'s: the same keys in the same order (the document's: id, name,
category, photoUrls, tags, status), tags by id, and a missing value an absent key, never null
(``ApiModel._absent_not_null``). On SQLite it is byte for byte what ``JSONResponse`` makes of
the dump (``json_object`` writes no spaces and keeps non-ASCII text as it is);
PostgreSQL's ``json_strip_nulls`` writes the same JSON with its own spacing.
``tests/api/test_answers.py`` compares the two ways for pets of every shape on both databases.

- SQLite (3.38 or later, where the JSON functions are built in): ``json_object``; nulls go
  through ``json_patch('{}', …)``, an RFC 7396 merge patch onto an empty object, which drops
  the keys whose value is null and keeps the others in order. A pet's tags come from a subquery
  ordered by id, the photos from ``json_each`` ordered by their place; SQLite keeps those orders
  in ``json_group_array`` because it does not flatten an ordered subquery into an aggregate.
- PostgreSQL: ``json_build_object`` under ``json_strip_nulls`` (recursive, tags included), and
  ``json_agg(… ORDER BY id)`` for the tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import FromClause
from sqlmodel import SQLModel

import petstore.models  # noqa: F401  (registers the tables)

PET, CATEGORY, TAG, LINK = (SQLModel.metadata.tables[name] for name in ("pet", "category", "tag", "pet_tag"))
#: What an answer query selects from: each pet with its category, when it has one.
PETS_WITH_CATEGORY: FromClause = PET.outerjoin(CATEGORY, CATEGORY.c.id == PET.c.category_id)

JSON_TYPE = "application/json"


def _key(name: str) -> ColumnElement[Any]:
    # A literal, not a bound parameter: PostgreSQL cannot infer a parameter's type in json_build_object.
    return literal_column(f"'{name}'")


def _object(dialect: str, *pairs: tuple[str, ColumnElement[Any]]) -> ColumnElement[Any]:
    """A JSON object of these keys and values, in order, without the keys whose value is null."""
    arguments = [item for name, value in pairs for item in (_key(name), value)]
    if dialect == "postgresql":
        return func.json_build_object(*arguments)  # the nulls go in one json_strip_nulls at the top
    return func.json_patch(literal_column("'{}'"), func.json_object(*arguments))


@cache
def pet_json(dialect: str) -> ColumnElement[str]:
    """The JSON text of the pet of each row of :data:`PETS_WITH_CATEGORY`, as ``PetPublic`` dumps it."""
    category = case(
        (CATEGORY.c.id.is_(None), null()),
        else_=_object(dialect, ("id", CATEGORY.c.id), ("name", CATEGORY.c.name)),
    )
    pet_tags = (LINK.c.pet_id == PET.c.id, TAG.c.id == LINK.c.tag_id)
    if dialect == "postgresql":
        tag: ColumnElement[Any] = func.json_build_object(_key("id"), TAG.c.id, _key("name"), TAG.c.name)
        aggregated = func.json_agg(aggregate_order_by(tag, TAG.c.id))
        tags: ColumnElement[Any] = func.coalesce(
            select(aggregated).where(*pet_tags).scalar_subquery(), literal_column("'[]'::json")
        )
        photo_urls: ColumnElement[Any] = PET.c.photo_urls
    else:
        ordered = select(TAG.c.id, TAG.c.name).where(*pet_tags).order_by(TAG.c.id).correlate(PET).subquery("pet_tags")
        tag = _object(dialect, ("id", ordered.c.id), ("name", ordered.c.name))
        tags = select(func.json_group_array(tag)).scalar_subquery()
        # Re-quoted, not embedded with json(): the column holds what json.dumps wrote, ASCII
        # escapes and all, and the answer must be the model's (non-ASCII text as it is).
        urls = func.json_each(PET.c.photo_urls).table_valued("key", "value")
        listed = select(urls.c.value).order_by(urls.c.key).subquery("photo_urls")
        photo_urls = select(func.json_group_array(listed.c.value)).scalar_subquery()
    answer = _object(
        dialect,
        ("id", PET.c.id),
        ("name", PET.c.name),
        ("category", category),
        ("photoUrls", photo_urls),
        ("tags", tags),
        ("status", PET.c.status),
    )
    # Text, not JSON: the answer goes to the client as it comes, without a json.loads on the way
    # (asyncpg would decode a json column; SQLite's JSON functions return text already).
    if dialect == "postgresql":
        return cast(func.json_strip_nulls(answer), Text).label("answer")
    return type_coerce(answer, Text).label("answer")


def pets_query(dialect: str, *columns: Any) -> Select[Any]:
    """``SELECT <pet JSON>, *columns FROM pet LEFT JOIN category``: add the conditions and the order.

    A statement built once and run with parameters (``bindparam``) is cheaper than one built
    per request: SQLAlchemy computes each new statement's cache key, about as long as SQLite
    takes to answer it."""
    return select(pet_json(dialect), *columns).select_from(PETS_WITH_CATEGORY)


def _dialect(bind: AsyncConnection | AsyncSession) -> str:
    return bind.get_bind().dialect.name if isinstance(bind, AsyncSession) else bind.dialect.name


@cache
def pet_by_id(dialect: str) -> Select[Any]:
    """The JSON of the pet whose id is the parameter ``pet_id`` (no row when there is none)."""
    return pets_query(dialect).where(PET.c.id == bindparam("pet_id"))


async def pet_answer(bind: AsyncConnection | AsyncSession, pet_id: int) -> bytes | None:
    """The JSON of pet ``pet_id``, or None when there is none, read on ``bind``."""
    text = (await bind.execute(pet_by_id(_dialect(bind)), {"pet_id": pet_id})).scalar_one_or_none()
    return None if text is None else text.encode()


def json_array(answers: Sequence[str]) -> bytes:
    """A JSON array of answers (each already JSON text), as one body."""
    return ("[" + ",".join(answers) + "]").encode()
