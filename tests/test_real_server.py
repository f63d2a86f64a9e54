"""The main flows through a real uvicorn on a free port, driven with httpx, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from petstore.models import Role
from tests.fakes import REPO_ROOT, Account, prepare_database, uvicorn_env
from tests.services import UvicornServer

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


class Shop:
    def __init__(self, client: httpx.Client, accounts: dict[str, Account]) -> None:
        self.client = client
        self.staff = accounts["the-staff"].headers
        self.admin = accounts["the-admin"].headers
        self.customer = accounts["customer-0"].headers
        self.other = accounts["customer-1"].headers


@pytest.fixture
def shop(db_url: str, tmp_path: Path) -> Iterator[Shop]:
    accounts = prepare_database(db_url, customers=2)
    with (
        UvicornServer(env=uvicorn_env(db_url, tmp_path / "media"), cwd=REPO_ROOT) as server,
        httpx.Client(base_url=f"{server.url}/api/v3", timeout=30) as client,
    ):
        yield Shop(client, accounts)


def test_create_find_order_deliver_and_count(shop: Shop) -> None:
    client = shop.client
    body = {"name": "Rex", "photoUrls": [], "category": {"name": "Dogs"}, "tags": [{"name": "good"}]}
    created = client.post("/pet", json=body, headers=shop.staff)
    assert created.status_code == 200, created.text
    pet = created.json()
    assert client.get(f"/pet/{pet['id']}").json() == pet
    assert client.get("/pet/findByStatus").json() == [pet]
    assert client.get("/pet/findByTags", params={"tags": "good,other"}).json() == [pet]
    assert client.get("/store/inventory").json() == {"available": 1, "pending": 0, "sold": 0}

    placed = client.post("/store/order", json={"petId": pet["id"], "quantity": 1}, headers=shop.customer)
    assert placed.status_code == 200, placed.text
    order = placed.json()
    assert order["status"] == "placed"
    assert client.get("/store/inventory").json() == {"available": 0, "pending": 1, "sold": 0}
    again = client.post("/store/order", json={"petId": pet["id"]}, headers=shop.other)
    assert again.status_code == 409 and again.json()["type"] == "conflict"
    assert client.get(f"/store/order/{order['id']}", headers=shop.customer).json() == order
    assert client.get(f"/store/order/{order['id']}", headers=shop.other).status_code == 404

    delivered = client.patch(f"/store/order/{order['id']}", json={"status": "delivered"}, headers=shop.staff)
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["complete"] is True
    assert client.get(f"/pet/{pet['id']}").json()["status"] == "sold"
    assert client.get("/store/inventory").json() == {"available": 0, "pending": 0, "sold": 1}
    assert client.get("/pet/findByStatus", params={"status": "sold,pending"}).json()[0]["id"] == pet["id"]


def test_cancelling_an_order_puts_the_pet_back_on_sale(shop: Shop) -> None:
    client = shop.client
    pet = client.post("/pet", json={"name": "Tom", "photoUrls": []}, headers=shop.staff).json()
    order = client.post("/store/order", json={"petId": pet["id"]}, headers=shop.customer).json()
    assert client.delete(f"/store/order/{order['id']}", headers=shop.customer).status_code == 200
    assert client.get(f"/pet/{pet['id']}").json()["status"] == "available"
    assert client.delete(f"/store/order/{order['id']}", headers=shop.customer).status_code == 404


def test_pet_changes_uploads_and_deletion(shop: Shop) -> None:
    client = shop.client
    pet = client.post("/pet", json={"name": "Pic", "photoUrls": []}, headers=shop.staff).json()
    renamed = client.post(f"/pet/{pet['id']}", data={"name": "Picture"}, headers=shop.staff)
    assert renamed.json()["name"] == "Picture"
    uploaded = client.post(
        f"/pet/{pet['id']}/uploadImage",
        content=PNG,
        headers={**shop.staff, "Content-Type": "application/octet-stream"},
    )
    assert uploaded.status_code == 200, uploaded.text
    url = client.get(f"/pet/{pet['id']}").json()["photoUrls"][0]
    image = httpx.get(f"{client.base_url.scheme}://{client.base_url.netloc.decode()}{url}")
    assert image.status_code == 200 and image.content == PNG
    assert client.delete(f"/pet/{pet['id']}", headers=shop.customer).status_code == 403
    assert client.delete(f"/pet/{pet['id']}", headers=shop.staff).status_code == 200
    assert client.get(f"/pet/{pet['id']}").status_code == 404


def test_sign_up_and_own_account(shop: Shop) -> None:
    client = shop.client
    user = client.post("/user", json={"username": "newbie", "password": "pw-123456", "email": "n@example.test"})
    assert user.status_code == 200, user.text
    assert "password" not in user.json()
    me = Account(user.json()["id"], "newbie", Role.customer)
    assert client.get("/user/newbie", headers=me.headers).json() == user.json()
    assert client.get("/user/newbie", headers=shop.other).status_code == 404
    assert client.get("/user/newbie", headers=shop.admin).json() == user.json()


def test_errors_are_json_and_writes_need_credentials(shop: Shop) -> None:
    client = shop.client
    anonymous = client.post("/pet", json={"name": "x", "photoUrls": []})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["code"] == 401
    malformed = client.post("/pet", content=b"{not json", headers={**shop.staff, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["type"] == "bad_request"
    assert client.get("/pet/findByStatus", params={"limit": -1}).status_code == 400
    missing = client.get("/pet/424242")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/json")
