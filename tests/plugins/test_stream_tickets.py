"""plugins.auth's stream tickets: how an ``EventSource`` (no headers) follows ``orders`` or ``user:{name}``.

The ticket store alone (issue, spend once, expiry, shared through real Redis), then the real app
on a real uvicorn in this event loop: a ticket opens one stream as its user, once; the rooms are
that user's; a revoked login's ticket is refused; a bearer token in the URL stays refused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from petstore import db
from petstore.api.users import create_user_row
from petstore.models import Role, UserBody
from plugins.auth.backend import redact
from plugins.auth.tickets import StreamTickets
from tests.fakes import Clock
from tests.plugins.harness import PASSWORD, assert_error, auth_secret, bearer, create_tables
from tests.realtime.support import DEADLINE, AppServer, serve, settings_for

API = "/api/v3"
CLAIMS = {"sub": "alice", "uid": 1, "exp": 2_000_000_000}


# ------------------------------------------------------------------------------ the ticket store


async def test_a_ticket_is_spent_once_and_holds_what_it_was_issued_for() -> None:
    tickets = StreamTickets(None)
    ticket = await tickets.issue(CLAIMS, "staff")
    assert len(ticket) >= 40  # 32 random bytes
    assert await tickets.spend(ticket) == {"claims": CLAIMS, "role": "staff"}
    assert await tickets.spend(ticket) is None
    assert await tickets.spend("never-issued") is None


async def test_a_ticket_expires_in_seconds() -> None:
    clock = Clock()
    tickets = StreamTickets(None, ttl=30, clock=clock)
    late, in_time = await tickets.issue(CLAIMS, "staff"), await tickets.issue(CLAIMS, "staff")
    clock.now += 29
    assert await tickets.spend(in_time) is not None
    clock.now += 2
    assert await tickets.spend(late) is None


@pytest.mark.redis
async def test_through_redis_any_instance_accepts_a_ticket_once(redis_url: str) -> None:
    one, two = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        ticket = await StreamTickets(one).issue(CLAIMS, "staff")
        assert await StreamTickets(two).spend(ticket) == {"claims": CLAIMS, "role": "staff"}
        assert await StreamTickets(one).spend(ticket) is None  # spent on the other instance
        # Only a hash of the ticket is a key, and it expires by itself.
        keys = await one.keys("petstore:auth:ticket:*")
        assert keys == [] and ticket.encode() not in b"".join(await one.keys("*"))
        other = await StreamTickets(one, ttl=30).issue(CLAIMS, "staff")
        [key] = await one.keys("petstore:auth:ticket:*")
        assert other.encode() not in key and 0 < await one.ttl(key) <= 30
    finally:
        await one.aclose()
        await two.aclose()


def test_a_ticket_in_a_url_is_redacted_from_log_lines() -> None:
    line = '127.0.0.1:5000 - "GET /api/v3/events?room=orders&ticket=abc-DEF_123 HTTP/1.1" 200'
    assert redact(line) == '127.0.0.1:5000 - "GET /api/v3/events?room=orders&ticket=*** HTTP/1.1" 200'


# ------------------------------------------------------------------------------ through the real app


@contextlib.contextmanager
def jwt_secret() -> Iterator[None]:
    with auth_secret():
        yield


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[AppServer]:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path}/tickets.db",
        media_dir=tmp_path / "media",
        plugins=("plugins.auth", "tests.realtime.support:probe"),
    )
    engine = db.create_engine(settings)
    await create_tables(engine)
    async with db.create_sessionmaker(engine)() as session:
        for name, role in (("alice", Role.customer), ("bob", Role.customer), ("stella", Role.staff)):
            await create_user_row(session, UserBody(username=name, password=PASSWORD), role)
        await session.commit()
    await engine.dispose()
    with jwt_secret():
        async with serve(settings) as server:
            yield server


async def login(http: httpx.AsyncClient, username: str) -> str:
    response = await http.post(f"{API}/auth/token", data={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def ticket_for(http: httpx.AsyncClient, token: str) -> str:
    response = await http.post(f"{API}/events/ticket", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert set(body) == {"ticket", "expires_in"} and body["expires_in"] == 30
    ticket: str = body["ticket"]
    return ticket


async def first_event(http: httpx.AsyncClient, query: str) -> tuple[int, dict[str, Any]]:
    """The status of ``GET /events?query``, and its first message (the error, or ``subscribed``)."""
    async with http.stream("GET", f"{API}/events?{query}") as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.json()
        data = None
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                break
        assert data is not None
        return 200, data


@pytest.fixture
async def http(app: AppServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=app.url, timeout=DEADLINE) as client:
        yield client


async def test_a_ticket_opens_one_stream_of_orders_as_its_staff_user(http: httpx.AsyncClient) -> None:
    ticket = await ticket_for(http, await login(http, "stella"))
    status, subscribed = await first_event(http, f"room=orders&ticket={ticket}")
    assert status == 200 and subscribed["type"] == "subscribed" and subscribed["room"] == "orders"
    # Spent: the same ticket again is a 401 with the JSON error shape, before any stream.
    status, error = await first_event(http, f"room=orders&ticket={ticket}")
    assert status == 401 and error["type"] == "unauthorized" and "ticket" in error["message"]


async def test_the_rooms_are_the_tickets_users(http: httpx.AsyncClient) -> None:
    alice = await login(http, "alice")
    status, error = await first_event(http, f"room=orders&ticket={await ticket_for(http, alice)}")
    assert status == 403 and error["type"] == "forbidden"  # a customer's ticket opens no staff room
    status, error = await first_event(http, f"room=user:bob&ticket={await ticket_for(http, alice)}")
    assert status == 403  # nor another user's room
    status, subscribed = await first_event(http, f"room=user:alice&ticket={await ticket_for(http, alice)}")
    assert status == 200 and subscribed["room"] == "user:alice"


async def test_a_ticket_needs_a_bearer_token_and_stands_no_longer_than_its_login(http: httpx.AsyncClient) -> None:
    assert_error(await http.post(f"{API}/events/ticket"), 401, "unauthorized")
    assert_error(await http.post(f"{API}/events/ticket", headers=bearer("not.a.token")), 401, "unauthorized")
    token = await login(http, "stella")
    ticket = await ticket_for(http, token)
    assert (await http.post(f"{API}/auth/logout", headers=bearer(token))).status_code == 200
    status, error = await first_event(http, f"room=orders&ticket={ticket}")
    assert status == 401 and error["message"] == "token revoked"


async def test_a_bearer_token_in_the_url_stays_refused(http: httpx.AsyncClient) -> None:
    token = await login(http, "stella")
    for name in ("access_token", "token"):
        status, error = await first_event(http, f"room=orders&{name}={token}")
        assert status == 401 and error["type"] == "unauthorized"
    # And a token where a ticket goes is just an unknown ticket.
    status, _ = await first_event(http, f"room=orders&ticket={token}")
    assert status == 401


async def test_the_ticket_endpoint_and_parameter_are_in_the_served_document(http: httpx.AsyncClient) -> None:
    document = (await http.get(f"{API}/openapi.json")).json()
    issue = document["paths"]["/events/ticket"]["post"]
    assert set(issue["responses"]) >= {"200", "401", "503"}
    assert issue["security"] == [{"bearerAuth": []}, {"oauth2Password": []}]
    stream = document["paths"]["/events"]["get"]
    assert "ticket" in [param["name"] for param in stream["parameters"] if param["in"] == "query"]
    assert "stream ticket" in stream["responses"]["401"]["description"]
