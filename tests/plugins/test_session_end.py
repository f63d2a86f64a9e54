"""Live sessions end when their credentials stop standing (issue 11, item 7): a logout, a deleted
account, a new name or password close the WebSocket sessions (1008) and end the SSE streams they
opened, on the instance that made the change and on the others: through Redis pub/sub, and
through the database poll when there is no Redis. Sessions of other logins stay open.

Two app instances on one database (``tests.plugins.test_auth_sharing.instances``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import WebSocketTestSession

from petstore.models import Role
from tests.plugins.harness import App, bearer
from tests.plugins.test_auth_sharing import NO_POLL, POLL, PUBSUB_DEADLINE, instances, logout, subscribed
from tests.services import wait_until

pytestmark = pytest.mark.redis

API = "/api/v3"


@contextlib.contextmanager
def live_session(app: App, token: str, room: str = "user:alice") -> Iterator[WebSocketTestSession]:
    with app.client.websocket_connect("/ws", headers=bearer(token)) as ws:
        assert ws.receive_json()["type"] == "welcome"
        ws.send_json({"type": "subscribe", "room": room, "id": 1})
        assert ws.receive_json()["type"] == "subscribed"
        yield ws


def ended(ws: WebSocketTestSession) -> int:
    """The close code of a session the server ends (pytest-timeout bounds a server that does not)."""
    message: dict[str, Any] = ws.receive()
    assert message["type"] == "websocket.close", message
    code: int = message["code"]
    return code


def still_open(ws: WebSocketTestSession) -> bool:
    ws.send_json({"type": "ping", "id": 7})
    return bool(ws.receive_json() == {"type": "pong", "id": 7})


def live_count(app: App) -> int:
    return len(app.state.realtime.hub.connections)


def test_a_logout_ends_its_sessions_on_every_instance_and_no_other(tmp_path: Path, redis_url: str) -> None:
    with instances(tmp_path, redis_url, NO_POLL) as (one, two):
        wait_until(lambda: subscribed(one) and subscribed(two), PUBSUB_DEADLINE, "both subscribers")
        gone, kept = one.login("alice"), one.login("alice")
        with (
            live_session(one, gone["access_token"]) as here,
            live_session(two, gone["access_token"]) as there,
            live_session(two, kept["access_token"]) as other_login,
        ):
            logout(one, gone["access_token"])
            assert ended(here) == 1008
            assert ended(there) == 1008  # through pub/sub: no poll for minutes
            assert still_open(other_login)


def test_deleting_an_account_ends_its_sessions_on_every_instance(tmp_path: Path, redis_url: str) -> None:
    with instances(tmp_path, redis_url, NO_POLL) as (one, two):
        wait_until(lambda: subscribed(one) and subscribed(two), PUBSUB_DEADLINE, "both subscribers")
        one.add_user("ada", Role.admin)
        admin, alice, stella = one.login("ada"), one.login("alice"), one.login("stella")
        with (
            live_session(two, alice["access_token"]) as there,
            live_session(one, alice["access_token"]) as here,
            live_session(two, stella["access_token"], room="orders") as staff,
        ):
            response = one.client.delete(f"{API}/user/alice", headers=bearer(admin["access_token"]))
            assert response.status_code == 200, response.text
            assert ended(here) == 1008
            assert ended(there) == 1008
            assert still_open(staff)


def test_a_new_name_or_password_ends_the_sessions_opened_before_it(tmp_path: Path, redis_url: str) -> None:
    with instances(tmp_path, redis_url, NO_POLL) as (one, two):
        wait_until(lambda: subscribed(one) and subscribed(two), PUBSUB_DEADLINE, "both subscribers")
        tokens = one.login("alice")
        with live_session(two, tokens["access_token"]) as there:
            body = {"username": "alicia", "password": "a new password 1"}
            response = one.client.put(f"{API}/user/alice", json=body, headers=bearer(tokens["access_token"]))
            assert response.status_code == 200, response.text
            assert ended(there) == 1008
        # A session opened after the change, with the new credentials, stands.
        fresh = one.login("alicia", "a new password 1")
        with live_session(two, fresh["access_token"], room="user:alicia") as later:
            body = {"username": "alicia", "firstName": "Alicia"}  # no new name, no new password
            response = one.client.put(f"{API}/user/alicia", json=body, headers=bearer(fresh["access_token"]))
            assert response.status_code == 200, response.text
            assert still_open(later)


def test_without_redis_the_database_poll_ends_sessions_on_the_other_instance(tmp_path: Path) -> None:
    with instances(tmp_path, None, str(POLL)) as (one, two):
        tokens = one.login("alice")
        with live_session(two, tokens["access_token"]) as there:
            logout(one, tokens["access_token"])
            assert ended(there) == 1008
        wait_until(lambda: live_count(two) == 0, PUBSUB_DEADLINE, "the session to be gone")


def test_an_event_stream_of_a_revoked_token_ends(tmp_path: Path, redis_url: str) -> None:
    with instances(tmp_path, redis_url, NO_POLL) as (one, two):
        wait_until(lambda: subscribed(one) and subscribed(two), PUBSUB_DEADLINE, "both subscribers")
        tokens = one.login("alice")
        headers = bearer(tokens["access_token"])
        with two.client.stream("GET", f"{API}/events?room=user:alice", headers=headers) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            wait_until(lambda: live_count(two) == 1, PUBSUB_DEADLINE, "the stream to be live")
            logout(one, tokens["access_token"])
            for _ in lines:  # the stream ends: the iteration stops
                pass
        assert live_count(two) == 0


def test_an_event_stream_ends_when_its_token_expires(tmp_path: Path) -> None:
    """As a WebSocket closes with 1008 at its token's ``exp``, a stream ends then."""
    env = {"PETSTORE_JWT_ACCESS_TTL_SECONDS": "3", "PETSTORE_JWT_LEEWAY_SECONDS": "0"}
    with instances(tmp_path, None, NO_POLL, count=1, env=env) as (app,):
        tokens = app.login("alice")
        headers = bearer(tokens["access_token"])
        with app.client.stream("GET", f"{API}/events?room=user:alice", headers=headers) as stream:
            assert stream.status_code == 200
            for _ in stream.iter_lines():  # ends at the token's expiry (pytest-timeout bounds it otherwise)
                pass
        assert live_count(app) == 0
