"""``GET /pet/search``: pets by name, status, category and tag, one page at a time (an extension).

Pages are keyset pages, not offsets: the cursor of the next page holds the sort key and the id of
the last pet shown, and that page starts strictly after it, in the index order of the sort
(``ix_pet_name_id``, ``ix_pet_status_id``, the primary key: migration 0004). So a page costs the
same on the thousandth page as on the first, and pets created or deleted between two requests
move no other pet across a page boundary: no pet that exists throughout a walk is shown twice or
skipped. (A pet *renamed* during a walk sorted by name may move: its key changed.)

``total`` counts the matches (every page, not this one) up to :data:`EXACT_UP_TO` and stops
there: a count of every match of a broad filter would cost what a scan of the table costs, on
every page. Beyond, it is an estimate, extrapolated along the ids (see :func:`_total`), and
``total_exact`` is false.
"""

from __future__ import annotations

import base64
import binascii
import json
from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, collate, func, literal_column, null, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from starlette.requests import Request
from starlette.responses import Response

from petstore.api.caching import conditional
from petstore.api.inputs import LISTED_NAME, MAX_LIMIT, check_names, query_integer, query_list
from petstore.db import answers, fulltext, pet_version
from petstore.db.reader import Reader
from petstore.errors import BadRequest
from petstore.models import INT64_MAX, Category, Pet, PetStatus, PetTagLink, Tag
from petstore.operations import Param, operation, ref
from petstore.routing import route_path
from petstore.state import app_state

#: ``total`` is exact up to this many matches, an estimate beyond.
EXACT_UP_TO = 10_000
DEFAULT_LIMIT = 100
#: Longer than any cursor this module writes (a 255-character name, escaped, and an id).
MAX_CURSOR = 2048
NAME = {"type": "string", "maxLength": 255, "pattern": "^[^\\x00]*$"}


def ordered_name(dialect: str) -> ColumnElement[str]:
    """The pet's name as the search orders it: by code point on every database (SQLite's BINARY
    collation; ``COLLATE "C"`` on PostgreSQL, whose database collation may be a language's), so
    that a client can place a row where the server would (migration 0005)."""
    name: ColumnElement[str] = answers.PET.c.name
    return collate(name, "C") if dialect == "postgresql" else name


@dataclass(frozen=True)
class Sort:
    """One ``sort`` value: by name (then id) or by id alone, either way up."""

    by_name: bool
    descending: bool

    def order(self, dialect: str) -> list[Any]:
        columns = [ordered_name(dialect), col(Pet.id)] if self.by_name else [col(Pet.id)]
        return [c.desc() for c in columns] if self.descending else columns

    def after(self, dialect: str, key: tuple[Any, ...]) -> ColumnElement[bool]:
        """The pets strictly after ``key`` (the last one shown) in this order."""
        if self.by_name:
            row, last = tuple_(ordered_name(dialect), col(Pet.id)), tuple_(*key)
            return row < last if self.descending else row > last
        last_id: int = key[0]
        return col(Pet.id) < last_id if self.descending else col(Pet.id) > last_id

    def key(self, pet: Any) -> tuple[Any, ...]:
        """Where the page after ``pet`` (anything with its ``name`` and ``id``) starts."""
        return (pet.name, pet.id) if self.by_name else (pet.id,)


SORTS = {
    "id": Sort(by_name=False, descending=False),
    "-id": Sort(by_name=False, descending=True),
    "name": Sort(by_name=True, descending=False),
    "-name": Sort(by_name=True, descending=True),
}


# --- the cursor: opaque to clients, checked here --------------------------------------------


def encode_cursor(sort: str, key: tuple[Any, ...]) -> str:
    raw = json.dumps([sort, *key], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _bad_cursor(why: str) -> BadRequest:
    return BadRequest(f"invalid cursor: {why}; use the `next` of the previous page as it came, or leave cursor out")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, ...]:
    """The key a cursor of :func:`encode_cursor` holds, if it is one for ``sort``: 400 otherwise."""
    if not cursor or len(cursor) > MAX_CURSOR:
        raise _bad_cursor("empty or too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _bad_cursor("not one this server wrote") from None
    if not isinstance(decoded, list) or not decoded or decoded[0] not in SORTS:
        raise _bad_cursor("not one this server wrote")
    if decoded[0] != sort:
        raise _bad_cursor(f"it continues sort={decoded[0]}, not sort={sort}")
    key = tuple(decoded[1:])
    last_id = key[-1] if key else None
    if not isinstance(last_id, int) or isinstance(last_id, bool) or not 0 <= last_id <= INT64_MAX:
        raise _bad_cursor("not one this server wrote")
    if SORTS[sort].by_name:
        if len(key) != 2 or not isinstance(key[0], str) or len(key[0]) > 255 or "\x00" in key[0]:
            raise _bad_cursor("not one this server wrote")
    elif len(key) != 1:
        raise _bad_cursor("not one this server wrote")
    return key


# --- the filters ----------------------------------------------------------------------------


def _like_pattern(q: str) -> str:
    """``q`` anywhere in a name, its own ``%``, ``_`` and ``\\`` taken literally (``ESCAPE '\\'``)."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True)
class Filters:
    """What ``q``, ``status``, ``category`` and ``tag`` ask for, checked (see :func:`read_filters`)."""

    q: str = ""
    statuses: tuple[str, ...] = ()
    category: str | None = None
    tags: tuple[str, ...] = ()

    async def matching(self, session: AsyncSession, name_index: bool) -> Matching:
        """The pets these filters match, their names resolved to ids in ``session``;
        ``name_index``: the database has SQLite's trigram table (:mod:`petstore.db.fulltext`)."""
        category_ids = await self._ids(session, Category, (self.category,) if self.category is not None else ())
        tag_ids = await self._ids(session, Tag, self.tags)
        conditions = self.conditions(name_index, category_ids)
        # None: not asked (any); (): asked, and no such name (none).
        asked = (tuple(category_ids) if self.category is not None else None, tuple(tag_ids) if self.tags else None)
        key = (self.q, name_index, self.statuses, *asked)
        if len(tag_ids) == 1:
            return Matching(conditions, tag_ids[0], key, bool(self.q))
        if self.tags:
            # Several tags (or none of that name: SQLAlchemy's empty IN, false): any of them.
            conditions.append(
                col(Pet.id).in_(select(col(PetTagLink.pet_id)).where(col(PetTagLink.tag_id).in_(tag_ids)))
            )
        return Matching(conditions, None, key, bool(self.q))

    def conditions(self, name_index: bool, category_ids: Sequence[int] = ()) -> list[ColumnElement[bool]]:
        """The WHERE of the search but for tags (:meth:`matching` adds them); ``name_index``: the
        database has SQLite's trigram table, which then answers ``q`` of three characters or more;
        ``category_ids``: the ids of the categories named ``category``."""
        conditions: list[ColumnElement[bool]] = []
        if self.q and name_index and len(self.q) >= fulltext.SHORTEST:
            conditions.append(col(Pet.id).in_(fulltext.matching(self.q)))
        elif self.q:
            # ILIKE on PostgreSQL (migration 0004's trigram index serves it), lower() LIKE lower() on SQLite.
            conditions.append(col(Pet.name).ilike(_like_pattern(self.q), escape="\\"))
        if self.statuses:
            conditions.append(col(Pet.status).in_(self.statuses))
        if self.category is not None:
            # The ids, not a subquery: with one id (the usual case: names are rarely shared), the
            # pets' category_id index gives them in id order, so a page, and the count's walk,
            # read the index alone. Through ``IN (SELECT ...)`` SQLite scanned the table by id,
            # testing each pet: 4.2 against 0.9 ms for the count at 100,000 pets.
            if len(category_ids) == 1:
                conditions.append(col(Pet.category_id) == category_ids[0])
            else:
                conditions.append(col(Pet.category_id).in_(category_ids))  # none: SQLAlchemy's empty IN, false
        return conditions

    @staticmethod
    async def _ids(session: AsyncSession, model: type[Category] | type[Tag], names: Sequence[str]) -> list[int]:
        """The ids of the categories or tags with these names, in id order (none asked: none)."""
        if not names:
            return []
        named = select(col(model.id)).where(col(model.name).in_(names)).order_by(col(model.id))
        return [found for found in (await session.execute(named)).scalars() if found is not None]


#: The tag links of the one tag a search asks for, joined to the pets (an alias: the pets' JSON
#: reads ``pet_tag`` too, for each pet's tags).
TAGGED = answers.LINK.alias("tagged")


@dataclass(frozen=True)
class Matching:
    """The pets a search matches: ``conditions`` on them, and the one tag they have, if one.

    One tag (the usual case) drives the search: its links, in ``ix_pet_tag_tag_id`` order (tag,
    then pet id), are the matches in id order, so a page reads as many links as it shows and the
    count reads the index alone. Through ``pet.id IN (SELECT pet_id ...)`` SQLite first gathered
    every pet of the tag: at 100,000 pets, 7 ms for a page of ``tag=calm`` against 0.09 ms, and
    9 against 1.4 ms for the count (docs/benchmarks.md)."""

    conditions: list[ColumnElement[bool]]
    tag_id: int | None
    #: What the pets are matched on, for :meth:`Reader.kept <petstore.db.reader.Reader.kept>`:
    #: the filters with every name resolved to its ids.
    key: Hashable = None
    #: Whether the pets' names are matched against ``q`` (which a trigram index finds).
    q: bool = False

    def page(self, dialect: str, sort: Sort, key: tuple[Any, ...] | None, limit: int, dense: bool) -> Select[Any]:
        """The page's pets as their JSON (:mod:`petstore.db.answers`), with the name and id of each
        for the cursor, one more than ``limit`` (whether there is a next page, without a query of
        its own); ``dense``: the tag is held by enough pets that testing each pet in name order
        finds a page sooner than gathering them all (see :func:`_dense`)."""
        if self.tag_id is not None and not sort.by_name:
            # In the links' order: the same pets in the same order as by pet id, from the index.
            query = answers.pets_query(dialect, col(Pet.name), col(Pet.id)).where(*self.conditions)
            linked = TAGGED.c.pet_id
            query = query.join(TAGGED, linked == col(Pet.id)).where(TAGGED.c.tag_id == self.tag_id)
            if key is not None:
                # On the pet's id too: the planners carry the join's equality but not a range across
                # it, and PostgreSQL's merge join read the pets from the first for a page half way
                # (tag=calm at 100,000 pets: 50,000 pets, 18 ms).
                after = [linked, col(Pet.id)]
                query = query.where(*(c < key[0] if sort.descending else c > key[0] for c in after))
            return query.order_by(linked.desc() if sort.descending else linked).limit(limit + 1)
        if not sort.by_name:
            query = answers.pets_query(dialect, col(Pet.name), col(Pet.id)).where(*self.conditions)
            if key is not None:
                query = query.where(sort.after(dialect, key))
            return query.order_by(*sort.order(dialect)).limit(limit + 1)
        # By name, the page's ids first, then their JSON: a sort keeps whole rows, and SQLite
        # builds a row's columns before sorting it, so a sort of every match of ``q`` built every
        # match's JSON (2,024 of them for q=rex at 100,000 pets: 4.8 against 3.2 ms a page, most
        # of what is left the trigram match and the sort of the 2,024 names).
        ids = select(col(Pet.id)).where(*self.conditions).correlate(None)
        if self.tag_id is not None:
            links = select(TAGGED.c.pet_id).where(TAGGED.c.tag_id == self.tag_id)
            if dense:
                ids = ids.where(links.where(TAGGED.c.pet_id == col(Pet.id)).exists())
            else:
                ids = ids.where(col(Pet.id).in_(links))
        if key is not None:
            ids = ids.where(sort.after(dialect, key))
        if dialect == "postgresql" and self.q and not dense:
            # Few pets match q: their names from the trigram index, then sorted. Left to itself the
            # planner walks the name index testing each name, expecting matches spread over it,
            # and they are not: a part of a name sits in names alike, which sort together (q=rex
            # at 100,000 pets walked 80,000 names, 39 ms, for what the trigram index finds in 2).
            # OFFSET 0 keeps it from planning the matches and the order together.
            found = ids.add_columns(ordered_name(dialect).label("name")).offset(0).subquery()
            order = [found.c.name, found.c.id]
            ids = select(found.c.id).order_by(*(c.desc() for c in order) if sort.descending else order)
        else:
            ids = ids.order_by(*sort.order(dialect))
        ids = ids.limit(limit + 1)
        query = answers.pets_query(dialect, col(Pet.name), col(Pet.id)).where(col(Pet.id).in_(ids))
        return query.order_by(*sort.order(dialect))

    def names(self) -> Select[Any]:
        """Every match's name and id, in no order (for :func:`_in_order`)."""
        columns: list[Any] = [col(Pet.name), col(Pet.id)]
        names: Select[Any] = select(*columns).where(*self.conditions)
        if self.tag_id is not None:
            names = names.where(col(Pet.id).in_(select(TAGGED.c.pet_id).where(TAGGED.c.tag_id == self.tag_id)))
        return names

    def walk(self) -> Select[Any]:
        """The matches' ids in id order (for :func:`_total`), from the tag's links where there is one."""
        if self.tag_id is None:
            return select(col(Pet.id).label("id")).where(*self.conditions).order_by(col(Pet.id))
        linked = TAGGED.c.pet_id
        walked = select(linked.label("id")).where(TAGGED.c.tag_id == self.tag_id)
        if self.conditions:  # else the links alone: every link is of a pet (ON DELETE CASCADE)
            walked = walked.join(Pet, col(Pet.id) == linked).where(*self.conditions)
        return walked.order_by(linked)


def read_filters(request: Request) -> Filters:
    """The query's ``q``, ``status``, ``category`` and ``tag``: 400 on any bad one."""
    params = request.query_params
    if len(params.getlist("q")) > 1:
        raise BadRequest("invalid q: give it once")
    q = check_names([params.get("q", "")], "q")[0]
    statuses: list[str] = []
    if "status" in params:
        statuses = query_list(request, "status")
        if not statuses:
            raise BadRequest("invalid status value: empty (leave status out for every status)")
        invalid = [s for s in statuses if s not in PetStatus.__members__]
        if invalid:
            raise BadRequest(f"invalid status value: {invalid[0][:40]!r} (use available, pending or sold)")
    category = None
    if "category" in params:
        categories = params.getlist("category")
        if len(categories) > 1:
            raise BadRequest("invalid category value: give one category name")
        if not categories[0]:
            raise BadRequest("invalid category value: empty (leave category out for every category)")
        category = check_names(categories, "category")[0]
    tags: list[str] = []
    if "tag" in params:
        tags = check_names(query_list(request, "tag"), "tag")
        if not tags:
            raise BadRequest("invalid tag value: empty (leave tag out for every pet)")
    return Filters(q, tuple(statuses), category, tuple(tags))


def _sort(request: Request) -> str:
    sort = request.query_params.get("sort", "id")
    if sort not in SORTS:
        raise BadRequest(f"invalid sort: {sort[:40]!r} (use id, -id, name or -name)")
    return sort


# --- counting ---------------------------------------------------------------------------------


async def _total(session: AsyncSession, matching: Matching, versioned: bool) -> tuple[tuple[int, bool], int | None]:
    """How many pets match and whether that is exact; with ``versioned``, also the version of
    pets the count's own snapshot saw (:data:`petstore.db.pet_version.SEEN`, for
    :meth:`Reader.kept <petstore.db.reader.Reader.kept>`), else None.

    The count walks the matches in id order and stops after ``EXACT_UP_TO + 1``: exact up to
    that, and a bounded cost on every page however many match. Past it, the matches are assumed
    as dense in the rest of the ids as in the part walked: ``walked * (id span of every pet) /
    (id span walked)``. That is close for a filter spread evenly over the ids (ids follow
    creation), and errs when the matches bunch up (pets created in a batch that all match): a
    figure for "about 48,000", not for arithmetic. It is never below what was counted, nor above
    the number of pets (:func:`_pets_at_most`: a client may choose an id far past the others).
    """
    walked = matching.walk().limit(EXACT_UP_TO + 1).subquery()
    seen = literal_column(pet_version.SEEN) if versioned else null()
    counted, first_id, last_id, version = (
        await session.execute(select(func.count(), func.min(walked.c.id), func.max(walked.c.id), seen))
    ).one()
    if counted <= EXACT_UP_TO:
        return (counted, True), version
    high = (await session.execute(select(func.max(col(Pet.id))))).scalar_one()
    estimate = counted * (high - first_id + 1) // (last_id - first_id + 1)
    ceiling = await _pets_at_most(session)
    if ceiling is not None:
        estimate = min(estimate, ceiling)
    return (max(estimate, counted), False), version


async def _pets_at_most(session: AsyncSession) -> int | None:
    """How many pets there are, cheaply: SQLite counts them (its count of a whole table reads the
    smallest index, a millisecond at 100,000 rows); PostgreSQL's count would read the table, so it
    is the planner's row count of its last ``ANALYZE`` (None before the first)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        rows = (await session.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'pet'::regclass"))).scalar()
        return int(rows) if rows is not None and rows >= 0 else None
    return int((await session.execute(select(func.count()).select_from(Pet))).scalar_one())


# --- pages from the matches kept in order ----------------------------------------------------

#: The keys (:meth:`Sort.key`) of every match, in order.
Keys = list[tuple[Any, ...]]


def _kept_order(sort: Sort, matching: Matching, total: int, exact: bool, limit: int, dense: bool) -> bool:
    """Whether the page is found in the matches kept in order (:func:`_in_order`): where they are
    gathered before they are ordered (``q`` from a trigram index, by id too; a tag few pets hold,
    by name), however many pages there are, but never where that would be more to keep than
    :data:`EXACT_UP_TO` pets."""
    gathered = matching.q or (sort.by_name and matching.tag_id is not None)
    return bool(gathered) and exact and total > limit and not dense


async def _in_order(reader: Reader, session: AsyncSession, matching: Matching, sort: Sort) -> Keys:
    """Every match's key for ``sort`` (``(name, id)`` or ``(id,)``), in ascending order, kept until
    the pets change (as the count is).

    Where the matches are gathered before they are ordered (see :func:`_kept_order`), every page
    gathered and sorted them all again: 2,024 names for q=rex at 100,000 pets, 3 ms a page on
    SQLite and 8 on PostgreSQL against 0.1 for a page of every pet. Kept, a page is found by
    bisection and its pets read by id. Python orders strings by code point, as the search does on
    both databases (:func:`ordered_name`), so these keys and the database's agree, and so do the
    cursors of the two ways."""

    async def compute(versioned: bool) -> tuple[Keys, int | None]:
        query = matching.names()
        if versioned:
            query = query.add_columns(literal_column(pet_version.SEEN))
        rows = (await session.execute(query)).all()
        seen = rows[0][2] if versioned and rows else None  # none: not kept, nothing tells the version
        if sort.by_name:
            return sorted((name, pet_id) for name, pet_id, *_ in rows), seen
        return sorted((pet_id,) for _, pet_id, *_ in rows), seen

    return await reader.kept(("search in order", sort.by_name, matching.key), compute, size=len)


def _shown(in_order: Keys, sort: Sort, key: tuple[Any, ...] | None, limit: int) -> Keys:
    """The keys of the page after ``key`` (and one more, if there is one), in ``sort``'s order."""
    if not sort.descending:
        start = 0 if key is None else bisect_right(in_order, tuple(key))
        return in_order[start : start + limit + 1]
    end = len(in_order) if key is None else bisect_left(in_order, tuple(key))
    return in_order[max(0, end - limit - 1) : end][::-1]


@cache
def _pets_by_id(dialect: str, sort: Sort) -> Select[Any]:
    """The JSON, name and id of the pets whose ids are the parameter ``ids``, in ``sort``'s order."""
    query = answers.pets_query(dialect, col(Pet.name), col(Pet.id))
    return query.where(col(Pet.id).in_(bindparam("ids", expanding=True))).order_by(*sort.order(dialect))


# --- the operation ----------------------------------------------------------------------------


def _next_link(request: Request, cursor: str) -> str:
    """The absolute URL of the next page: this one's, behind ``root_path`` too, with the new cursor."""
    root = request.scope.get("root_path", "").rstrip("/")
    url = request.url.replace(path=root + route_path(request.scope))
    return str(url.include_query_params(cursor=cursor))


async def _dense(session: AsyncSession, matching: Matching, total: int, limit: int) -> bool:
    """Whether a page is found sooner by testing each pet in the page's order (about ``limit *
    pets / matches`` tests) than by gathering every match first (``matches``, which the kept order
    of :func:`_in_order` also costs after each change to the pets).

    In id order only PostgreSQL's ``q`` is weighed: its planner walks the ids testing each name
    where that is quicker, and SQLite gathers the trigram table's matches either way. In name
    order it is made here where a planner cannot make it: SQLite gathers a tag's pets either way
    (PostgreSQL weighs a tag's semi-join by its own statistics), and PostgreSQL, for ``q``,
    expects the matches spread evenly over the name order, which they are not (see
    :meth:`Matching.page`). The highest id stands for the number of pets (an index's last entry,
    where a count would read them all)."""
    postgres = session.get_bind().dialect.name == "postgresql"
    if not (matching.q if postgres else matching.tag_id is not None):
        return False
    pets = (await session.execute(select(func.max(col(Pet.id))))).scalar_one() or 0
    return total * total > (limit + 1) * pets


@operation(
    "GET",
    "/pet/search",
    "searchPets",
    permission=None,
    tag="pet",
    summary="Searches pets, a page at a time.",
    description="Pets whose name contains `q` (any case), with any of the statuses and tags given, in the "
    "category named. Every filter is optional; `status` and `tag` take `a,b` and repeated parameters alike. "
    "Pages are keyset pages: follow `next` (or the `Link` header) with the same filters and sort; pets "
    "created or deleted meanwhile never make another appear twice or be skipped. `total` counts the matches "
    "of every page, exactly up to 10,000, estimated beyond (`total_exact` false). (Not in the Petstore document.)",
    params=(
        Param("q", "query", NAME, "Part of the name, in any case (empty: any name)"),
        Param("status", "query", {"type": "array", "items": ref("PetStatus")}, "Any of these statuses (default: all)"),
        Param("category", "query", NAME | {"minLength": 1}, "The name of the pets' category"),
        Param("tag", "query", {"type": "array", "items": LISTED_NAME}, "Pets with any of these tags"),
        Param(
            "sort",
            "query",
            {"type": "string", "enum": list(SORTS), "default": "id"},
            "By id or name (then id), `-` for descending",
        ),
        Param(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            "At most this many pets on the page",
        ),
        Param(
            "cursor",
            "query",
            {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR, "pattern": "^[A-Za-z0-9_-]+$"},
            "Where the page starts: the `next` of the previous page, as it came",
        ),
    ),
    ok=ref("PetPage"),
    ok_headers={
        "Link": {
            "description": 'The absolute URL of the next page, `<…>; rel="next"`; absent on the last page',
            "schema": {"type": "string"},
        }
    },
    errors={400: "Invalid q, status, category, tag, sort, limit or cursor"},
    etag=True,
)
async def search_pets(request: Request) -> Response:
    wanted = read_filters(request)
    sort_name = _sort(request)
    sort = SORTS[sort_name]
    limit = query_integer(request, "limit", DEFAULT_LIMIT, MAX_LIMIT, minimum=1)
    if "offset" in request.query_params:
        raise BadRequest("offset is not taken here: follow the `next` cursor of each page")
    cursor = request.query_params.get("cursor")
    key = decode_cursor(cursor, sort_name) if cursor is not None else None
    state = app_state(request)
    async with state.sessions() as session:
        connection = await session.connection()
        name_index = bool(connection.info.get(fulltext.INFO_KEY))
        matching = await wanted.matching(session, name_index)
        # The count walks up to 10,001 matches (a millisecond at 100,000 pets): kept until the next commit.
        total, exact = await state.reader.kept(
            ("search total", matching.key), lambda versioned: _total(session, matching, versioned)
        )
        dense = (sort.by_name or matching.q) and await _dense(session, matching, total, limit)
        dialect = connection.dialect.name
        pets: list[Any] | None = None
        if _kept_order(sort, matching, total, exact, limit, dense):
            shown = _shown(await _in_order(state.reader, session, matching, sort), sort, key, limit)
            ids = [shown_key[-1] for shown_key in shown]
            pets = list((await session.execute(_pets_by_id(dialect, sort), {"ids": ids})).all())
            if [sort.key(pet) for pet in pets] != shown:
                pets = None  # a change committed since the version was read: the page as below
        if pets is None:
            pets = list((await session.execute(matching.page(dialect, sort, key, limit, dense))).all())
    more = len(pets) > limit
    pets = pets[:limit]
    next_cursor = encode_cursor(sort_name, sort.key(pets[-1])) if more else None
    # The items are the database's JSON as it came (a PetPage, keys in the schema's order).
    items = answers.json_array([pet.answer for pet in pets])
    rest = f',"next":{json.dumps(next_cursor)},"total":{total},"total_exact":{json.dumps(exact)}}}'
    response = Response(b'{"items":' + items + rest.encode(), media_type=answers.JSON_TYPE)
    if next_cursor is not None:
        response.headers["Link"] = f'<{_next_link(request, next_cursor)}>; rel="next"'
    return conditional(request, response)
