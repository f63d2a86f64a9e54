"""``/user``: sign-up, own account, admin rules, write-only Argon2id passwords, on SQLite and PostgreSQL.

``/user/login`` and ``/user/logout`` are the auth plugin's (tests/plugins/test_auth.py); here the
core is loaded with the header auth fake, which serves neither.
"""

from __future__ import annotations

from typing import Any

import pytest
from argon2 import PasswordHasher

from petstore.models import Order, Role, User
from tests.fakes import Account, ApiHarness, assert_error

API = "/api/v3"
PW = "a-fine-password"

SIGN_UP = {
    "id": None,
    "username": "jane.doe",
    "firstName": "Jane",
    "lastName": "Doe",
    "email": "jane@example.test",
    "password": "s3cret-Passw0rd",
    "phone": "+1 555 0100",
    "userStatus": 1,
}


def sign_up(api: ApiHarness, **fields: Any) -> Any:
    body = {k: v for k, v in {**SIGN_UP, **fields}.items() if v is not None}
    return api.client.post(f"{API}/user", json=body)


def row(api: ApiHarness, username: str) -> User:
    (user,) = api.rows(User, where=User.username == username)  # type: ignore[arg-type]
    return user


def account(api: ApiHarness, user: dict[str, Any]) -> Account:
    return Account(user["id"], user["username"], Role(row(api, user["username"]).role))


def assert_no_password(body: Any) -> None:
    text = repr(body).lower()
    assert "password" not in text and "argon2" not in text, body


# ---------------------------------------------------------------------------------- createUser


def test_anyone_may_sign_up_as_a_customer_and_the_password_is_never_returned(api: ApiHarness) -> None:
    response = sign_up(api)
    assert response.status_code == 200, response.text
    user = response.json()
    assert_no_password(user)
    assert user == {k: v for k, v in SIGN_UP.items() if k != "password"} | {"id": user["id"]}
    stored = row(api, "jane.doe")
    assert stored.role == "customer"
    assert stored.password_hash.startswith("$argon2id$")
    assert PasswordHasher().verify(stored.password_hash, SIGN_UP["password"])


def test_sign_up_from_a_form_body(api: ApiHarness) -> None:
    response = api.client.post(
        f"{API}/user",
        content=b"username=formuser&password=pw-1234567&email=f%40example.test",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "f@example.test"
    assert row(api, "formuser").password_hash.startswith("$argon2id$")


def test_sign_up_with_a_taken_username_is_409_and_changes_nothing(api: ApiHarness) -> None:
    sign_up(api)
    before = api.snapshot()
    assert_error(sign_up(api, password="another-Passw0rd"), 409, "conflict")
    assert_error(sign_up(api, username="the-staff"), 409, "conflict")
    assert api.snapshot() == before


def test_sign_up_with_a_taken_id_is_409(api: ApiHarness) -> None:
    before = api.snapshot()
    assert_error(sign_up(api, id=api.admin.id), 409, "conflict")
    assert api.snapshot() == before


def test_sign_up_with_a_chosen_id_keeps_it_and_later_ids_do_not_collide(api: ApiHarness) -> None:
    assert sign_up(api, id=900).json()["id"] == 900
    assert sign_up(api, username="next").json()["id"] > 900


@pytest.mark.parametrize(
    "fields",
    [
        {"password": None},
        {"password": ""},
        {"username": ""},
        {"username": "has space"},
        {"username": "x" * 65},
        {"username": 42},
        {"role": "admin"},
        {"userStatus": "active"},
        {"email": "e" * 300},
        {"id": -1},
    ],
)
def test_an_invalid_sign_up_is_422_and_changes_nothing(api: ApiHarness, fields: dict[str, Any]) -> None:
    before = api.snapshot()
    assert_error(sign_up(api, **fields), 422, "validation_error")
    assert api.snapshot() == before


def test_a_signed_up_customer_cannot_make_themselves_admin(api: ApiHarness) -> None:
    user = sign_up(api).json()
    who = account(api, user)
    response = api.client.put(f"{API}/user/{who.username}", json={**SIGN_UP, "role": "admin"}, headers=who.headers)
    assert_error(response, 422, "validation_error")
    assert row(api, who.username).role == "customer"


# ------------------------------------------------------------------------ createWithList


def test_an_admin_creates_users_from_a_list_in_one_transaction(api: ApiHarness) -> None:
    users = [{"username": f"bulk{i}", "password": f"bulk-password-{i}"} for i in range(3)]
    response = api.client.post(f"{API}/user/createWithList", json=users, headers=api.admin.headers)
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "bulk0"
    assert_no_password(response.json())
    for i in range(3):
        assert row(api, f"bulk{i}").password_hash.startswith("$argon2id$")


def test_a_list_with_one_bad_user_creates_none(api: ApiHarness) -> None:
    before = api.snapshot()
    taken = [{"username": "fresh", "password": PW}, {"username": "the-customer", "password": PW}]
    assert_error(api.client.post(f"{API}/user/createWithList", json=taken, headers=api.admin.headers), 409)
    twice = [{"username": "dup", "password": PW}, {"username": "dup", "password": PW}]
    assert_error(api.client.post(f"{API}/user/createWithList", json=twice, headers=api.admin.headers), 409)
    invalid = [{"username": "ok", "password": PW}, {"username": "bad name", "password": PW}]
    assert_error(api.client.post(f"{API}/user/createWithList", json=invalid, headers=api.admin.headers), 422)
    assert api.snapshot() == before


@pytest.mark.parametrize("body", [[], {}, {"username": "solo"}, [{"username": f"u{i}"} for i in range(101)], "x"])
def test_create_with_list_needs_a_non_empty_array_of_at_most_100(api: ApiHarness, body: Any) -> None:
    before = api.snapshot()
    assert_error(api.client.post(f"{API}/user/createWithList", json=body, headers=api.admin.headers), 400)
    assert api.snapshot() == before


@pytest.mark.parametrize(("who", "status"), [(None, 401), ("customer", 403), ("staff", 403)])
def test_only_admins_create_users_from_a_list(api: ApiHarness, who: str | None, status: int) -> None:
    headers = getattr(api, who).headers if who else {}
    body = [{"username": "bulk", "password": PW}]
    before = api.snapshot()
    assert_error(api.client.post(f"{API}/user/createWithList", json=body, headers=headers), status)
    assert api.snapshot() == before


# ------------------------------------------------------------------------------ getUserByName


def test_a_user_reads_their_own_account_and_admins_read_any(api: ApiHarness) -> None:
    user = sign_up(api).json()
    who = account(api, user)
    assert api.client.get(f"{API}/user/{who.username}", headers=who.headers).json() == user
    assert api.client.get(f"{API}/user/{who.username}", headers=api.admin.headers).json() == user


@pytest.mark.parametrize("reader", ["customer", "staff"])
def test_another_users_account_is_404_not_403(api: ApiHarness, reader: str) -> None:
    sign_up(api)
    response = api.client.get(f"{API}/user/jane.doe", headers=getattr(api, reader).headers)
    assert_error(response, 404, "not_found")
    unknown = api.client.get(f"{API}/user/nobody", headers=getattr(api, reader).headers)
    assert_error(unknown, 404, "not_found")


def test_reading_a_user_needs_credentials(api: ApiHarness) -> None:
    assert_error(api.client.get(f"{API}/user/the-customer"), 401, "unauthorized", {"WWW-Authenticate": "Bearer"})


def test_an_unknown_user_is_404_even_for_an_admin(api: ApiHarness) -> None:
    assert_error(api.client.get(f"{API}/user/nobody", headers=api.admin.headers), 404, "not_found")


@pytest.mark.parametrize("raw", ["%00", "a%00b", "name%0A", "x" * 300, "%F0%9F%90%B6", "%ED%A0%80", "..%2F..", "a%20b"])
def test_a_username_that_cannot_exist_is_404_never_500(api: ApiHarness, raw: str) -> None:
    before = api.snapshot()
    for method in ("GET", "DELETE"):
        assert_error(api.client.request(method, f"{API}/user/{raw}", headers=api.admin.headers), 404, "not_found")
    response = api.client.put(f"{API}/user/{raw}", json={"username": "ok"}, headers=api.admin.headers)
    assert_error(response, 404, "not_found")
    assert api.snapshot() == before


# ---------------------------------------------------------------------------------- updateUser


def test_a_user_changes_their_own_account_and_password(api: ApiHarness) -> None:
    user = sign_up(api).json()
    who = account(api, user)
    old_hash = row(api, who.username).password_hash
    body = {"username": who.username, "firstName": "Janet", "password": "n3w-password"}
    response = api.client.put(f"{API}/user/{who.username}", json=body, headers=who.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": user["id"], "username": who.username, "firstName": "Janet"}
    stored = row(api, who.username)
    assert stored.password_hash != old_hash and stored.password_hash.startswith("$argon2id$")
    assert PasswordHasher().verify(stored.password_hash, "n3w-password")


def test_updating_without_a_password_keeps_the_old_one(api: ApiHarness) -> None:
    who = account(api, sign_up(api).json())
    old_hash = row(api, who.username).password_hash
    api.client.put(f"{API}/user/{who.username}", json={"username": who.username}, headers=who.headers)
    assert row(api, who.username).password_hash == old_hash


def test_renaming_to_a_taken_username_is_409_and_changes_nothing(api: ApiHarness) -> None:
    who = account(api, sign_up(api).json())
    before = api.snapshot()
    response = api.client.put(f"{API}/user/{who.username}", json={"username": "the-admin"}, headers=who.headers)
    assert_error(response, 409, "conflict")
    assert api.snapshot() == before


def test_renaming_keeps_the_account(api: ApiHarness) -> None:
    user = sign_up(api).json()
    response = api.client.put(f"{API}/user/jane.doe", json={"username": "jane.smith"}, headers=api.admin.headers)
    assert response.json() == {"id": user["id"], "username": "jane.smith"}
    assert_error(api.client.get(f"{API}/user/jane.doe", headers=api.admin.headers), 404)


def test_a_users_id_cannot_change(api: ApiHarness) -> None:
    who = account(api, sign_up(api).json())
    before = api.snapshot()
    body = {"id": who.id + 100, "username": who.username}
    assert_error(api.client.put(f"{API}/user/{who.username}", json=body, headers=who.headers), 400, "bad_request")
    assert api.snapshot() == before


def test_another_users_account_cannot_be_changed_and_is_404(api: ApiHarness) -> None:
    sign_up(api)
    before = api.snapshot()
    body = {"username": "jane.doe", "password": "hijacked"}
    for who in (api.customer, api.staff):
        assert_error(api.client.put(f"{API}/user/jane.doe", json=body, headers=who.headers), 404)
    assert_error(api.client.put(f"{API}/user/jane.doe", json=body), 401)
    assert_error(api.client.put(f"{API}/user/nobody", json={"username": "nobody"}, headers=api.admin.headers), 404)
    assert api.snapshot() == before


def test_an_admin_changes_any_account(api: ApiHarness) -> None:
    sign_up(api)
    response = api.client.put(
        f"{API}/user/jane.doe", json={"username": "jane.doe", "userStatus": 2}, headers=api.admin.headers
    )
    assert response.json()["userStatus"] == 2


def test_update_user_from_a_form_body(api: ApiHarness) -> None:
    who = account(api, sign_up(api).json())
    response = api.client.put(
        f"{API}/user/{who.username}",
        content=f"username={who.username}&phone=123".encode(),
        headers={**who.headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["phone"] == "123"


# ---------------------------------------------------------------------------------- deleteUser


def test_a_user_deletes_their_own_account_and_their_orders_stay_as_records(api: ApiHarness) -> None:
    who = account(api, sign_up(api).json())
    pet = api.new_pet("Rex")
    api.client.post(f"{API}/store/order", json={"petId": pet["id"]}, headers=who.headers)
    response = api.client.delete(f"{API}/user/{who.username}", headers=who.headers)
    assert response.status_code == 200, response.text
    assert response.json()["code"] == 200
    assert api.rows(User, where=User.username == who.username) == []  # type: ignore[arg-type]
    (order,) = api.rows(Order)
    assert order.user_id is None
    assert_error(api.client.get(f"{API}/user/{who.username}", headers=api.admin.headers), 404)


def test_deleting_a_user_that_does_not_exist_is_404(api: ApiHarness) -> None:
    assert_error(api.client.delete(f"{API}/user/nobody", headers=api.admin.headers), 404, "not_found")


def test_another_users_account_cannot_be_deleted_and_is_404(api: ApiHarness) -> None:
    sign_up(api)
    before = api.snapshot()
    for who in (api.customer, api.staff):
        assert_error(api.client.delete(f"{API}/user/jane.doe", headers=who.headers), 404, "not_found")
    assert_error(api.client.delete(f"{API}/user/jane.doe"), 401, "unauthorized")
    assert api.snapshot() == before
    assert api.client.delete(f"{API}/user/jane.doe", headers=api.admin.headers).status_code == 200


def test_a_minimal_user_has_only_the_keys_it_has_values_for(api: ApiHarness) -> None:
    user = api.client.post(f"{API}/user", json={"username": "min", "password": PW}).json()
    assert user == {"id": user["id"], "username": "min"}
