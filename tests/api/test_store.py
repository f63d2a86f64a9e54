"""``/store``: inventory and orders, with the order rules of SPEC §2, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from petstore.models import Order, OutboxEvent, Role
from tests.fakes import Account, ApiHarness, assert_error

API = "/api/v3"


def place(api: ApiHarness, pet_id: int, who: Account | None = None, **fields: Any) -> Any:
    who = who or api.customer
    return api.client.post(f"{API}/store/order", json={"petId": pet_id, **fields}, headers=who.headers)


def pet_status(api: ApiHarness, pet_id: int) -> str:
    status: str = api.client.get(f"{API}/pet/{pet_id}").json()["status"]
    return status


def outbox(api: ApiHarness) -> list[OutboxEvent]:
    return sorted(api.rows(OutboxEvent), key=lambda row: row.id or 0)


# ---------------------------------------------------------------------------------- inventory


def test_inventory_counts_pets_by_status_with_every_status_present(api: ApiHarness) -> None:
    assert api.inventory() == {"available": 0, "pending": 0, "sold": 0}
    pets = [api.new_pet(f"p{i}")["id"] for i in range(4)]
    api.new_pet("gone", status="sold")
    place(api, pets[0])
    assert api.inventory() == {"available": 3, "pending": 1, "sold": 1}


def test_inventory_needs_no_credentials(api: ApiHarness) -> None:
    response = api.client.get(f"{API}/store/inventory")
    assert response.status_code == 200
    assert all(isinstance(v, int) for v in response.json().values())


# --------------------------------------------------------------------------------- placeOrder


def test_placing_an_order_makes_the_pet_pending_in_the_same_transaction(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    response = place(api, pet["id"], quantity=2, shipDate="2030-01-02T03:04:05Z")
    assert response.status_code == 200, response.text
    order = response.json()
    assert order == {
        "id": order["id"],
        "petId": pet["id"],
        "quantity": 2,
        "shipDate": "2030-01-02T03:04:05Z",
        "status": "placed",
        "complete": False,
    }
    assert pet_status(api, pet["id"]) == "pending"
    assert api.inventory() == {"available": 0, "pending": 1, "sold": 0}
    (row,) = api.rows(Order)
    assert row.user_id == api.customer.id


def test_placing_an_order_writes_its_events_to_the_outbox(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    already = len(outbox(api))
    order = place(api, pet["id"]).json()
    written = outbox(api)[already:]
    assert [(row.event, row.rooms) for row in written] == [
        ("order.placed", ["orders", f"user:{api.customer.username}"]),
        ("pet.updated", ["pets", f"pet:{pet['id']}"]),
        ("inventory.changed", ["inventory"]),
    ]
    assert written[0].data == order
    assert written[1].data["status"] == "pending"
    assert written[2].data == {}  # counted by the relay when it publishes


def test_ship_date_keeps_its_instant_whatever_the_offset(api: ApiHarness) -> None:
    first = place(api, api.new_pet("a")["id"], shipDate="2030-06-01T12:00:00+02:00").json()
    second = place(api, api.new_pet("b")["id"], shipDate="2030-06-01T10:00:00").json()
    assert first["shipDate"] == second["shipDate"] == "2030-06-01T10:00:00Z"
    assert api.client.get(f"{API}/store/order/{first['id']}", headers=api.customer.headers).json() == first


def test_placing_an_order_from_a_form_body(api: ApiHarness) -> None:
    pet = api.new_pet("Formy")
    response = api.client.post(
        f"{API}/store/order",
        content=f"petId={pet['id']}&quantity=3".encode(),
        headers={**api.customer.headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert (response.json()["petId"], response.json()["quantity"]) == (pet["id"], 3)


def test_an_order_for_an_unknown_pet_is_404_and_changes_nothing(api: ApiHarness) -> None:
    before = api.snapshot()
    assert_error(place(api, 12345), 404, "not_found")
    assert api.snapshot() == before


@pytest.mark.parametrize("status", ["pending", "sold"])
def test_an_order_for_a_pet_that_is_not_available_is_409_and_changes_nothing(api: ApiHarness, status: str) -> None:
    pet = api.new_pet("Taken", status=status)
    before = api.snapshot()
    assert_error(place(api, pet["id"]), 409, "conflict")
    assert api.snapshot() == before


def test_a_pet_cannot_be_ordered_twice(api: ApiHarness) -> None:
    pet = api.new_pet("Once")
    assert place(api, pet["id"]).status_code == 200
    before = api.snapshot()
    assert_error(place(api, pet["id"], who=api.user("other")), 409, "conflict")
    assert api.snapshot() == {**before, "users": api.snapshot()["users"]}
    assert len(api.rows(Order)) == 1


def test_staff_placing_an_order_with_a_taken_id_get_409_and_the_pet_stays_available(api: ApiHarness) -> None:
    first = place(api, api.new_pet("a")["id"], who=api.staff, id=70).json()
    assert first["id"] == 70
    pet = api.new_pet("b")
    before = api.snapshot()
    assert_error(place(api, pet["id"], who=api.staff, id=70), 409, "conflict")
    assert api.snapshot() == before
    later = place(api, pet["id"], who=api.staff).json()
    assert later["id"] > 70


def test_a_customer_sending_the_id_of_another_users_order_gets_a_fresh_id_not_a_409(api: ApiHarness) -> None:
    """A 409 "already exists" would tell the customer that order exists, which its 404 hides."""
    theirs = place(api, api.new_pet("a")["id"], who=api.user("other")).json()
    mine = place(api, api.new_pet("b")["id"], id=theirs["id"])
    assert mine.status_code == 200, mine.text
    assert mine.json()["id"] > theirs["id"]
    assert api.client.get(f"{API}/store/order/{theirs['id']}", headers=api.staff.headers).json() == theirs


def test_a_customer_sending_a_free_id_gets_one_the_server_picks(api: ApiHarness) -> None:
    """Generated clients send the field they have (the Petstore's example has ``"id": 10``): it is ignored."""
    order = place(api, api.new_pet("a")["id"], id=10_000).json()
    assert order["id"] != 10_000
    assert_error(api.client.get(f"{API}/store/order/10000", headers=api.staff.headers), 404, "not_found")


def test_placing_an_order_needs_credentials(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    before = api.snapshot()
    response = api.client.post(f"{API}/store/order", json={"petId": pet["id"]})
    assert_error(response, 401, "unauthorized", {"WWW-Authenticate": "Bearer"})
    assert api.snapshot() == before


@pytest.mark.parametrize("status", ["approved", "delivered"])
def test_a_customer_may_only_place_a_placed_order(api: ApiHarness, status: str) -> None:
    pet = api.new_pet("Rex")
    before = api.snapshot()
    assert_error(place(api, pet["id"], status=status), 403, "forbidden")
    assert api.snapshot() == before
    assert place(api, pet["id"], status="placed").status_code == 200


def test_staff_placing_a_delivered_order_sells_the_pet(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    order = place(api, pet["id"], who=api.staff, status="delivered").json()
    assert (order["status"], order["complete"]) == ("delivered", True)
    assert pet_status(api, pet["id"]) == "sold"


def test_an_order_by_an_account_that_no_longer_exists_is_401(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    ghost = Account(id=999_999, username="ghost", role=Role.customer)
    before = api.snapshot()
    assert_error(place(api, pet["id"], who=ghost), 401, "unauthorized")
    assert api.snapshot() == before


@pytest.mark.parametrize(
    "fields",
    [
        {"quantity": 0},
        {"quantity": 2**31},
        {"quantity": "two"},
        {"status": "lost"},
        {"shipDate": "tomorrow"},
        {"complete": "maybe"},
        {"id": -3},
        {"id": 2**63},
        {"petId": 2**63},
        {"petId": None},
        {"coupon": "FREE"},
    ],
)
def test_an_invalid_order_is_422_and_changes_nothing(api: ApiHarness, fields: dict[str, Any]) -> None:
    pet = api.new_pet("Rex")
    before = api.snapshot()
    assert_error(place(api, pet["id"], **fields), 422, "validation_error")
    assert api.snapshot() == before


def test_an_order_without_a_pet_id_is_422(api: ApiHarness) -> None:
    response = api.client.post(f"{API}/store/order", json={"quantity": 1}, headers=api.customer.headers)
    assert_error(response, 422, "validation_error")


# ------------------------------------------------------------------------------ getOrderById


def test_the_owner_and_staff_read_an_order_but_another_customer_gets_404(api: ApiHarness) -> None:
    order = place(api, api.new_pet("Rex")["id"]).json()
    path = f"{API}/store/order/{order['id']}"
    assert api.client.get(path, headers=api.customer.headers).json() == order
    assert api.client.get(path, headers=api.staff.headers).json() == order
    assert api.client.get(path, headers=api.admin.headers).json() == order
    other = api.client.get(path, headers=api.user("nosy").headers)
    assert_error(other, 404, "not_found")
    unknown = api.client.get(f"{API}/store/order/{order['id'] + 1}", headers=api.user("nosy2").headers)
    assert other.json()["message"].replace(str(order["id"]), "N") == unknown.json()["message"].replace(
        str(order["id"] + 1), "N"
    )


def test_reading_an_order_needs_credentials(api: ApiHarness) -> None:
    order = place(api, api.new_pet("Rex")["id"]).json()
    assert_error(
        api.client.get(f"{API}/store/order/{order['id']}"), 401, "unauthorized", {"WWW-Authenticate": "Bearer"}
    )


@pytest.mark.parametrize(("raw", "status"), [("424242", 404), ("x", 400), ("-2", 400), (str(2**64), 400)])
def test_reading_an_unknown_or_invalid_order_id(api: ApiHarness, raw: str, status: int) -> None:
    assert_error(api.client.get(f"{API}/store/order/{raw}", headers=api.staff.headers), status)


# ------------------------------------------------------------------------------- deleteOrder


def test_deleting_a_placed_order_makes_the_pet_available_again(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    order = place(api, pet["id"]).json()
    already = len(outbox(api))
    response = api.client.delete(f"{API}/store/order/{order['id']}", headers=api.customer.headers)
    assert response.status_code == 200, response.text
    assert response.json()["code"] == 200
    assert pet_status(api, pet["id"]) == "available"
    assert api.rows(Order) == []
    assert [(row.event, row.rooms) for row in outbox(api)[already:]] == [
        ("order.deleted", ["orders", f"user:{api.customer.username}"]),
        ("pet.updated", ["pets", f"pet:{pet['id']}"]),
        ("inventory.changed", ["inventory"]),
    ]
    assert place(api, pet["id"], who=api.user("next")).status_code == 200


def test_deleting_a_delivered_order_keeps_the_pet_sold(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    order = place(api, pet["id"], who=api.staff, status="delivered").json()
    assert api.client.delete(f"{API}/store/order/{order['id']}", headers=api.staff.headers).status_code == 200
    assert pet_status(api, pet["id"]) == "sold"


def test_deleting_an_old_order_does_not_free_a_pet_another_order_holds(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    old = place(api, pet["id"]).json()
    # Staff put the pet back on sale by hand; someone else orders it.
    api.client.post(f"{API}/pet/{pet['id']}", params={"status": "available"}, headers=api.staff.headers)
    assert place(api, pet["id"], who=api.user("second")).status_code == 200
    assert api.client.delete(f"{API}/store/order/{old['id']}", headers=api.customer.headers).status_code == 200
    assert pet_status(api, pet["id"]) == "pending"


def test_another_customers_order_cannot_be_deleted_and_is_404(api: ApiHarness) -> None:
    order = place(api, api.new_pet("Rex")["id"]).json()
    before = api.snapshot()
    nosy = api.user("nosy")
    before = api.snapshot()
    assert_error(api.client.delete(f"{API}/store/order/{order['id']}", headers=nosy.headers), 404, "not_found")
    assert api.snapshot() == before


def test_staff_may_delete_any_order(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    order = place(api, pet["id"]).json()
    assert api.client.delete(f"{API}/store/order/{order['id']}", headers=api.staff.headers).status_code == 200
    assert pet_status(api, pet["id"]) == "available"


def test_deleting_an_order_twice_is_404(api: ApiHarness) -> None:
    order = place(api, api.new_pet("Rex")["id"]).json()
    path = f"{API}/store/order/{order['id']}"
    assert api.client.delete(path, headers=api.customer.headers).status_code == 200
    before = api.snapshot()
    assert_error(api.client.delete(path, headers=api.customer.headers), 404, "not_found")
    assert api.snapshot() == before


def test_deleting_an_order_needs_credentials(api: ApiHarness) -> None:
    order = place(api, api.new_pet("Rex")["id"]).json()
    before = api.snapshot()
    assert_error(api.client.delete(f"{API}/store/order/{order['id']}"), 401, "unauthorized")
    assert_error(api.client.delete(f"{API}/store/order/abc", headers=api.staff.headers), 400, "bad_request")
    assert api.snapshot() == before


def test_an_order_outlives_its_deleted_pet_and_can_still_be_deleted(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    order = place(api, pet["id"]).json()
    assert api.client.delete(f"{API}/pet/{pet['id']}", headers=api.staff.headers).status_code == 200
    assert api.client.get(f"{API}/store/order/{order['id']}", headers=api.customer.headers).json() == order
    assert api.client.delete(f"{API}/store/order/{order['id']}", headers=api.customer.headers).status_code == 200
    assert api.inventory() == {"available": 0, "pending": 0, "sold": 0}


# ------------------------------------------------------------------- extensions: list, PATCH


def test_listing_orders_shows_a_customer_their_own_and_staff_every_one(api: ApiHarness) -> None:
    mine = [place(api, api.new_pet(f"m{i}")["id"]).json() for i in range(3)]
    other = place(api, api.new_pet("o")["id"], who=api.user("other")).json()
    listed = api.client.get(f"{API}/store/orders", headers=api.customer.headers).json()
    assert listed == mine[::-1]
    everything = api.client.get(f"{API}/store/orders", headers=api.staff.headers).json()
    assert [o["id"] for o in everything] == [other["id"], *[o["id"] for o in mine[::-1]]]
    page = api.client.get(f"{API}/store/orders", params={"limit": 1, "offset": 1}, headers=api.customer.headers)
    assert page.json() == [mine[1]]
    assert_error(api.client.get(f"{API}/store/orders"), 401)
    assert_error(api.client.get(f"{API}/store/orders?limit=-1", headers=api.staff.headers), 400)


def test_delivering_an_order_sells_its_pet_and_completes_it(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    order = place(api, pet["id"]).json()
    already = len(outbox(api))
    response = api.client.patch(
        f"{API}/store/order/{order['id']}", json={"status": "delivered"}, headers=api.staff.headers
    )
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["complete"]) == ("delivered", True)
    assert pet_status(api, pet["id"]) == "sold"
    assert api.inventory() == {"available": 0, "pending": 0, "sold": 1}
    assert [(row.event, row.rooms) for row in outbox(api)[already:]] == [
        ("order.updated", ["orders", f"user:{api.customer.username}"]),
        ("pet.updated", ["pets", f"pet:{pet['id']}"]),
        ("inventory.changed", ["inventory"]),
    ]


def test_approving_an_order_keeps_the_pet_pending(api: ApiHarness) -> None:
    pet = api.new_pet("Rex")
    order = place(api, pet["id"]).json()
    response = api.client.patch(
        f"{API}/store/order/{order['id']}",
        json={"status": "approved", "shipDate": "2031-01-01T00:00:00Z"},
        headers=api.staff.headers,
    )
    assert response.json()["status"] == "approved"
    assert response.json()["shipDate"] == "2031-01-01T00:00:00Z"
    assert pet_status(api, pet["id"]) == "pending"


def test_a_delivered_order_cannot_go_back(api: ApiHarness) -> None:
    order = place(api, api.new_pet("Rex")["id"], who=api.staff, status="delivered").json()
    before = api.snapshot()
    response = api.client.patch(
        f"{API}/store/order/{order['id']}", json={"status": "placed"}, headers=api.staff.headers
    )
    assert_error(response, 409, "conflict")
    assert api.snapshot() == before


def test_only_staff_may_change_an_order(api: ApiHarness) -> None:
    order = place(api, api.new_pet("Rex")["id"]).json()
    path = f"{API}/store/order/{order['id']}"
    before = api.snapshot()
    assert_error(api.client.patch(path, json={"status": "delivered"}, headers=api.customer.headers), 403)
    assert_error(api.client.patch(path, json={"status": "delivered"}), 401)
    assert_error(api.client.patch(f"{API}/store/order/9999", json={}, headers=api.staff.headers), 404)
    assert_error(api.client.patch(path, json={"status": "lost"}, headers=api.staff.headers), 422)
    assert_error(api.client.patch(path, json={"petId": 3}, headers=api.staff.headers), 422)
    assert api.snapshot() == before


def test_an_order_without_a_ship_date_has_no_ship_date_key_rather_than_null(api: ApiHarness) -> None:
    order = place(api, api.new_pet("Rex")["id"]).json()
    assert "shipDate" not in order
    assert None not in order.values()
