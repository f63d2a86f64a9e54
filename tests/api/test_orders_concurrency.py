"""A pet cannot be sold twice: 20 orders for one pet at the same moment give exactly one success.

Against real PostgreSQL through a real uvicorn (the production shape: row locks decide), and
on SQLite in process (the database lock decides).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from petstore.models import Order, OutboxEvent
from tests.fakes import REPO_ROOT, Account, ApiHarness, prepare_database, uvicorn_env
from tests.services import UvicornServer

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process

API = "/api/v3"
RACERS = 20


def assert_one_winner(statuses: list[int], bodies: list[Any]) -> None:
    assert sorted(statuses) == [200] + [409] * (RACERS - 1), statuses
    for status, body in zip(statuses, bodies, strict=True):
        if status == 409:
            assert body["code"] == 409 and body["type"] == "conflict", body


@pytest.fixture
def pg_server(pg_url: str, tmp_path: Path) -> Iterator[tuple[UvicornServer, dict[str, Account]]]:
    accounts = prepare_database(pg_url, customers=RACERS)
    with UvicornServer(env=uvicorn_env(pg_url, tmp_path / "media"), cwd=REPO_ROOT) as server:
        yield server, accounts


@pytest.mark.postgres
async def test_twenty_concurrent_orders_on_postgresql_through_uvicorn_sell_the_pet_once(
    pg_server: tuple[UvicornServer, dict[str, Account]],
) -> None:
    server, accounts = pg_server
    customers = [accounts[f"customer-{i}"] for i in range(RACERS)]
    limits = httpx.Limits(max_connections=RACERS)
    async with httpx.AsyncClient(base_url=f"{server.url}{API}", timeout=30, limits=limits) as client:
        for round_ in range(3):  # a few rounds, so one lucky interleaving proves little
            created = await client.post(
                "/pet", json={"name": f"Contested {round_}", "photoUrls": []}, headers=accounts["the-staff"].headers
            )
            pet_id = created.json()["id"]
            # gather starts all twenty before any answer comes back: they race on the database.
            responses = await asyncio.gather(
                *(client.post("/store/order", json={"petId": pet_id}, headers=who.headers) for who in customers)
            )
            assert_one_winner([r.status_code for r in responses], [r.json() for r in responses])
            assert (await client.get(f"/pet/{pet_id}")).json()["status"] == "pending"
            orders = (await client.get("/store/orders", headers=accounts["the-staff"].headers)).json()
            assert [o["petId"] for o in orders].count(pet_id) == 1
        inventory = (await client.get("/store/inventory")).json()
        assert inventory == {"available": 0, "pending": 3, "sold": 0}


def test_twenty_concurrent_orders_on_sqlite_in_process_sell_the_pet_once(tmp_path: Path) -> None:
    from tests.fakes import running_api

    with running_api(f"sqlite+aiosqlite:///{tmp_path / 'race.db'}", tmp_path / "media") as api:
        customers = [api.user(f"racer-{i}") for i in range(RACERS)]
        pet = api.new_pet("Contested")
        barrier = threading.Barrier(RACERS)

        def order(who: Account) -> tuple[int, Any]:
            barrier.wait(timeout=30)
            response = api.client.post(f"{API}/store/order", json={"petId": pet["id"]}, headers=who.headers)
            return response.status_code, response.json()

        with ThreadPoolExecutor(max_workers=RACERS) as pool:
            results = list(pool.map(order, customers))
        assert_one_winner([status for status, _ in results], [body for _, body in results])
        assert_sqlite_state(api, pet["id"])


def assert_sqlite_state(api: ApiHarness, pet_id: int) -> None:
    assert len(api.rows(Order)) == 1
    assert [row.event for row in api.rows(OutboxEvent)].count("order.placed") == 1
    assert api.client.get(f"{API}/pet/{pet_id}").json()["status"] == "pending"
    assert api.inventory() == {"available": 0, "pending": 1, "sold": 0}
