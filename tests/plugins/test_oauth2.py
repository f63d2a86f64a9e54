"""plugins.auth as OAuth2 tools know it (RFC 6749): the password grant and refresh as form bodies,
the §5.1 answer and §5.2 errors, the password flow in the served document; and logins that a stale
``Authorization`` header does not stand in the way of."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from petstore.models import Role
from tests.plugins.harness import PASSWORD, App, assert_error, bearer, running_app

API = "/api/v3"
AUTH = ("plugins.auth", "tests.plugins.harness:Recorder")
STALE = ("Bearer not.a.token", "Bearer " + "A" * 300, "Basic c3dhZ2dlcjpzZWNyZXQ=", "Bearer")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    with running_app(tmp_path, plugins=AUTH) as harness:
        harness.add_user("alice")
        harness.add_user("root", Role.admin)
        yield harness


def test_the_password_grant_answers_as_rfc_6749_says(app: App) -> None:
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    response = app.client.post(f"{API}/auth/token", data=form)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer" and isinstance(body["expires_in"], int)
    # What Swagger UI's "Authorize" also sends (client_id, an empty scope) is no reason to refuse.
    swagger = form | {"client_id": "", "scope": ""}
    assert app.client.post(f"{API}/auth/token", data=swagger).status_code == 200


def test_token_endpoint_errors_carry_rfc_6749_error_codes(app: App) -> None:
    wrong = app.client.post(f"{API}/auth/token", data={"grant_type": "password", "username": "alice", "password": "x"})
    assert_error(wrong, 401, "unauthorized", oauth="invalid_grant")
    assert wrong.headers["cache-control"] == "no-store"
    other = app.client.post(f"{API}/auth/token", data={"grant_type": "client_credentials"})
    assert_error(other, 400, "unsupported_grant_type", oauth="unsupported_grant_type")
    assert_error(app.client.post(f"{API}/auth/token", data={"grant_type": "password"}), 400, oauth="invalid_request")


def test_refresh_takes_the_rfc_6749_form_body_and_json_still(app: App) -> None:
    first = app.login("alice")
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    by_form = app.client.post(f"{API}/auth/refresh", data=form)
    assert by_form.status_code == 200, by_form.text
    pair = by_form.json()
    assert set(pair) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert app.whoami(pair["access_token"]).json()["user"] == "alice"
    by_json = app.client.post(f"{API}/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert by_json.status_code == 200, by_json.text
    # The form's refresh token is spent like the JSON's: its reuse is refused.
    assert_error(app.client.post(f"{API}/auth/refresh", data=form), 401, oauth="invalid_grant")


def test_refresh_refusals_are_documented_statuses(app: App) -> None:
    documented = set(app.client.get(f"{API}/openapi.json").json()["paths"]["/auth/refresh"]["post"]["responses"])
    empty = app.client.post(f"{API}/auth/refresh", content=b"")
    assert_error(empty, 400, oauth="invalid_request")
    grant = app.client.post(f"{API}/auth/refresh", data={"grant_type": "password", "refresh_token": "x"})
    assert_error(grant, 400, "unsupported_grant_type", oauth="unsupported_grant_type")
    text = app.client.post(f"{API}/auth/refresh", content=b"x", headers={"content-type": "text/plain"})
    assert_error(text, 415, oauth="invalid_request")
    assert {"200", "400", "401", "415", "503"} <= documented


@pytest.mark.parametrize("stale", STALE)
def test_logins_ignore_a_stale_authorization_header(app: App, stale: str) -> None:
    """A client that lost its session (a revoked, expired or garbled token) can still log in."""
    headers = {"Authorization": stale}
    login = app.client.get(f"{API}/user/login", params={"username": "alice", "password": PASSWORD}, headers=headers)
    assert login.status_code == 200, login.text
    token = app.client.post(f"{API}/auth/token", data={"username": "alice", "password": PASSWORD}, headers=headers)
    assert token.status_code == 200, token.text
    refresh = {"refresh_token": token.json()["refresh_token"]}
    assert app.client.post(f"{API}/auth/refresh", json=refresh, headers=headers).status_code == 200
    # Elsewhere the same header is still refused: this is no way around authentication.
    assert_error(app.client.post(f"{API}/auth/logout", headers=headers), 401, "unauthorized")


def test_a_revoked_token_does_not_stop_logging_in_again(app: App) -> None:
    old = app.login("alice")["access_token"]
    assert app.client.post(f"{API}/auth/logout", headers=bearer(old)).status_code == 200
    again = app.client.post(f"{API}/auth/token", data={"username": "alice", "password": PASSWORD}, headers=bearer(old))
    assert again.status_code == 200, again.text
    assert app.whoami(again.json()["access_token"]).json()["user"] == "alice"


def test_the_document_declares_the_password_flow_beside_the_bearer_scheme(app: App) -> None:
    document = app.client.get(f"{API}/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["oauth2Password"]["type"] == "oauth2"
    assert schemes["oauth2Password"]["flows"] == {
        "password": {"tokenUrl": "/api/v3/auth/token", "refreshUrl": "/api/v3/auth/refresh", "scopes": {}}
    }
    add_pet = document["paths"]["/pet"]["post"]
    assert add_pet["security"] == [{"bearerAuth": []}, {"oauth2Password": []}]
    refresh = document["paths"]["/auth/refresh"]["post"]["requestBody"]["content"]
    assert set(refresh) == {"application/x-www-form-urlencoded", "application/json"}
    login = document["paths"]["/user/login"]["get"]["responses"]
    assert "401" not in login  # a bad token is ignored there, never refused
