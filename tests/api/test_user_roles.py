"""``PATCH /user/{username}`` ``{"role": ...}``: admins change roles through REST, with the real auth
plugin, and a new role holds from the next request on, with the tokens the user already has.

(The password rule for ``POST /user`` and ``PUT /user/{username}`` is in tests/api/test_passwords.py;
the same change from ``petstore users set-role`` is in tests/test_cli_users.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from petstore.db.queries import find_user
from petstore.models import Role
from tests.plugins.harness import App, assert_error, bearer, running_app

API = "/api/v3"
AUTH = ("plugins.auth", "tests.plugins.harness:Recorder")
NEW_PET = {"name": "Rex", "photoUrls": []}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    with running_app(tmp_path, plugins=AUTH) as harness:
        harness.add_user("alice")
        harness.add_user("stella", Role.staff)
        harness.add_user("root", Role.admin)
        yield harness


def token_of(app: App, username: str) -> str:
    token: str = app.login(username)["access_token"]
    return token


def role_in_database(app: App, username: str) -> str:
    async def read() -> str:
        async with app.state.sessions() as session:
            user = await find_user(session, username)
            assert user is not None
            return user.role

    return app.run(read)


def set_role(app: App, token: str, username: str, body: object) -> httpx.Response:
    return app.client.patch(f"{API}/user/{username}", json=body, headers=bearer(token))


def test_an_admin_changes_a_role_and_it_holds_on_the_users_next_request_with_the_old_token(app: App) -> None:
    alice = token_of(app, "alice")
    assert app.client.post(f"{API}/pet", json=NEW_PET, headers=bearer(alice)).status_code == 403
    response = app.client.patch(f"{API}/user/alice", json={"role": "staff"}, headers=bearer(token_of(app, "root")))
    assert response.status_code == 200, response.text
    assert response.json() == {"username": "alice", "role": "staff"}
    assert role_in_database(app, "alice") == "staff"
    # The token alice had before the change: staff from now on, and not logged out.
    assert app.whoami(alice).json() == {"user": "alice", "role": "staff"}
    assert app.client.post(f"{API}/pet", json=NEW_PET, headers=bearer(alice)).status_code == 200


def test_a_demotion_holds_on_the_next_request_too(app: App) -> None:
    stella = token_of(app, "stella")
    assert app.client.post(f"{API}/pet", json=NEW_PET, headers=bearer(stella)).status_code == 200
    response = app.client.patch(f"{API}/user/stella", json={"role": "customer"}, headers=bearer(token_of(app, "root")))
    assert response.status_code == 200, response.text
    assert_error(app.client.post(f"{API}/pet", json=NEW_PET, headers=bearer(stella)), 403)


@pytest.mark.parametrize("who", ["alice", "stella"])
def test_only_admins_change_roles(app: App, who: str) -> None:
    response = app.client.patch(f"{API}/user/alice", json={"role": "admin"}, headers=bearer(token_of(app, who)))
    assert_error(response, 403)
    assert role_in_database(app, "alice") == "customer"


def test_changing_a_role_needs_credentials(app: App) -> None:
    response = app.client.patch(f"{API}/user/alice", json={"role": "admin"})
    assert_error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert role_in_database(app, "alice") == "customer"


def test_an_unknown_user_is_404(app: App) -> None:
    assert_error(set_role(app, token_of(app, "root"), "nobody", {"role": "staff"}), 404)


@pytest.mark.parametrize(
    "body",
    [{"role": "root"}, {"role": ""}, {"role": None}, {}, {"role": "staff", "username": "x"}, ["staff"], "staff"],
)
def test_a_bad_role_is_422_and_changes_nothing(app: App, body: object) -> None:
    assert_error(set_role(app, token_of(app, "root"), "alice", body), 422)
    assert role_in_database(app, "alice") == "customer"


def test_the_only_admin_cannot_lose_the_role(app: App) -> None:
    root = token_of(app, "root")
    assert_error(set_role(app, root, "root", {"role": "customer"}), 409)
    assert role_in_database(app, "root") == "admin"
    # With a second admin, the first may step down.
    assert set_role(app, root, "alice", {"role": "admin"}).status_code == 200
    assert set_role(app, root, "root", {"role": "customer"}).status_code == 200
    assert role_in_database(app, "root") == "customer"


def test_the_served_document_declares_the_operation_with_every_status(app: App) -> None:
    document = app.client.get(f"{API}/openapi.json").json()
    operation = document["paths"]["/user/{username}"]["patch"]
    assert operation["operationId"] == "setUserRole"
    assert {"400", "401", "403", "404", "409", "413", "415", "422"} <= set(operation["responses"])
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["role"]["enum"] == ["admin", "staff", "customer"]
    assert operation["security"]  # the auth plugin's bearer scheme


def test_admins_list_the_accounts_with_their_roles_by_name_and_no_one_else_may(app: App) -> None:
    listed = app.client.get(f"{API}/user", headers=bearer(token_of(app, "root")))
    assert listed.status_code == 200, listed.text
    assert [(user["username"], user["role"]) for user in listed.json()] == [
        ("alice", "customer"),
        ("root", "admin"),
        ("stella", "staff"),
    ]
    assert set(listed.json()[0]) == {"id", "username", "role"}  # never a password hash
    page = app.client.get(f"{API}/user", params={"limit": 1, "offset": 1}, headers=bearer(token_of(app, "root")))
    assert [user["username"] for user in page.json()] == ["root"]
    assert app.client.get(f"{API}/user", headers=bearer(token_of(app, "stella"))).status_code == 403
    assert app.client.get(f"{API}/user").status_code == 401
