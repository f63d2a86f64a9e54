"""``GET /pet/search``: filters, orders, keyset pages that stay right while pets come and go,
limits, bad input, the ``Link`` header and the document, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from petstore.api import search as search_module
from petstore.api.search import EXACT_UP_TO
from petstore.models import MAX_ID
from tests.fakes import ApiHarness, assert_error, create_schema, make_app, running_api
from tests.services import PostgresServer

API = "/api/v3"
SEARCH = f"{API}/pet/search"


def search(api: ApiHarness, **params: Any) -> dict[str, Any]:
    response = api.client.get(SEARCH, params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def names(page: dict[str, Any]) -> list[str]:
    return [pet["name"] for pet in page["items"]]


def ids(page: dict[str, Any]) -> list[int]:
    return [pet["id"] for pet in page["items"]]


def pages(api: ApiHarness, **params: Any) -> Iterator[dict[str, Any]]:
    """Every page in turn, by its ``next``."""
    cursor = None
    while True:
        page = search(api, **params, **({"cursor": cursor} if cursor else {}))
        yield page
        cursor = page["next"]
        if cursor is None:
            return


def walk(api: ApiHarness, **params: Any) -> list[int]:
    """The ids every page shows, in turn."""
    return [pet_id for page in pages(api, **params) for pet_id in ids(page)]


def walk_names(api: ApiHarness, **params: Any) -> list[str]:
    """The names every page shows, in turn."""
    return [name for page in pages(api, **params) for name in names(page)]


def bulk_pets(api: ApiHarness, rows: list[dict[str, Any]]) -> None:
    """Many pets at once, straight into the table (the API would take minutes): ``name`` and ``status``."""

    async def insert() -> None:
        async with api.state.engine.begin() as conn:
            await conn.execute(text("INSERT INTO pet (name, status, photo_urls) VALUES (:name, :status, '[]')"), rows)

    api.run(insert)


@pytest.fixture
def zoo(api: ApiHarness) -> dict[str, dict[str, Any]]:
    """Six pets across statuses, categories and tags, names in mixed case (ASCII: both databases agree on its order)."""
    specs = [
        ("Rex", "available", "Dogs", ["big", "friendly"]),
        ("rexy", "sold", "Dogs", ["small"]),
        ("Bella", "pending", "Cats", ["friendly"]),
        ("max_1", "available", "Cats", []),
        ("100% Good", "sold", "Birds", ["small", "loud"]),
        ("Maxine", "available", None, ["loud"]),
    ]
    pets = {}
    for name, status, category, tags in specs:
        fields: dict[str, Any] = {"status": status, "tags": [{"name": tag} for tag in tags]}
        if category is not None:
            fields["category"] = {"name": category}
        pets[name] = api.new_pet(name, **fields)
    return pets


# ------------------------------------------------------------------------------------ filters


def test_without_filters_every_pet_is_shown_by_id_as_the_other_endpoints_render_it(
    api: ApiHarness, zoo: dict[str, dict[str, Any]]
) -> None:
    page = search(api)
    assert page["items"] == sorted(zoo.values(), key=lambda pet: pet["id"])
    assert page["items"][0] == api.client.get(f"{API}/pet/{page['items'][0]['id']}").json()
    assert page["next"] is None and page["total"] == 6 and page["total_exact"] is True


def test_q_matches_anywhere_in_the_name_in_any_case(api: ApiHarness, zoo: dict[str, dict[str, Any]]) -> None:
    assert names(search(api, q="REX")) == ["Rex", "rexy"]
    assert names(search(api, q="ax")) == ["max_1", "Maxine"]
    assert names(search(api, q="ELL")) == ["Bella"]
    assert search(api, q="nobody") == {"items": [], "next": None, "total": 0, "total_exact": True}
    assert len(search(api, q="")["items"]) == 6  # empty: any name


def test_q_takes_percent_underscore_and_backslash_literally(api: ApiHarness, zoo: dict[str, dict[str, Any]]) -> None:
    assert names(search(api, q="%")) == ["100% Good"]
    assert names(search(api, q="_")) == ["max_1"]
    assert names(search(api, q="x_1")) == ["max_1"]
    assert search(api, q="\\")["items"] == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_q_folds_case_beyond_ascii_from_three_characters(api: ApiHarness) -> None:
    """SQLite's trigram table folds every letter (its LIKE, for a shorter q, only ASCII ones). On
    PostgreSQL, ILIKE folds as the database's LC_CTYPE says: every letter under en_US.UTF-8,
    ASCII only under C (as the test cluster is)."""
    for name in ("Éclair", "petit éclairé", "Eclipse"):
        api.new_pet(name)
    assert names(search(api, q="ÉCLAIR")) == ["Éclair", "petit éclairé"]
    assert names(search(api, q="éCl")) == ["Éclair", "petit éclairé"]
    assert names(search(api, q="ecl")) == ["Eclipse"]  # no accent folding: é is not e


def test_q_is_text_never_search_syntax(api: ApiHarness) -> None:
    for name in ('say "hi" now', "x*y", "NOT this", "a:b", "(ab)"):
        api.new_pet(name)
    assert names(search(api, q='"hi"')) == ['say "hi" now']
    assert names(search(api, q='y "h')) == ['say "hi" now']
    assert names(search(api, q="x*y")) == ["x*y"]
    assert names(search(api, q="NOT")) == ["NOT this"]
    assert names(search(api, q="a:b")) == ["a:b"]
    assert names(search(api, q="(ab")) == ["(ab)"]
    assert search(api, q="x*")["total"] == 1 and search(api, q="*y")["total"] == 1


def test_status_takes_one_value_a_comma_list_or_repeated_parameters(
    api: ApiHarness, zoo: dict[str, dict[str, Any]]
) -> None:
    assert names(search(api, status="sold")) == ["rexy", "100% Good"]
    both = ["rexy", "Bella", "100% Good"]
    assert names(search(api, status="sold,pending")) == both
    assert names(api.client.get(SEARCH, params=[("status", "sold"), ("status", "pending")]).json()) == both


def test_category_is_a_category_name(api: ApiHarness, zoo: dict[str, dict[str, Any]]) -> None:
    assert names(search(api, category="Cats")) == ["Bella", "max_1"]
    assert search(api, category="Fish")["items"] == []
    assert search(api, category="Fish")["total"] == 0
    assert search(api, category="cats")["items"] == []  # a name, not a search


def test_a_category_name_two_categories_share_finds_the_pets_of_both(
    api: ApiHarness, zoo: dict[str, dict[str, Any]]
) -> None:
    """Names are not unique: a category made by id may take a name another has."""
    twin = api.new_pet("Twin", category={"id": 9090, "name": "Cats"})
    page = search(api, category="Cats")
    assert names(page) == ["Bella", "max_1", "Twin"] and page["total"] == 3
    assert twin["category"]["id"] != zoo["Bella"]["category"]["id"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_a_category_page_and_its_count_read_the_category_index(api: ApiHarness) -> None:
    """Through ``category_id IN (SELECT ...)`` SQLite scanned the table by id, testing every pet:
    with the category's id, the index gives its pets in id order (docs/benchmarks.md)."""
    for n in range(30):
        api.new_pet(f"p{n}", category={"name": "Dogs" if n % 3 else "Cats"})
    with api.count_statements() as counted:
        assert len(search(api, category="Cats", limit=3)["items"]) == 3
    plans = []

    async def explain() -> None:
        async with api.state.engine.connect() as conn:
            for statement in counted.statements:
                if "FROM pet" in statement and "category_id" in statement:
                    params = [10] * statement.count("?")
                    rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, tuple(params))
                    plans.append(" | ".join(str(row[3]) for row in rows))

    api.run(explain)
    assert len(plans) == 2, counted.statements  # the count and the page
    count, _page = plans
    for plan in plans:  # the index, reached by the category's id: no list of ids built first, no scan
        assert "ix_pet_category_id (category_id=?)" in plan and "LIST SUBQUERY" not in plan, plan
        assert not re.search(r"\bSCAN pet\b", plan), plan
    assert "TEMP B-TREE" not in count, count  # in id order as it comes: nothing to sort


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_a_tag_page_and_its_count_read_the_tag_links_in_order(api: ApiHarness) -> None:
    """Through ``id IN (SELECT pet_id ...)`` SQLite gathered every pet of the tag before the first
    of the page: driven by the tag's links (``ix_pet_tag_tag_id``), a page reads what it shows."""
    for n in range(30):
        api.new_pet(f"p{n}", tags=[{"name": "calm" if n % 3 else "loud"}])
    api.relayed()  # no commit of the relay's between the searches: the count is computed once
    with api.count_statements() as counted:
        page = search(api, tag="calm", limit=3)
        last = search(api, tag="calm", limit=3, sort="-id")
        following = search(api, tag="calm", limit=3, sort="-id", cursor=last["next"])
    assert page["total"] == 20 and len(page["items"]) == 3
    assert ids(page) == sorted(ids(page)) and ids(following) == sorted(ids(following), reverse=True)
    assert all(tag["name"] == "calm" for pet in page["items"] + following["items"] for tag in pet["tags"])
    plans = []

    async def explain() -> None:
        async with api.state.engine.connect() as conn:
            for statement in counted.statements:
                if "tagged" in statement:
                    rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, (1,) * statement.count("?"))
                    plans.append(" | ".join(str(row[3]) for row in rows))

    api.run(explain)
    assert len(plans) == 4, counted.statements  # the count once (kept until a commit), and three pages
    for plan in plans:
        assert "ix_pet_tag_tag_id (tag_id=?" in plan and "LIST SUBQUERY" not in plan, plan
        assert not re.search(r"\bSCAN pet\b", plan), plan
    count = plans[0]
    assert "TEMP B-TREE" not in count and "SEARCH pet " not in count, count  # the links alone, in order
    # The page sorts nothing but each pet's own tags and photo URLs, as a page without a filter does.
    assert all(plan.count("TEMP B-TREE") == 2 for plan in plans[1:]), plans


def test_the_total_is_kept_while_nothing_is_committed_and_never_older_than_the_database(
    api: ApiHarness, db_url: str
) -> None:
    """The count of matches walks up to 10,001 of them: it is kept until the pets change (on a
    SQLite file any connection's commit, PRAGMA data_version; on PostgreSQL a committed change to
    pets, petstore.db.pet_version), a write of this server's or of another program's."""
    for n in range(3):
        api.new_pet(f"kept {n}", tags=[{"name": "kept"}])
    api.relayed()
    assert search(api, tag="kept")["total"] == 3
    with api.count_statements() as again:
        assert search(api, tag="kept")["total"] == 3
        assert search(api, tag="kept", sort="-id", limit=1)["total"] == 3  # the same matches: the same count
        assert search(api, tag="kept", status="sold")["total"] == 0  # other matches: counted
    counts = [statement for statement in again.statements if "count(*)" in statement]
    assert len(counts) == 1, again.statements
    # A write through the API is seen at once, before the relay has published it.
    doomed = api.new_pet("kept 3", tags=[{"name": "kept"}])
    assert search(api, tag="kept")["total"] == 4
    assert api.client.delete(f"{API}/pet/{doomed['id']}", headers=api.staff.headers).status_code == 200
    assert search(api, tag="kept")["total"] == 3
    api.relayed()
    assert search(api, tag="kept")["total"] == 3

    # So is a write of another program's, on a connection of its own.
    async def elsewhere() -> None:
        engine = create_async_engine(db_url)
        try:
            async with engine.begin() as conn:
                pet = "INSERT INTO pet (name, status, photo_urls) VALUES ('kept far', 'sold', '[]')"
                await conn.exec_driver_sql(pet)
                link = "SELECT (SELECT max(id) FROM pet), id FROM tag WHERE name = 'kept'"
                await conn.exec_driver_sql(f"INSERT INTO pet_tag (pet_id, tag_id) {link}")
        finally:
            await engine.dispose()

    api.run(elsewhere)
    assert search(api, tag="kept")["total"] == 4
    assert search(api, tag="kept", status="sold")["total"] == 1


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_on_postgresql_a_q_few_names_hold_is_gathered_before_it_is_sorted_by_name(api: ApiHarness) -> None:
    """Names holding a part of a name sort together: the planner, expecting them spread over the
    name index, walked it from the start. A q few names hold (by the count) is gathered first."""
    for n in range(40):
        api.new_pet(f"pet {n:02}")
    rexes = [api.new_pet(name)["id"] for name in ("Rex", "T-Rexy")]
    with api.count_statements() as rare:  # one page: the query's (more pages read the kept order)
        assert ids(search(api, q="rex", sort="name")) == rexes
        assert ids(search(api, q="rex", sort="-name")) == rexes[::-1]
    with api.count_statements() as common:
        assert walk_names(api, q="pet", sort="name", limit=1) == [f"pet {n:02}" for n in range(40)]
    pages = [statement for statement in rare.statements if "json" in statement]
    assert pages and all("OFFSET" in statement for statement in pages), pages
    pages = [statement for statement in common.statements if "json" in statement]
    assert pages and not any("OFFSET" in statement for statement in pages), pages
    # In id order too, a q most names hold is found testing each pet, not gathered and kept.
    pet_ids = ids(search(api, q="pet", limit=100))
    with api.count_statements() as by_id:
        assert walk(api, q="pet", limit=5) == pet_ids
    assert not _order_reads(by_id.statements), by_id.statements
    with api.count_statements() as rare_by_id:
        assert walk(api, q="rex", limit=1) == rexes
    assert _order_reads(rare_by_id.statements), rare_by_id.statements


def _order_reads(statements: list[str]) -> list[str]:
    """The statements that read the matches' keys for their kept order (search._in_order)."""
    return [statement for statement in statements if statement.startswith("SELECT pet.name, pet.id")]


def test_the_matches_of_q_are_kept_in_order_while_nothing_is_committed_and_never_older_than_the_database(
    api: ApiHarness, db_url: str
) -> None:
    """Matches gathered before they are ordered (q; by name, a rare tag) were gathered and sorted
    again for every page: their order is kept as the count is, a page found in it and read by id.
    Any commit, of this server's or another program's, is in the very next page."""
    rexes = {f"rex {n}": api.new_pet(f"rex {n}", tags=[{"name": "dogs"}])["id"] for n in (4, 1, 3, 0, 2)}
    api.new_pet("fido", id=10_000)  # many pets for few matches: gathered first on PostgreSQL too (search._dense)
    api.relayed()
    ordered = sorted(rexes)
    with api.count_statements() as walked:
        assert walk_names(api, q="rex", sort="name", limit=2) == ordered
        assert walk_names(api, q="rex", sort="-name", limit=2) == ordered[::-1]
        assert walk_names(api, q="rex", sort="name", limit=2, tag="dogs") == ordered  # other matches: their own
        by_id = sorted(rexes.values())
        assert walk(api, q="rex", limit=2) == by_id and walk(api, q="rex", sort="-id", limit=3) == by_id[::-1]
    assert len(_order_reads(walked.statements)) == 3, walked.statements  # by name, by name with the tag, by id
    pages = [statement for statement in walked.statements if "json" in statement]
    assert len(pages) == 14 and not any("OFFSET" in statement for statement in pages), pages

    # Renamed through the API: in the next page, before the relay has published it.
    renamed = {"id": rexes["rex 3"], "name": "rex 9", "photoUrls": []}
    updated = api.client.put(f"{API}/pet", json=renamed, headers=api.staff.headers)
    assert updated.status_code == 200, updated.text
    ordered = ["rex 0", "rex 1", "rex 2", "rex 4", "rex 9"]
    assert walk_names(api, q="rex", sort="name", limit=2) == ordered

    async def elsewhere() -> None:
        engine = create_async_engine(db_url)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(f"UPDATE pet SET name = 'a rex' WHERE id = {rexes['rex 2']}")
        finally:
            await engine.dispose()

    api.run(elsewhere)
    assert walk_names(api, q="rex", sort="name", limit=2) == ["a rex", "rex 0", "rex 1", "rex 4", "rex 9"]
    assert walk_names(api, q="rex", sort="-name", limit=4) == ["rex 9", "rex 4", "rex 1", "rex 0", "a rex"]


def test_a_page_is_never_taken_from_a_kept_order_the_database_no_longer_holds(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit between the version's read and the page's: the pets read by id are not those the
    order said (renamed, deleted), and the page is the query's, as the database holds it."""
    for name in ("rex b", "rex d", "rex a", "rex c"):
        api.new_pet(name)
    api.new_pet("fido", id=10_000)
    truth = walk_names(api, q="rex", sort="name", limit=2)
    stale = search(api, q="rex", sort="name", limit=1)["items"][0]
    assert api.client.delete(f"{API}/pet/{stale['id']}", headers=api.staff.headers).status_code == 200
    late = [("rex a", stale["id"]), *((pet["name"], pet["id"]) for pet in search(api, q="rex", sort="name")["items"])]

    asked = []

    async def an_order_from_before(*args: Any) -> list[tuple[Any, ...]]:
        asked.append(args)
        return late if args[-1].by_name else sorted((pet_id,) for _, pet_id in late)

    monkeypatch.setattr(search_module, "_in_order", an_order_from_before)
    assert walk_names(api, q="rex", sort="name", limit=2) == truth[1:]
    assert walk_names(api, q="rex", sort="-name", limit=2) == truth[1:][::-1]
    assert walk(api, q="rex", limit=1) == sorted(pet_id for _, pet_id in late[1:])
    assert len(asked) == 7  # every page of the walks was offered the stale order


def test_a_tag_page_by_name_finds_the_pets_of_a_rare_and_a_common_tag_alike(api: ApiHarness) -> None:
    """By name, a tag few pets hold is gathered first and a tag many hold tested pet by pet (the
    quicker for each, see search._dense): either way the same pets in the same order."""
    for n in range(40):
        tags = [{"name": "common"}] + ([{"name": "rare"}] if n in (7, 31) else [])
        api.new_pet(f"pet {n:02}", tags=tags if n % 4 else [])
    rare = [f"pet {n:02}" for n in (7, 31)]
    common = [f"pet {n:02}" for n in range(40) if n % 4]
    with api.count_statements() as gathered:
        assert names(search(api, tag="rare", sort="name")) == rare
        assert names(search(api, tag="rare", sort="-name", limit=1)) == rare[-1:]
    with api.count_statements() as tested:
        assert walk_names(api, tag="common", sort="name", limit=7) == common
        assert walk_names(api, tag="common", sort="-name", limit=7) == common[::-1]
    if api.state.engine.dialect.name == "sqlite":  # PostgreSQL's planner chooses for itself
        pages = [statement for statement in gathered.statements if "tagged" in statement and "json" in statement]
        assert pages and not any("EXISTS" in statement for statement in pages), pages
        pages = [statement for statement in tested.statements if "tagged" in statement and "json" in statement]
        assert pages and all("EXISTS" in statement for statement in pages), pages


def test_tag_matches_pets_with_any_of_the_tags_in_either_form(api: ApiHarness, zoo: dict[str, dict[str, Any]]) -> None:
    assert names(search(api, tag="friendly")) == ["Rex", "Bella"]
    assert names(search(api, tag="small,loud")) == ["rexy", "100% Good", "Maxine"]
    repeated = api.client.get(SEARCH, params=[("tag", "small"), ("tag", "loud")]).json()
    assert names(repeated) == ["rexy", "100% Good", "Maxine"]


def test_filters_combine(api: ApiHarness, zoo: dict[str, dict[str, Any]]) -> None:
    assert names(search(api, q="x", status="available", tag="loud")) == ["Maxine"]
    assert names(search(api, q="re", category="Dogs", status="sold")) == ["rexy"]
    assert search(api, q="re", category="Dogs", status="sold")["total"] == 1


# ------------------------------------------------------------------------------------ orders


def test_every_sort_order(api: ApiHarness, zoo: dict[str, dict[str, Any]]) -> None:
    by_id = [pet["id"] for pet in sorted(zoo.values(), key=lambda pet: pet["id"])]
    assert ids(search(api, sort="id")) == by_id
    assert ids(search(api, sort="-id")) == by_id[::-1]
    by_name = names(search(api, sort="name"))
    assert by_name[0] == "100% Good" and set(by_name) == set(zoo)
    assert names(search(api, sort="-name")) == by_name[::-1]


#: Names whose orders differ: by code point (SQLite's BINARY, PostgreSQL's "C"), by a language's
#: collation (case and accents second), and by UTF-16 unit (an astral character against U+FFEE).
NAMES_IN_ORDERS = ["apple", "Zebra", "éclair", "Éclair", "b", "_x", "\U0001f600 smile", "\uffee half", "Apple"]


def test_names_are_in_code_point_order(api: ApiHarness) -> None:
    """Whatever the database: a client (the dashboard) places a live row where the server would."""
    for name in NAMES_IN_ORDERS:
        api.new_pet(name)
    assert names(search(api, sort="name")) == sorted(NAMES_IN_ORDERS)
    assert walk_names(api, sort="-name", limit=2) == sorted(NAMES_IN_ORDERS, reverse=True)


@pytest.mark.postgres
def test_on_postgresql_names_are_in_code_point_order_whatever_the_database_collation(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A database made with a language's collation (ICU en-US: apple before Zebra) orders the
    search as SQLite does, through the index (``COLLATE "C"``, migration 0005)."""
    if not postgres_server.running:
        postgres_server.start()
    database = f"icu_{uuid.uuid4().hex[:12]}"
    postgres_server.psql(
        f"CREATE DATABASE \"{database}\" LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' TEMPLATE template0"
    )
    try:
        in_english = postgres_server.psql(
            "SELECT string_agg(n, ' ' ORDER BY n) FROM (VALUES ('Zebra'), ('apple')) v(n)", database
        )
        assert in_english == "apple Zebra"  # the database's own order is not the search's
        url = postgres_server.async_url(database)
        with running_api(url, tmp_path / "media") as api:
            for name in NAMES_IN_ORDERS:
                api.new_pet(name)
            with api.count_statements() as counted:
                assert names(search(api, sort="name")) == sorted(NAMES_IN_ORDERS)
            assert walk_names(api, sort="-name", limit=2) == sorted(NAMES_IN_ORDERS, reverse=True)
        (page,) = [statement for statement in counted.statements if "ORDER BY" in statement and "json" in statement]
        explain = page.replace("$1", "101")  # the page's one parameter, its LIMIT
        # Nine pets: the planner would sort them rather than read an index, unless told not to sort.
        plan = postgres_server.psql(f"SET enable_sort = off; EXPLAIN {explain}", database)
        assert "ix_pet_name_id" in plan and "Sort" not in plan.split("SubPlan")[0], plan
    finally:
        postgres_server.drop_database(database)


def test_pets_of_one_name_are_ordered_by_id_within_it(api: ApiHarness) -> None:
    twins = [api.new_pet("twin")["id"] for _ in range(4)]
    api.new_pet("alpha")
    assert ids(search(api, sort="name", q="twin")) == twins
    assert ids(search(api, sort="-name", q="twin")) == twins[::-1]
    assert walk(api, sort="name", limit=1) == [*ids(search(api, q="alpha")), *twins]
    assert walk(api, sort="-name", limit=3) == [*twins[::-1], *ids(search(api, q="alpha"))]


# ------------------------------------------------------------------------------------ pages


@pytest.mark.parametrize("matched", ["every pet", "one tag", "q"])
@pytest.mark.parametrize("sort", ["id", "-id", "name", "-name"])
def test_paging_forward_shows_each_pet_once_while_pets_are_created_and_deleted(
    api: ApiHarness, sort: str, matched: str
) -> None:
    """Keyset pages: a pet that exists throughout is shown exactly once, a deleted one is not shown
    after it is gone, and nothing is shown twice, whatever is created or deleted between pages.
    With one tag the pages are read along the tag's links (by id) or test each pet for it (by name);
    by name, q's pages come from its matches kept in order (each commit between pages: anew)."""
    tagged = matched == "one tag"
    tags = {"tags": [{"name": "walked"}]} if tagged else {}
    filters = {"tag": "walked"} if tagged else {"q": "pet-"} if matched == "q" else {}
    pets = {api.new_pet(f"pet-{letter}", **tags)["id"]: f"pet-{letter}" for letter in "mbxdkqaszfhu"}
    if tagged:
        api.new_pet("pet-c", tags=[{"name": "other"}])  # in every order among them, never shown
        api.new_pet("pet-n")
    if matched == "q":
        api.new_pet("pets", id=10_000)  # never shown; many pets for few matches (search._dense)
    kept = set(pets)
    deleted: set[int] = set()
    seen: list[int] = []
    cursor = None
    turn = 0
    while True:
        page = search(api, sort=sort, limit=3, **filters, **({"cursor": cursor} if cursor else {}))
        seen.extend(ids(page))
        assert not deleted & set(ids(page)), "a pet deleted before this page was shown"
        cursor = page["next"]
        if cursor is None:
            break
        turn += 1
        # Between pages: new pets at both ends of every order, one pet not shown yet and one shown deleted.
        api.new_pet(f"pet-{'a' * turn}0", **tags)
        api.new_pet(f"pet-{'z' * turn}9", **tags)
        unseen = sorted(kept - set(seen))
        shown = sorted(kept & set(seen))
        for victim in (unseen[len(unseen) // 2 :][:1] + shown[:1]) if unseen else shown[:1]:
            assert api.client.delete(f"{API}/pet/{victim}", headers=api.staff.headers).status_code == 200
            kept.discard(victim)
            deleted.add(victim)
    assert len(seen) == len(set(seen)), f"shown twice: {[i for i in seen if seen.count(i) > 1]}"
    assert kept <= set(seen), f"skipped: {kept - set(seen)}"
    assert turn >= 3
    if tagged:
        assert {pet["name"] for pet in search(api, q="pet-c")["items"]} == {"pet-c"}
        others = {pet["id"] for pet in search(api, q="pet-")["items"] if pet["name"] in ("pet-c", "pet-n")}
        assert len(others) == 2 and not others & set(seen)


def test_a_page_is_at_most_limit_long_and_next_is_null_on_the_last(
    api: ApiHarness, zoo: dict[str, dict[str, Any]]
) -> None:
    first = search(api, limit=4)
    assert len(first["items"]) == 4 and first["next"] is not None and first["total"] == 6
    second = search(api, limit=4, cursor=first["next"])
    assert len(second["items"]) == 2 and second["next"] is None and second["total"] == 6
    exactly = search(api, limit=6)
    assert len(exactly["items"]) == 6 and exactly["next"] is None  # no empty page after a full one


def test_limit_defaults_to_100_and_takes_up_to_1000(api: ApiHarness) -> None:
    bulk_pets(api, [{"name": f"bulk {n}", "status": "available"} for n in range(1005)])
    assert len(search(api)["items"]) == 100
    page = search(api, limit=1000)
    assert len(page["items"]) == 1000 and page["next"] is not None
    assert len(search(api, limit=1000, cursor=page["next"])["items"]) == 5


def test_total_is_exact_up_to_10000_then_an_estimate_from_the_part_counted(api: ApiHarness) -> None:
    """Half the pets sold, spread evenly over the ids: past 10,000 matches the estimate extrapolates
    the part counted along the ids, so it lands within a percent here."""
    size = 2 * EXACT_UP_TO + 200
    bulk_pets(api, [{"name": f"p{n}", "status": ("sold", "available")[n % 2]} for n in range(size)])
    assert search(api, status="sold", q="p1", limit=1)["total_exact"] is True
    everyone = search(api, limit=1)
    assert everyone["total_exact"] is False and everyone["total"] == size  # no gaps in the ids: exact anyway
    sold = search(api, status="sold", limit=1)
    assert sold["total_exact"] is False
    assert sold["total"] > EXACT_UP_TO and abs(sold["total"] - size // 2) <= size // 200
    assert search(api, status="pending")["total"] == 0


def test_the_estimate_is_never_more_than_the_pets_there_are(api: ApiHarness) -> None:
    """One pet with the largest id a client may choose would stretch the id span a billionfold."""
    api.new_pet("far away", id=MAX_ID)
    bulk_pets(api, [{"name": f"p{n}", "status": "sold"} for n in range(EXACT_UP_TO + 50)])
    if api.state.engine.dialect.name == "postgresql":
        api.run(_analyze, api)  # as autovacuum would: PostgreSQL's estimate of the rows comes from it
    page = search(api, status="sold", limit=1)
    assert page["total_exact"] is False and EXACT_UP_TO < page["total"] <= EXACT_UP_TO + 51


async def _analyze(api: ApiHarness) -> None:
    async with api.state.engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE pet")
        await conn.commit()


def test_a_page_costs_the_same_statements_however_many_pets_there_are(api: ApiHarness) -> None:
    """The tag's id, the count, and the pets with their categories and tags as JSON (one query,
    petstore.db.answers): never one query per pet."""
    for n in range(3):
        api.new_pet(f"few {n}", category={"name": "c"}, tags=[{"name": "t"}])
    with api.count_statements() as few:
        search(api, tag="t")
    for n in range(30):
        api.new_pet(f"many {n}", category={"name": f"c{n}"}, tags=[{"name": "t"}, {"name": f"t{n}"}])
    with api.count_statements() as many:
        assert len(search(api, tag="t", limit=20)["items"]) == 20
    assert few.count == many.count == 3, many.statements


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_q_of_three_characters_or_more_is_answered_by_the_trigram_table(api: ApiHarness) -> None:
    api.new_pet("Rexford")
    with api.count_statements() as long:
        assert names(search(api, q="EXF")) == ["Rexford"]
    with api.count_statements() as short:
        assert names(search(api, q="EX")) == ["Rexford"]
    assert any("pet_name_fts MATCH" in statement for statement in long.statements), long.statements
    assert not any("pet_name_fts" in statement for statement in short.statements), short.statements


def test_a_sqlite_database_without_the_trigram_table_still_answers_q(tmp_path: Path) -> None:
    """Revision 0004 goes on without it where SQLite cannot make one: the search reads the table instead."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}"
    asyncio.run(create_schema(url))

    async def drop() -> None:
        from petstore import db
        from petstore.config import Settings

        engine = db.create_engine(Settings(database_url=url, plugins=(), env="test"))
        async with engine.begin() as conn:
            for trigger in ("insert", "delete", "update"):
                await conn.exec_driver_sql(f"DROP TRIGGER pet_name_fts_{trigger}")
            await conn.exec_driver_sql("DROP TABLE pet_name_fts")
        await engine.dispose()

    asyncio.run(drop())
    with TestClient(make_app(url, media_dir=tmp_path / "media")) as client:
        staff = {"X-Test-User": "staff:1:staff"}
        for name in ("Rexford", "Bella"):
            assert client.post(f"{API}/pet", json={"name": name, "photoUrls": []}, headers=staff).status_code == 200
        assert [pet["name"] for pet in client.get(SEARCH, params={"q": "rexf"}).json()["items"]] == ["Rexford"]


# ------------------------------------------------------------------------------------ bad input


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


BAD = [
    ({"limit": "0"}, "limit must be at least 1"),
    ({"limit": "5000"}, "limit must be at most 1000"),
    ({"limit": "1001"}, "limit must be at most 1000"),
    ({"limit": "-1"}, "limit must be at least 1"),
    ({"limit": "ten"}, "limit must be an integer"),
    ({"sort": "age"}, "invalid sort"),
    ({"sort": ""}, "invalid sort"),
    ({"status": "lost"}, "invalid status value"),
    ({"status": ""}, "invalid status value"),
    ({"status": "sold,lost"}, "invalid status value"),
    ({"category": ""}, "invalid category value"),
    ({"category": "x" * 256}, "invalid category value"),
    ({"category": "a\x00b"}, "invalid category value"),
    ({"tag": ","}, "invalid tag value"),
    ({"tag": "a\x00b"}, "invalid tag value"),
    ({"q": "x" * 256}, "invalid q"),
    ({"q": "a\x00b"}, "invalid q"),
    ({"offset": "10"}, "offset is not taken here"),
    ({"cursor": ""}, "invalid cursor"),
    ({"cursor": "not a cursor!"}, "invalid cursor"),
    ({"cursor": "A" * 3000}, "invalid cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode()}, "invalid cursor"),
    ({"cursor": _cursor({"id": 3})}, "invalid cursor"),
    ({"cursor": _cursor([])}, "invalid cursor"),
    ({"cursor": _cursor(["id"])}, "invalid cursor"),
    ({"cursor": _cursor(["id", "3"])}, "invalid cursor"),
    ({"cursor": _cursor(["id", True])}, "invalid cursor"),
    ({"cursor": _cursor(["id", -1])}, "invalid cursor"),
    ({"cursor": _cursor(["id", 2**63])}, "invalid cursor"),
    ({"cursor": _cursor(["id", 1, 2])}, "invalid cursor"),
    ({"cursor": _cursor(["age", 1])}, "invalid cursor"),
    ({"cursor": _cursor(["name", 1])}, "invalid cursor"),
    ({"cursor": _cursor(["name", "a\x00", 1])}, "invalid cursor"),
    ({"cursor": _cursor(["name", "Rex", 1]), "sort": "id"}, "it continues sort=name, not sort=id"),
    ({"cursor": _cursor(["id", 1]), "sort": "-id"}, "it continues sort=id, not sort=-id"),
]


@pytest.mark.parametrize(("params", "message"), BAD, ids=[f"{p}"[:60] for p, _ in BAD])
def test_bad_input_is_a_400_that_says_what_and_changes_nothing(
    api: ApiHarness, zoo: dict[str, dict[str, Any]], params: dict[str, str], message: str
) -> None:
    before = api.snapshot()
    response = api.client.get(SEARCH, params=params)
    assert_error(response, 400, "bad_request")
    assert message in response.json()["message"]
    assert api.snapshot() == before


def test_repeated_single_value_parameters_are_refused(api: ApiHarness) -> None:
    assert_error(api.client.get(SEARCH, params=[("category", "a"), ("category", "b")]), 400, "bad_request")
    assert_error(api.client.get(SEARCH, params=[("q", "a"), ("q", "b")]), 400, "bad_request")


# ------------------------------------------------------------------------------------ HTTP


def test_the_link_header_is_the_absolute_url_of_the_next_page(api: ApiHarness, zoo: dict[str, dict[str, Any]]) -> None:
    response = api.client.get(SEARCH, params=[("status", "available"), ("status", "sold"), ("limit", "2")])
    page = response.json()
    link = response.headers["link"]
    assert link.startswith("<http://testserver/api/v3/pet/search?") and link.endswith('>; rel="next"')
    url = link[1 : link.index(">")]
    assert f"cursor={page['next']}" in url and "limit=2" in url and url.count("status=") == 2
    following = api.client.get(url)
    assert following.status_code == 200
    assert following.json() == search(api, status="available,sold", limit=2, cursor=page["next"])
    last = api.client.get(SEARCH, params={"limit": 6})
    assert "link" not in last.headers


def test_an_unchanged_page_is_a_304_with_if_none_match(api: ApiHarness, zoo: dict[str, dict[str, Any]]) -> None:
    first = api.client.get(SEARCH, params={"q": "rex"})
    etag = first.headers["etag"]
    again = api.client.get(SEARCH, params={"q": "rex"}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    api.new_pet("Rexford")
    changed = api.client.get(SEARCH, params={"q": "rex"}, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_search_does_not_collide_with_a_pet_id(api: ApiHarness, zoo: dict[str, dict[str, Any]]) -> None:
    rex = zoo["Rex"]
    assert api.client.get(f"{API}/pet/{rex['id']}").json() == rex
    assert "items" in api.client.get(SEARCH).json()
    assert_error(api.client.get(f"{API}/pet/searching"), 400, "bad_request")  # still an invalid id


@pytest.fixture
def behind_a_prefix(tmp_path: Path) -> Iterator[TestClient]:
    """The app served under ``root_path`` /store (``petstore serve --root-path``)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}"
    asyncio.run(create_schema(url))
    with TestClient(make_app(url, media_dir=tmp_path / "media"), root_path="/store") as client:
        yield client


@pytest.mark.parametrize("path", [SEARCH, f"/store{SEARCH}"], ids=["prefix stripped", "prefix kept"])
def test_behind_a_path_prefix_the_link_keeps_it(behind_a_prefix: TestClient, path: str) -> None:
    """A proxy may strip the prefix (the path lacks it) or pass it on, as uvicorn's ``root_path`` does."""
    staff = {"X-Test-User": "staff:1:staff"}
    for name in ("a", "b", "c"):
        assert (
            behind_a_prefix.post(f"{API}/pet", json={"name": name, "photoUrls": []}, headers=staff).status_code == 200
        )
    response = behind_a_prefix.get(path, params={"limit": 2})
    assert response.status_code == 200, response.text
    link = response.headers["link"]
    assert link.startswith("<http://testserver/store/api/v3/pet/search?limit=2&cursor="), link


# ------------------------------------------------------------------------------------ the document


def test_the_document_lists_the_operation_its_parameters_and_its_answer(
    api: ApiHarness, zoo: dict[str, dict[str, Any]]
) -> None:
    document = api.client.get(f"{API}/openapi.json").json()
    operation = document["paths"]["/pet/search"]["get"]
    assert operation["operationId"] == "searchPets" and operation["x-petstore-permission"] is None
    params = {param["name"]: param for param in operation["parameters"]}
    assert set(params) == {"q", "status", "category", "tag", "sort", "limit", "cursor", "If-None-Match"}
    assert params["status"]["explode"] is True and params["tag"]["explode"] is True
    assert params["sort"]["schema"]["enum"] == ["id", "-id", "name", "-name"]
    assert params["limit"]["schema"] | {} == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    ok = operation["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PetPage"}
    assert {"Link", "ETag"} <= set(ok["headers"])
    assert {"304", "400"} <= set(operation["responses"])
    # Real answers, first and last pages and a 400, are what it says.
    schema = {"$ref": "#/components/schemas/PetPage", "components": document["components"]}
    error = {"$ref": "#/components/schemas/Error", "components": document["components"]}
    Draft202012Validator(schema).validate(search(api, limit=2))
    Draft202012Validator(schema).validate(search(api, q="nobody"))
    Draft202012Validator(error).validate(api.client.get(SEARCH, params={"limit": 0}).json())
    # Beside /pet/{petId}, not shadowed by it.
    assert "/pet/{petId}" in document["paths"]
