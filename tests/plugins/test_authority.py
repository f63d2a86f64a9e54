"""plugins.auth.authority: what a validly signed token's claims may hold before anything reads them.

Every token here is signed with the app's real key, so only its claims can make it fail: a claim
out of range or of another type is ``401 invalid token`` over REST, a refused upgrade (401) and
an ``unauthorized`` error over WebSocket, never a 500.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import WebSocketDenialResponse

from petstore.models import MAX_ID
from plugins.auth.authority import MAX_TOKEN_ID_CHARS
from tests.plugins.harness import App, assert_error, bearer, running_app

API = "/api/v3"
AUTH = ("plugins.auth", "tests.plugins.harness:Recorder")

#: A value of each kind that no numeric claim may hold: too large for any column, negative, a
#: float, a number in a string, a bool (an int, to Python).
BAD_NUMBERS = (2**70, -1, 1.5, "12", True)
NUMERIC_CLAIMS = ("uid", "exp", "nbf", "iat")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    with running_app(tmp_path, plugins=AUTH) as harness:
        harness.add_user("alice")
        harness.tokens = harness.login("alice")  # type: ignore[attr-defined]  (one Argon2 check per test)
        yield harness


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def forged(app: App, kind: str = "access_token", **changes: Any) -> str:
    """One of alice's real tokens with ``changes``, signed with the app's key."""
    claims = claims_of(app.tokens[kind]) | changes  # type: ignore[attr-defined]
    token: str = app.plugin("auth").keys.encode(claims)
    return token


def refused_everywhere(app: App, token: str) -> None:
    """401 invalid token over REST; over WebSocket, no upgrade with it and no ``auth`` with it."""
    response = app.whoami(token)
    assert_error(response, 401, "unauthorized")
    assert response.json()["message"] == "invalid token"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    with pytest.raises(WebSocketDenialResponse) as refusal, app.client.websocket_connect("/ws", headers=bearer(token)):
        pass
    assert_error(refusal.value, 401, "unauthorized")
    with app.client.websocket_connect("/ws") as ws:
        ws.receive_json()  # welcome
        ws.send_json({"type": "auth", "token": token, "id": 1})
        assert ws.receive_json() == {"type": "error", "id": 1, "code": "unauthorized", "message": "invalid token"}


@pytest.mark.parametrize("claim", NUMERIC_CLAIMS)
def test_numeric_claims_out_of_range_or_of_another_type_are_an_invalid_token(app: App, claim: str) -> None:
    for value in BAD_NUMBERS:
        refused_everywhere(app, forged(app, **{claim: value}))
    assert app.recorder.count("auth.failure", reason="bad_claims") == 3 * len(BAD_NUMBERS)


def test_a_uid_at_the_edge_of_the_id_range_is_looked_up_and_not_found(app: App) -> None:
    for uid in (0, MAX_ID):
        token = forged(app, uid=uid)
        assert_error(app.whoami(token), 401, "unauthorized")
    assert app.recorder.count("auth.failure", reason="unknown_user") == 2
    refused_everywhere(app, forged(app, uid=MAX_ID + 1))


def test_token_and_family_ids_are_bounded_like_the_revocation_keys_they_become(app: App) -> None:
    for claim in ("jti", "fam"):
        for value in ("", "x" * (MAX_TOKEN_ID_CHARS + 1), 12, None):
            refused_everywhere(app, forged(app, **{claim: value}))
    assert app.whoami(forged(app, jti="x" * MAX_TOKEN_ID_CHARS)).status_code == 200


def test_a_refresh_token_with_a_bad_uid_is_refused_not_a_500(app: App) -> None:
    for value in BAD_NUMBERS:
        response = app.client.post(
            f"{API}/auth/refresh", json={"refresh_token": forged(app, "refresh_token", uid=value)}
        )
        assert_error(response, 401, "unauthorized", oauth="invalid_grant")
