"""The password rule: at least 8 characters and not a common password, wherever one is set
(``POST /user``, ``createWithList``, ``PUT /user/{username}``); 422 in the JSON error shape
otherwise, and nothing changes. The CLI's side is in tests/test_cli.py."""

from __future__ import annotations

import pytest

from petstore.models import User
from petstore.passwords import MIN_LENGTH, common_passwords, password_problem
from tests.fakes import ApiHarness, assert_error

API = "/api/v3"
GOOD = "correct horse battery"


def test_the_common_list_is_package_data_of_a_few_thousand_lowercased_entries() -> None:
    common = common_passwords()
    assert 1000 <= len(common) <= 20000
    assert {"password1", "12345678", "qwertyuiop"} <= common
    assert all(len(entry) >= MIN_LENGTH and entry == entry.lower() for entry in common)
    assert not any(entry.startswith("#") for entry in common)  # the comment lines are not entries


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("", "at least 8"),
        ("seven77", "at least 8"),
        ("password1", "common"),
        ("PassWord1", "common"),  # the comparison ignores case
        ("12345678", "common"),
    ],
)
def test_short_or_common_passwords_are_refused_with_a_reason(password: str, reason: str) -> None:
    problem = password_problem(password)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("password", ["eight888", GOOD, "s3cret-Passw0rd"])
def test_long_enough_uncommon_passwords_are_accepted(password: str) -> None:
    assert password_problem(password) is None


@pytest.mark.parametrize(("password", "reason"), [("short", "at least 8 characters"), ("iloveyou2", "common")])
def test_sign_up_with_a_weak_password_is_422_and_creates_nothing(api: ApiHarness, password: str, reason: str) -> None:
    before = api.snapshot()
    response = api.client.post(f"{API}/user", json={"username": "weak", "password": password})
    assert_error(response, 422, "validation_error")
    assert reason in response.json()["message"] and "password" in response.json()["message"]
    assert password not in response.text
    assert api.snapshot() == before


def test_sign_up_from_a_form_with_a_weak_password_is_422(api: ApiHarness) -> None:
    response = api.client.post(f"{API}/user", data={"username": "weak", "password": "letmein1"})
    assert_error(response, 422, "validation_error")


def test_a_list_with_one_weak_password_creates_no_one(api: ApiHarness) -> None:
    before = api.snapshot()
    body = [{"username": "fine", "password": GOOD}, {"username": "weak", "password": "abc"}]
    response = api.client.post(f"{API}/user/createWithList", json=body, headers=api.admin.headers)
    assert_error(response, 422, "validation_error")
    assert api.snapshot() == before


def test_changing_to_a_weak_password_is_422_and_keeps_the_old_one(api: ApiHarness) -> None:
    assert api.client.post(f"{API}/user", json={"username": "jane", "password": GOOD}).status_code == 200
    (user,) = api.rows(User, where=User.username == "jane")  # type: ignore[arg-type]
    headers = api.admin.headers
    for weak in ("1234567", "sunshine"):
        response = api.client.put(f"{API}/user/jane", json={"username": "jane", "password": weak}, headers=headers)
        assert_error(response, 422, "validation_error")
    (after,) = api.rows(User, where=User.username == "jane")  # type: ignore[arg-type]
    assert after.password_hash == user.password_hash


def test_a_change_without_a_password_is_not_held_to_the_rule(api: ApiHarness) -> None:
    assert api.client.post(f"{API}/user", json={"username": "jane", "password": GOOD}).status_code == 200
    response = api.client.put(
        f"{API}/user/jane", json={"username": "jane", "firstName": "J"}, headers=api.admin.headers
    )
    assert response.status_code == 200, response.text
