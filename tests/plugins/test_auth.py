"""plugins.auth: tokens, endpoints, roles, revocation and every attack of issue 3, against real Redis.

Tests that touch revocation or refresh families run twice: without Redis and with the session's
real Redis (``store`` fixture). Several instances, Redis outages and the token store itself:
tests/plugins/test_auth_sharing.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from openapi_spec_validator import validate
from sqlalchemy.exc import OperationalError
from starlette.testclient import WebSocketDenialResponse

from petstore import db
from petstore.access import AuthFailed, Principal
from petstore.api.users import create_user_row
from petstore.app import create_app
from petstore.errors import PluginError
from petstore.models import Role, UserBody
from plugins.auth import AuthPlugin
from plugins.auth.backend import RedactSecrets, redact
from plugins.tokens import KeySet
from tests.plugins.harness import (
    PASSWORD,
    SECRET,
    App,
    assert_error,
    bearer,
    create_tables,
    make_settings,
    running_app,
)
from tests.services import UvicornServer, http_get

pytestmark = pytest.mark.redis

API = "/api/v3"
# The login limits of plugins.ratelimit would get in the way of tests that log in again and again;
# tests/plugins/test_ratelimit.py runs the two together.
AUTH = ("plugins.auth", "tests.plugins.harness:Recorder")


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    """None for the in-process store, else the URL of the session's (emptied) Redis."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def app(tmp_path: Path, store: str | None) -> Iterator[App]:
    with running_app(tmp_path, redis_url=store, plugins=AUTH) as harness:
        harness.add_user("alice")
        harness.add_user("bob")
        harness.add_user("stella", Role.staff)
        harness.add_user("root", Role.admin)
        yield harness


# ------------------------------------------------------------------------------ forging tokens


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = unsigned(header, claims)
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def good_claims(app: App, username: str = "alice", **changes: Any) -> dict[str, Any]:
    """Claims exactly like a real access token of ``username``'s, with ``changes``."""
    claims = claims_of(app.login(username)["access_token"])
    now = int(time.time())
    claims.update({"iat": now, "nbf": now, "exp": now + 300, "jti": f"forged-{now}-{len(changes)}"})
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def sign(app: App, claims: dict[str, Any]) -> str:
    """Signed with the app's real key: only the claims can make it fail."""
    keys: KeySet = app.plugin("auth").keys
    return keys.encode(claims)


def refused(app: App, token: str, reason: str) -> None:
    before = app.recorder.count("auth.failure", reason=reason)
    response = app.whoami(token)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert app.recorder.count("auth.failure", reason=reason) == before + 1, app.recorder.seen


# ------------------------------------------------------------------------------ logging in


def test_password_grant_returns_a_bearer_pair_that_authenticates(app: App) -> None:
    response = app.client.post(f"{API}/auth/token", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 15 * 60
    assert app.whoami(body["access_token"]).json() == {"user": "alice", "role": "customer"}


def test_access_token_claims_and_lifetimes(app: App) -> None:
    tokens = app.login("stella")
    access, refresh = claims_of(tokens["access_token"]), claims_of(tokens["refresh_token"])
    for claims in (access, refresh):
        assert {"iss", "aud", "sub", "exp", "nbf", "iat", "jti", "role"} <= set(claims)
        assert PASSWORD not in json.dumps(claims)
        assert claims["iss"] == "petstore" and claims["aud"] == "petstore-api" and claims["sub"] == "stella"
        assert claims["role"] == "staff"
    assert access["exp"] - access["iat"] == 15 * 60
    assert refresh["exp"] - refresh["iat"] == 14 * 24 * 3600
    assert access["jti"] != refresh["jti"] and access["fam"] == refresh["fam"]
    header = json.loads(base64.urlsafe_b64decode(tokens["access_token"].split(".")[0] + "=="))
    assert header["alg"] == "HS256" and header["kid"]


def test_wrong_password_and_unknown_user_are_refused_alike(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    import plugins.auth.endpoints as endpoints

    verified: list[str | None] = []
    real = endpoints.verify_password  # type: ignore[attr-defined]

    async def recording(password_hash: str | None, password: str) -> bool:
        verified.append(password_hash)
        return await real(password_hash, password)

    monkeypatch.setattr(endpoints, "verify_password", recording)
    wrong = app.client.post(f"{API}/auth/token", data={"username": "alice", "password": "nope"})
    unknown = app.client.post(f"{API}/auth/token", data={"username": "nobody", "password": "nope"})
    for response in (wrong, unknown):
        assert_error(response, 401, "unauthorized", oauth="invalid_grant")
    assert wrong.json()["message"] == unknown.json()["message"]
    # The unknown user was verified too, against the dummy hash: the same Argon2 work as a wrong password.
    assert verified[0] is not None and verified[1] is None
    assert app.recorder.count("auth.failure", reason="bad_credentials") == 2


def test_password_grant_rejects_other_grants_and_missing_fields(app: App) -> None:
    grant = app.client.post(f"{API}/auth/token", data={"grant_type": "client_credentials", "username": "alice"})
    assert_error(grant, 400, "unsupported_grant_type", oauth="unsupported_grant_type")
    assert_error(app.client.post(f"{API}/auth/token", data={"username": "alice"}), 400, oauth="invalid_request")
    bad_media = app.client.post(f"{API}/auth/token", content=b"x", headers={"content-type": "text/plain"})
    assert_error(bad_media, 415, oauth="invalid_request")
    huge = app.client.post(f"{API}/auth/token", data={"username": "alice", "password": "x" * 5000})
    assert_error(huge, 400, oauth="invalid_request")


def test_user_login_is_spec_compatible(app: App) -> None:
    response = app.client.get(f"{API}/user/login", params={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200, response.text
    token = response.json()
    assert isinstance(token, str)
    expires = datetime.fromisoformat(response.headers["x-expires-after"])
    assert expires.utcoffset() is not None and int(expires.timestamp()) == claims_of(token)["exp"]
    assert int(response.headers["x-rate-limit"]) == 100 * 60  # PETSTORE_RATE_LIMIT=100/minute, per hour
    assert app.whoami(token).json()["user"] == "alice"
    bad = app.client.get(f"{API}/user/login", params={"username": "alice", "password": "wrong"})
    assert_error(bad, 400)


def test_user_logout_revokes_like_auth_logout(app: App) -> None:
    token = app.client.get(f"{API}/user/login", params={"username": "alice", "password": PASSWORD}).json()
    assert app.client.get(f"{API}/user/logout", headers=bearer(token)).status_code == 200
    refused(app, token, "revoked")
    assert_error(app.client.get(f"{API}/user/logout"), 401)


# ------------------------------------------------------------------------------ refresh and logout


def test_refresh_rotates_and_reuse_revokes_the_whole_family(app: App) -> None:
    first = app.login("alice")
    second = app.client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    pair = second.json()
    assert pair["refresh_token"] != first["refresh_token"]
    assert app.whoami(pair["access_token"]).json()["user"] == "alice"
    # The spent refresh token comes back (stolen): refused, and every token of this login dies.
    reuse = app.client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_error(reuse, 401, oauth="invalid_grant")
    assert app.recorder.count("auth.failure", reason="refresh_reused") == 1
    refused(app, pair["access_token"], "revoked")
    refused(app, first["access_token"], "revoked")
    newest = app.client.post(f"{API}/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert_error(newest, 401, oauth="invalid_grant")
    # Another login of the same user is a different family, untouched.
    assert app.whoami(app.login("alice")["access_token"]).json()["user"] == "alice"


def test_logout_revokes_the_access_token_and_its_refresh_family(app: App) -> None:
    tokens = app.login("bob")
    other = app.login("bob")
    response = app.client.post(f"{API}/auth/logout", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200 and response.json()["type"] == "ok"
    refused(app, tokens["access_token"], "revoked")
    assert_error(
        app.client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
        401,
        oauth="invalid_grant",
    )
    assert app.whoami(other["access_token"]).json()["user"] == "bob"  # only that login ends
    assert_error(app.client.post(f"{API}/auth/logout"), 401)


def test_tokens_are_not_interchangeable_between_access_and_refresh(app: App) -> None:
    tokens = app.login("alice")
    refused(app, tokens["refresh_token"], "wrong_token_type")
    as_refresh = app.client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["access_token"]})
    assert_error(as_refresh, 401, oauth="invalid_grant")


def test_refresh_needs_a_json_refresh_token(app: App) -> None:
    assert_error(app.client.post(f"{API}/auth/refresh", json={}), 400, oauth="invalid_request")
    assert_error(
        app.client.post(f"{API}/auth/refresh", json={"refresh_token": "not.a.jwt"}), 401, oauth="invalid_grant"
    )


# ------------------------------------------------------------------------------ attacks


def test_alg_none_is_refused(app: App) -> None:
    claims = good_claims(app)
    kid = app.plugin("auth").keys.signing_kid
    refused(app, unsigned({"alg": "none", "typ": "JWT", "kid": kid}, claims) + ".", "bad_algorithm")
    refused(app, unsigned({"alg": "None", "kid": kid}, claims) + ".", "bad_algorithm")


def test_expired_is_refused_beyond_the_leeway_only(app: App) -> None:
    now = int(time.time())
    refused(app, sign(app, good_claims(app, exp=now - 31 - 5)), "expired")
    assert app.whoami(sign(app, good_claims(app, exp=now - 10))).status_code == 200  # within 30 s leeway


def test_not_yet_valid_is_refused_beyond_the_leeway_only(app: App) -> None:
    now = int(time.time())
    refused(app, sign(app, good_claims(app, nbf=now + 120)), "not_yet_valid")
    assert app.whoami(sign(app, good_claims(app, nbf=now + 10))).status_code == 200


def test_wrong_audience_or_issuer_is_refused(app: App) -> None:
    refused(app, sign(app, good_claims(app, aud="another-api")), "bad_audience")
    refused(app, sign(app, good_claims(app, iss="https://evil.invalid")), "bad_issuer")


def test_missing_claims_are_refused(app: App) -> None:
    for claim in ("jti", "exp", "nbf", "iat", "aud", "iss"):
        refused(app, sign(app, good_claims(app, "alice", **{claim: None})), "bad_claims")


def test_tampered_payload_is_refused(app: App) -> None:
    token = app.login("alice")["access_token"]
    header, _, signature = token.split(".")
    claims = claims_of(token) | {"role": "admin", "sub": "root"}
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    refused(app, forged, "bad_signature")


def test_unknown_kid_and_foreign_secret_are_refused(app: App) -> None:
    claims = good_claims(app)
    refused(app, hs256({"alg": "HS256", "kid": "someone-else"}, claims, b"x" * 48), "unknown_kid")
    kid = app.plugin("auth").keys.signing_kid
    refused(app, hs256({"alg": "HS256", "kid": kid}, claims, b"guessed secret"), "bad_signature")
    refused(app, hs256({"alg": "HS256"}, claims, b"guessed secret"), "unknown_kid")


def test_malformed_headers_and_garbage_are_401_never_500(app: App) -> None:
    for value in ("Bearer", "Basic YWxpY2U6cHc=", "Bearer a.b", "Bearer ....", "Bearer " + "A" * 5000):
        response = app.client.get("/test/whoami", headers={"Authorization": value})
        assert_error(response, 401, "unauthorized")


def test_token_of_a_deleted_user_is_refused(app: App) -> None:
    carol = app.add_user("carol")
    tokens = app.login("carol")
    assert app.whoami(tokens["access_token"]).status_code == 200
    app.delete_user("carol")
    refused(app, tokens["access_token"], "unknown_user")
    assert_error(
        app.client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
        401,
        oauth="invalid_grant",
    )
    # A new user under the same name and id (a client may choose a free id) is somebody else.
    app.add_user("carol", user_id=carol)
    refused(app, tokens["access_token"], "stale_credentials")


def test_a_password_change_ends_every_session(app: App) -> None:
    tokens = app.login("bob")
    body = {"username": "bob", "password": "a brand new password"}
    response = app.client.put(f"{API}/user/bob", json=body, headers=bearer(tokens["access_token"]))
    assert response.status_code == 200, response.text
    refused(app, tokens["access_token"], "stale_credentials")
    assert_error(
        app.client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
        401,
        oauth="invalid_grant",
    )
    assert app.whoami(app.login("bob", "a brand new password")["access_token"]).status_code == 200


def test_role_comes_from_the_database_not_the_token(app: App) -> None:
    claims = good_claims(app, "alice", role="admin")
    assert app.whoami(sign(app, claims)).json() == {"user": "alice", "role": "customer"}


def test_each_request_sees_the_users_row_as_committed_and_an_unreadable_one_is_a_503(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user is read by the app's reader, around the session: a role changed, a user deleted,
    are in the very next request; a database that cannot answer is a 503 without a trace."""
    token = app.login("alice")["access_token"]
    for role in ("staff", "admin", "customer"):
        app.run(_set_role, app, "alice", role)
        assert app.whoami(token).json() == {"user": "alice", "role": role}

    async def unreadable(*args: Any) -> Any:
        raise OperationalError("SELECT", {}, ConnectionRefusedError("the database is down"))

    with monkeypatch.context() as patched:
        patched.setattr(app.state.reader, "rows", unreadable)
        down = app.whoami(token)
    assert down.status_code == 503, down.text
    assert "Traceback" not in down.text and "the database is down" not in down.text
    app.run(_delete_user, app, "alice")
    assert app.whoami(token).status_code == 401


async def _set_role(app: App, username: str, role: str) -> None:
    async with app.state.engine.begin() as conn:
        changed = sa.text("UPDATE users SET role = :role WHERE username = :name")
        await conn.execute(changed, {"role": role, "name": username})


async def _delete_user(app: App, username: str) -> None:
    async with app.state.engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM users WHERE username = :name"), {"name": username})


# ------------------------------------------------------------------------------ HS/RS confusion, RS256/ES256, rotation


def write_key(path: Path, kind: str) -> tuple[Path, Path]:
    """A new private key (PEM) at ``path`` and its public key beside it."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RS256" else None
    key = private or ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = path.with_suffix(".pub")
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path, public


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_asymmetric_keys_rotation_and_jwks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str) -> None:
    old_private, old_public = write_key(tmp_path / "old.pem", algorithm)
    new_private, _ = write_key(tmp_path / "new.pem", algorithm)
    monkeypatch.setenv("PETSTORE_JWT_ALGORITHM", algorithm)
    monkeypatch.setenv("PETSTORE_JWT_PRIVATE_KEY_FILE", str(old_private))
    with running_app(tmp_path, plugins=AUTH) as before:
        before.add_user("alice")
        old_token = before.login("alice")["access_token"]
        old_kid = json.loads(base64.urlsafe_b64decode(old_token.split(".")[0] + "=="))["kid"]
        jwks = before.client.get(f"{API}/auth/jwks.json").json()
        assert [key["kid"] for key in jwks["keys"]] == [old_kid]
        assert all("d" not in key for key in jwks["keys"])  # never the private part
    # Rotation: sign with the new key, still accept the old one.
    monkeypatch.setenv("PETSTORE_JWT_PRIVATE_KEY_FILE", str(new_private))
    monkeypatch.setenv("PETSTORE_JWT_PUBLIC_KEYS", str(old_public))
    with running_app(tmp_path, plugins=AUTH) as during:
        new_token = during.login("alice")["access_token"]
        assert claims_of(new_token)["sub"] == "alice"
        assert during.whoami(old_token).json()["user"] == "alice"
        assert during.whoami(new_token).json()["user"] == "alice"
        kids = [key["kid"] for key in during.client.get(f"{API}/auth/jwks.json").json()["keys"]]
        assert len(kids) == 2 and old_kid in kids
        # The OpenAPI document lists the JWKS endpoint when keys are asymmetric.
        document = during.client.get(f"{API}/openapi.json").json()
        validate(document)
        assert "/auth/jwks.json" in document["paths"]
    # After the rotation: the old key is gone, its tokens are refused.
    monkeypatch.delenv("PETSTORE_JWT_PUBLIC_KEYS")
    with running_app(tmp_path, plugins=AUTH) as after:
        refused(after, old_token, "unknown_kid")
        assert after.whoami(new_token).status_code == 200


def test_hs_rs_confusion_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The RSA public key (which the JWKS publishes) used as an HMAC secret must not verify."""
    private, public = write_key(tmp_path / "rs.pem", "RS256")
    monkeypatch.setenv("PETSTORE_JWT_ALGORITHM", "RS256")
    monkeypatch.setenv("PETSTORE_JWT_PRIVATE_KEY_FILE", str(private))
    with running_app(tmp_path, plugins=AUTH) as app:
        app.add_user("alice")
        claims = good_claims(app)
        kid = app.plugin("auth").keys.signing_kid
        refused(app, hs256({"alg": "HS256", "kid": kid}, claims, public.read_bytes()), "bad_algorithm")
        refused(app, unsigned({"alg": "none", "kid": kid}, claims) + ".", "bad_algorithm")
    # And the other way round: an HS256 server refuses an RS256 token.
    monkeypatch.delenv("PETSTORE_JWT_ALGORITHM")
    with running_app(tmp_path, plugins=AUTH) as hs_app:
        rs_keys = KeySet.asymmetric("RS256", private.read_text())
        refused(hs_app, rs_keys.encode(good_claims(hs_app)), "bad_algorithm")


def test_hmac_secret_rotation_accepts_previous_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_app(tmp_path, plugins=AUTH, jwt_secret="old-secret-" + "o" * 40) as before:
        before.add_user("alice")
        old_token = before.login("alice")["access_token"]
    monkeypatch.setenv("PETSTORE_JWT_PREVIOUS_SECRETS", "old-secret-" + "o" * 40)
    with running_app(tmp_path, plugins=AUTH, jwt_secret="new-secret-" + "n" * 40) as during:
        assert during.whoami(old_token).status_code == 200
        assert during.client.get(f"{API}/auth/jwks.json").status_code == 404  # HMAC keys are never published
    monkeypatch.delenv("PETSTORE_JWT_PREVIOUS_SECRETS")
    with running_app(tmp_path, plugins=AUTH, jwt_secret="new-secret-" + "n" * 40) as after:
        refused(after, old_token, "unknown_kid")


def test_unusable_key_configuration_stops_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_JWT_ALGORITHM", "RS256")
    with pytest.raises(PluginError, match="PRIVATE_KEY_FILE"):
        create_app(make_settings(tmp_path))
    (tmp_path / "junk.pem").write_text("not a key")
    monkeypatch.setenv("PETSTORE_JWT_PRIVATE_KEY_FILE", str(tmp_path / "junk.pem"))
    with pytest.raises(PluginError, match="unusable JWT key"):
        create_app(make_settings(tmp_path))
    _, public = write_key(tmp_path / "k.pem", "RS256")
    monkeypatch.setenv("PETSTORE_JWT_PRIVATE_KEY_FILE", str(public))
    with pytest.raises(PluginError, match="private key"):
        create_app(make_settings(tmp_path))
    monkeypatch.setenv("PETSTORE_JWT_PRIVATE_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(PluginError, match="cannot read a JWT key file"):
        create_app(make_settings(tmp_path))


# ------------------------------------------------------------------------------ roles and BOLA (SPEC §2)


def test_roles_map_to_the_scopes_the_core_requires(app: App) -> None:
    pet = {"name": "Rex", "photoUrls": []}
    assert_error(app.client.post(f"{API}/pet", json=pet), 401)
    assert app.client.post(f"{API}/pet", json=pet).headers["www-authenticate"].startswith("Bearer")
    customer = bearer(app.login("alice")["access_token"])
    assert_error(app.client.post(f"{API}/pet", json=pet, headers=customer), 403)
    staff = bearer(app.login("stella")["access_token"])
    assert app.client.post(f"{API}/pet", json=pet, headers=staff).status_code == 200
    assert app.client.get(f"{API}/pet/findByStatus").status_code == 200  # anonymous reads
    admin = bearer(app.login("root")["access_token"])
    assert app.client.get(f"{API}/user/alice", headers=admin).status_code == 200
    assert_error(app.client.get(f"{API}/user/alice", headers=bearer(app.login("bob")["access_token"])), 404)


def test_another_users_order_is_404(app: App) -> None:
    staff = bearer(app.login("stella")["access_token"])
    pet = app.client.post(f"{API}/pet", json={"name": "Rex", "photoUrls": []}, headers=staff).json()
    alice = bearer(app.login("alice")["access_token"])
    bob = bearer(app.login("bob")["access_token"])
    order = app.client.post(f"{API}/store/order", json={"petId": pet["id"], "quantity": 1}, headers=alice)
    assert order.status_code == 200, order.text
    order_id = order.json()["id"]
    assert_error(app.client.get(f"{API}/store/order/{order_id}", headers=bob), 404)
    assert_error(app.client.delete(f"{API}/store/order/{order_id}", headers=bob), 404)
    assert app.client.get(f"{API}/store/orders", headers=bob).json() == []
    assert app.client.get(f"{API}/store/order/{order_id}", headers=alice).status_code == 200
    assert app.client.get(f"{API}/store/order/{order_id}", headers=staff).status_code == 200


# ------------------------------------------------------------------------------ WebSocket


def test_websocket_upgrade_with_a_bearer_header(app: App) -> None:
    token = app.login("alice")["access_token"]
    with app.client.websocket_connect("/test/whoami", headers=bearer(token)) as ws:
        assert ws.receive_json() == {"user": "alice", "role": "customer"}
    with app.client.websocket_connect("/test/whoami") as ws:
        assert ws.receive_json() is None
    # A bad token: no upgrade, but the HTTP answer of SPEC §3 (401, the JSON error shape).
    with (
        pytest.raises(WebSocketDenialResponse) as refusal,
        app.client.websocket_connect("/test/whoami", headers=bearer(token + "x")),
    ):
        pass
    assert_error(refusal.value, 401, "unauthorized")
    assert refusal.value.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_ws_authenticate_hook(app: App) -> None:
    plugin: AuthPlugin = app.plugin("auth")
    tokens = app.login("stella")
    who = app.run(plugin.ws_authenticate, None, tokens["access_token"])
    assert isinstance(who, Principal) and who.username == "stella" and who.role is Role.staff
    assert who.expires_at == claims_of(tokens["access_token"])["exp"]
    assert who.token_id == claims_of(tokens["access_token"])["jti"]
    for bad, reason in ((tokens["refresh_token"], "wrong_token_type"), ("garbage", "malformed")):
        with pytest.raises(AuthFailed) as refusal:
            app.run(plugin.ws_authenticate, None, bad)
        assert refusal.value.reason == reason
    app.client.post(f"{API}/auth/logout", headers=bearer(tokens["access_token"]))
    with pytest.raises(AuthFailed) as revoked:
        app.run(plugin.ws_authenticate, None, tokens["access_token"])
    assert revoked.value.reason == "revoked"
    assert app.recorder.count("auth.failure", reason="revoked") == 1


def test_ws_authorize_rooms(app: App) -> None:
    plugin: AuthPlugin = app.plugin("auth")
    alice = Principal.for_role(1, "alice", Role.customer)
    staff = Principal.for_role(3, "stella", Role.staff)
    admin = Principal.for_role(4, "root", Role.admin)
    cases = [
        (None, "inventory", True),
        (None, "pet:7", True),
        (None, "orders", False),
        (alice, "orders", False),
        (staff, "orders", True),
        (alice, "user:alice", True),
        (alice, "user:bob", False),
        (staff, "user:alice", False),
        (admin, "user:alice", True),
        (None, "user:alice", False),
        (admin, "nonsense", False),
    ]
    for who, room, allowed in cases:
        assert app.run(plugin.ws_authorize, who, room) is allowed, (who, room)


# ------------------------------------------------------------------------------ the password never reaches a log


def test_redact_hides_passwords_and_tokens_in_urls() -> None:
    line = '127.0.0.1:5000 - "GET /api/v3/user/login?username=alice&password=s3cr3t HTTP/1.1" 200'
    assert "s3cr3t" not in redact(line) and "username=alice" in redact(line)
    assert redact("/x?token=abc&a=1") == "/x?token=***&a=1"
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s"', ("c", "GET", line), None)
    assert RedactSecrets().filter(record)
    assert "s3cr3t" not in record.getMessage()


def test_uvicorn_access_log_never_shows_the_login_password(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)

    async def prepare() -> None:
        engine = db.create_engine(settings)
        await create_tables(engine)
        async with db.create_sessionmaker(engine)() as session:
            await create_user_row(session, UserBody(username="alice", password="very-secret-pw-42"), Role.customer)
            await session.commit()
        await engine.dispose()

    asyncio.run(prepare())
    env = {
        "PETSTORE_DATABASE_URL": settings.database_url,
        "PETSTORE_PLUGINS": "plugins.auth,plugins.ratelimit",
        "PETSTORE_JWT_SECRET": SECRET,
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
        "PETSTORE_ENV": "test",
    }
    with UvicornServer(env=env) as server:
        status, body = http_get(f"{server.url}/api/v3/user/login?username=alice&password=very-secret-pw-42")
        assert status == 200, body
        token = json.loads(body)
        server.stop()
        log = server.log_path.read_text()
    assert "/api/v3/user/login?username=alice&password=***" in log  # the request is logged...
    assert "very-secret-pw-42" not in log  # ...without its password
    assert token not in log


# ------------------------------------------------------------------------------ the OpenAPI document


def test_openapi_document_describes_the_auth_endpoints(app: App) -> None:
    document = app.client.get(f"{API}/openapi.json").json()
    validate(document)  # still a valid OpenAPI 3.1 document, every $ref resolving
    paths = document["paths"]
    assert {"/auth/token", "/auth/refresh", "/auth/logout", "/user/login", "/user/logout"} <= set(paths)
    assert "/auth/jwks.json" not in paths  # HS256: no public keys to publish
    login = paths["/user/login"]["get"]
    assert login["operationId"] == "loginUser"
    assert {p["name"] for p in login["parameters"]} == {"username", "password"}
    assert set(login["responses"]["200"]["headers"]) == {"X-Rate-Limit", "X-Expires-After"}
    assert paths["/auth/logout"]["post"]["security"] == [{"bearerAuth": []}, {"oauth2Password": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for name in ("TokenResponse", "TokenRequest", "RefreshRequest"):
        assert name in document["components"]["schemas"]
    token = paths["/auth/token"]["post"]
    assert set(token["requestBody"]["content"]) == {"application/x-www-form-urlencoded", "application/json"}


# ------------------------------------------------------------------------------ through the core's /ws


def test_ws_auth_message_and_room_rules_through_the_real_endpoint(app: App) -> None:
    alice = app.login("alice")["access_token"]
    staff = app.login("stella")["access_token"]
    with app.client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["user"] is None
        ws.send_json({"type": "auth", "token": alice + "x", "id": 1})
        refusal = ws.receive_json()
        assert refusal["type"] == "error" and refusal["code"] == "unauthorized" and refusal["id"] == 1
        ws.send_json({"type": "auth", "token": alice, "id": 2})
        assert ws.receive_json() == {"type": "authenticated", "id": 2, "user": "alice"}
        ws.send_json({"type": "subscribe", "room": "user:alice", "id": 3})
        assert ws.receive_json()["type"] == "subscribed"
        for ident, room in ((4, "user:bob"), (5, "orders")):
            ws.send_json({"type": "subscribe", "room": room, "id": ident})
            answer = ws.receive_json()
            assert answer["type"] == "error" and answer["code"] == "forbidden" and answer["id"] == ident
    with app.client.websocket_connect("/ws", headers=bearer(staff)) as ws:
        assert ws.receive_json()["user"] == "stella"
        ws.send_json({"type": "subscribe", "room": "orders", "id": 1})
        assert ws.receive_json()["type"] == "subscribed"
    assert app.recorder.count("auth.failure", reason="bad_signature") == 1
