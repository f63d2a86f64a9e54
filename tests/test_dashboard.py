"""The live dashboard at `/`, in real headless Chromium against the real server (SPEC §3, issue 6).

One store, one page, watched through a whole story: the counts shown on load; pets created and
sold over REST moving the counts, the feed and the table; a staff sign-in adding the `orders`
room; the server restarted under the page, which must show `reconnecting`, then `recovered`,
with every event of the downtime in its feed. Any JavaScript error fails the test.

Between the stop and the restart, a second instance sharing the database and Redis makes
changes, so the events the page must recover really happen while it is disconnected. With the
in-process broker a restart loses the history instead, and the page must say `resynced` and
show the store as it is. Also: a phone-sized screen, and a customer's sign-in and sign-out.
Screenshots go to `test-artifacts/` (ignored by git).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, WebSocket, expect

from tests.services import HOST, UvicornServer, free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
PETSTORE = Path(sys.executable).with_name("petstore")  # the console script of the venv running the tests
STAFF = ("dashstaff", "staff-password-1")
DEADLINE_MS = 15_000  # Playwright's expect() polls until this deadline
# After an outage the page's next attempt may be up to the client's backoff cap (30 s) away.
RECONNECT_DEADLINE_MS = 45_000


def petstore_cli(env: dict[str, str], *args: str) -> None:
    """Run the `petstore` command with these settings and none of the developer's PETSTORE_* ones."""
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("PETSTORE_")} | env
    done = subprocess.run([str(PETSTORE), *args], env=full_env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"petstore {args[0]} exited with {done.returncode}: {done.stderr.strip()}")


def server_env(tmp_path: Path, redis_url: str | None, page_port: int) -> dict[str, str]:
    """Settings for a server the page at `page_port` talks to; no `redis_url`: the in-process broker."""
    env = {
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}",
        "PETSTORE_JWT_SECRET": "dashboard-test-secret-0123456789abcdef",
        # The page's own origin must pass the WebSocket Origin check.
        "PETSTORE_ALLOWED_ORIGINS": f"http://{HOST}:{page_port}",
        "PETSTORE_RATE_LIMIT": "10000/minute",
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
    }
    if redis_url is not None:
        env["PETSTORE_REDIS_URL"] = redis_url
    return env


def prepared_server(tmp_path: Path, redis_url: str | None) -> UvicornServer:
    """A server (not started) on a free port, over a migrated SQLite database with a staff user."""
    port = free_port()
    env = server_env(tmp_path, redis_url, port)
    petstore_cli(env, "migrate")
    petstore_cli(env, "users", "create", STAFF[0], "--password", STAFF[1], "--role", "staff")
    return UvicornServer(env=env, port=port)


class Store:
    """The REST API as a staff user drives it."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=f"{base_url}/api/v3", timeout=10)
        reply = self.http.post("/auth/token", data={"username": STAFF[0], "password": STAFF[1]})
        reply.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"

    def inventory(self) -> dict[str, int]:
        reply = self.http.get("/store/inventory")
        reply.raise_for_status()
        return {status: int(reply.json()[status]) for status in ("available", "pending", "sold")}

    def add_pet(self, name: str) -> dict[str, Any]:
        reply = self.http.post("/pet", json={"name": name, "photoUrls": [], "status": "available"})
        reply.raise_for_status()
        pet: dict[str, Any] = reply.json()
        return pet

    def sell_directly(self, pet_id: int) -> None:
        self.http.post(f"/pet/{pet_id}", params={"status": "sold"}).raise_for_status()

    def place_order(self, pet_id: int) -> dict[str, Any]:
        reply = self.http.post("/store/order", json={"petId": pet_id, "quantity": 1, "status": "placed"})
        reply.raise_for_status()
        order: dict[str, Any] = reply.json()
        return order

    def deliver(self, order_id: int) -> None:
        self.http.patch(f"/store/order/{order_id}", json={"status": "delivered"}).raise_for_status()

    def close(self) -> None:
        self.http.close()


class ConsoleWatch:
    """Every console error and uncaught exception of the page, except one excusable kind.

    While the test holds the server down, Chromium itself logs each refused WebSocket attempt
    ("WebSocket connection to ... failed"). That is the browser reporting the outage the test
    caused, not the page misbehaving; it is excused only inside that window, and only for /ws.
    """

    def __init__(self, page: Page, port: int) -> None:
        self.errors: list[str] = []
        self.excused: list[str] = []
        self.outage = False
        # A reconnect's URL carries its resume pass (/ws?resume=...).
        self._refused = re.compile(rf"WebSocket connection to 'ws://{re.escape(HOST)}:{port}/ws(\?[^']*)?' failed")
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("websocket", self._websocket)

    @staticmethod
    def _websocket(socket: WebSocket) -> None:
        # Printed, so pytest shows the page's conversation with /ws when a test fails.
        print(f"{time.monotonic():.3f} ws open {socket.url}")
        socket.on("framesent", lambda frame: print(f"{time.monotonic():.3f} ws > {str(frame)[:300]}"))
        socket.on("framereceived", lambda frame: print(f"{time.monotonic():.3f} ws < {str(frame)[:300]}"))
        socket.on("close", lambda _: print(f"{time.monotonic():.3f} ws closed"))

    def _console(self, message: ConsoleMessage) -> None:
        print(f"{time.monotonic():.3f} console.{message.type}: {message.text}")
        if message.type != "error":
            return
        if self.outage and self._refused.search(message.text):
            self.excused.append(message.text)
        else:
            self.errors.append(f"console.error: {message.text} at {message.location}")


@pytest.fixture
def live_server(tmp_path: Path, redis_url: str) -> Iterator[UvicornServer]:
    """The real server on a free port, with Redis, a migrated SQLite database and a staff user."""
    with prepared_server(tmp_path, redis_url) as server:
        yield server
        print(f"server log:\n{server.logtail(60)}")  # shown by pytest when the test failed


def feed_items(page: Page) -> list[dict[str, str]]:
    items: list[dict[str, str]] = page.eval_on_selector_all(
        '[data-testid="feed-item"]',
        "items => items.map(i => ({room: i.dataset.room, offset: i.dataset.offset, epoch: i.dataset.epoch,"
        " event: i.dataset.event, id: i.dataset.id}))",
    )
    return items


def expect_counts(page: Page, counts: dict[str, int]) -> None:
    for status, value in counts.items():
        expect(page.get_by_test_id(f"count-{status}")).to_have_text(f"{value:,}", timeout=DEADLINE_MS)


def expect_in_feed(page: Page, event: str, entity_id: int, room: str = "pets") -> None:
    selector = f'[data-testid="feed-item"][data-room="{room}"][data-event="{event}"][data-id="{entity_id}"]'
    expect(page.locator(selector)).to_have_count(1, timeout=DEADLINE_MS)


def expect_row(page: Page, pet: dict[str, Any], status: str) -> None:
    row = page.locator(f'[data-testid="pet-row"][data-pet-id="{pet["id"]}"]')
    expect(row).to_have_count(1, timeout=DEADLINE_MS)
    expect(row).to_have_attribute("data-status", status, timeout=DEADLINE_MS)
    expect(row).to_contain_text(pet["name"])


def test_dashboard_follows_the_store_live_and_recovers_after_a_restart(
    chromium: Browser, live_server: UvicornServer, tmp_path: Path, redis_url: str
) -> None:
    store = Store(live_server.url)
    try:
        before = [store.add_pet(f"early-{n}") for n in range(3)]
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        console = ConsoleWatch(page, live_server.port)
        page.goto(f"{live_server.url}/")

        # On load: the counts, the table from REST, a live connection.
        expect(page.get_by_test_id("connection-state")).to_have_text("connected", timeout=DEADLINE_MS)
        expect_counts(page, store.inventory())
        for pet in before:
            expect_row(page, pet, "available")
        expect(page.get_by_test_id("inventory-chart")).not_to_have_attribute("data-points", "0")

        # Pets created and sold over REST move the counts, the feed and the table.
        rex = store.add_pet("Rex")
        expect_in_feed(page, "pet.created", rex["id"])
        expect_row(page, rex, "available")
        expect_counts(page, store.inventory())
        store.sell_directly(rex["id"])
        expect_in_feed(page, "pet.updated", rex["id"])
        expect_row(page, rex, "sold")
        expect_counts(page, store.inventory())
        expect(page.locator(f'[data-testid="pet-row"][data-pet-id="{rex["id"]}"]')).to_have_count(1)

        # Staff sign in on the page, which then also follows the orders room.
        page.get_by_test_id("login-username").fill(STAFF[0])
        page.get_by_test_id("login-password").fill(STAFF[1])
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("session-user")).to_have_text(STAFF[0], timeout=DEADLINE_MS)
        expect(page.get_by_test_id("orders-note")).to_have_text("Pet and order events.")
        order = store.place_order(before[0]["id"])
        expect_in_feed(page, "order.placed", order["id"], room="orders")
        expect_row(page, before[0], "pending")
        store.deliver(order["id"])
        expect_in_feed(page, "order.updated", order["id"], room="orders")
        expect_row(page, before[0], "sold")
        expect_counts(page, store.inventory())

        # The server goes away under the page; a second instance changes the store meanwhile.
        console.outage = True
        live_server.stop()
        expect(page.get_by_test_id("connection-state")).to_have_text("reconnecting", timeout=DEADLINE_MS)
        missed: list[dict[str, Any]] = []
        other_env = server_env(tmp_path, redis_url, live_server.port)
        with UvicornServer(env=other_env) as other:
            other_store = Store(other.url)
            missed = [other_store.add_pet(f"while-away-{n}") for n in range(3)]
            other_store.sell_directly(missed[0]["id"])
            other_store.close()
        live_server.start()
        expect(page.get_by_test_id("connection-state")).to_have_text("recovered", timeout=RECONNECT_DEADLINE_MS)
        console.outage = False

        # Nothing missed: every event of the downtime is in the feed, and the pets room's
        # offsets in the feed run without a hole in one epoch.
        for pet in missed:
            expect_in_feed(page, "pet.created", pet["id"])
        expect_in_feed(page, "pet.updated", missed[0]["id"])
        expect_row(page, missed[0], "sold")
        expect_row(page, missed[1], "available")
        expect_counts(page, store.inventory())
        after = store.add_pet("after-restart")
        expect_in_feed(page, "pet.created", after["id"])
        pets_items = [item for item in feed_items(page) if item["room"] == "pets"]
        assert len({item["epoch"] for item in pets_items}) == 1, pets_items
        offsets = sorted(int(item["offset"]) for item in pets_items)
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), offsets

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert console.errors == []
    finally:
        store.close()


def test_dashboard_resyncs_from_the_snapshot_when_the_history_is_lost(chromium: Browser, tmp_path: Path) -> None:
    """The in-process broker forgets its history on restart: the page says resynced and reloads counts and table."""
    with prepared_server(tmp_path, None) as server:
        store = Store(server.url)
        try:
            first = store.add_pet("before")
            page = chromium.new_page()
            console = ConsoleWatch(page, server.port)
            page.goto(f"{server.url}/")
            expect(page.get_by_test_id("connection-state")).to_have_text("connected", timeout=DEADLINE_MS)
            expect_row(page, first, "available")

            console.outage = True
            server.stop()
            expect(page.get_by_test_id("connection-state")).to_have_text("reconnecting", timeout=DEADLINE_MS)
            with UvicornServer(env=server_env(tmp_path, None, server.port)) as other:
                other_store = Store(other.url)
                unseen = other_store.add_pet("changed-while-away")
                other_store.sell_directly(first["id"])
                other_store.close()
            server.start()
            expect(page.get_by_test_id("connection-state")).to_have_text("resynced", timeout=RECONNECT_DEADLINE_MS)
            console.outage = False

            # Events of the downtime are gone for good, but the page shows the store as it is
            # and says that it started over.
            expect_counts(page, store.inventory())
            expect_row(page, unseen, "available")
            expect_row(page, first, "sold")
            notes = page.get_by_test_id("feed-note")
            expect(notes.filter(has_text="restarted from a snapshot")).to_have_count(1)
            expect(notes.filter(has_text="table reloaded")).to_have_count(1)
            later = store.add_pet("after-resync")
            expect_in_feed(page, "pet.created", later["id"])
            expect_row(page, later, "available")
            assert console.errors == []
        finally:
            store.close()


def test_dashboard_fits_a_phone_screen_without_errors(chromium: Browser, live_server: UvicornServer) -> None:
    """On a 390 px wide screen the numbers, the feed and the table are there, with no sideways scrolling."""
    store = Store(live_server.url)
    try:
        store.add_pet("Pocket")
        context = chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        page = context.new_page()
        console = ConsoleWatch(page, live_server.port)
        page.goto(f"{live_server.url}/")
        expect(page.get_by_test_id("connection-state")).to_have_text("connected", timeout=DEADLINE_MS)
        expect_counts(page, store.inventory())
        for testid in ("count-available", "inventory-chart", "feed-panel", "pets-table", "login-form"):
            expect(page.get_by_test_id(testid)).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        context.close()
        assert console.errors == []
    finally:
        store.close()


def test_customer_sign_in_is_refused_the_orders_room_and_sign_out_goes_back_to_anonymous(
    chromium: Browser, live_server: UvicornServer
) -> None:
    signup = httpx.post(
        f"{live_server.url}/api/v3/user", json={"username": "shopper", "password": "shopper-password-1"}, timeout=10
    )
    signup.raise_for_status()
    page = chromium.new_page()
    console = ConsoleWatch(page, live_server.port)
    page.goto(f"{live_server.url}/")
    expect(page.get_by_test_id("connection-state")).to_have_text("connected", timeout=DEADLINE_MS)
    page.get_by_test_id("login-username").fill("shopper")
    page.get_by_test_id("login-password").fill("shopper-password-1")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("session-user")).to_have_text("shopper", timeout=DEADLINE_MS)
    expect(page.get_by_test_id("orders-note")).to_have_text(
        "Pet events. Orders are for staff accounts.", timeout=DEADLINE_MS
    )

    # Signing out forgets the token; the page reconnects anonymously and recovers its rooms.
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("connection-state")).to_have_text("recovered", timeout=RECONNECT_DEADLINE_MS)
    assert page.evaluate("sessionStorage.length") == 0
    store = Store(live_server.url)
    try:
        pet = store.add_pet("seen-anonymously")
        expect_in_feed(page, "pet.created", pet["id"])
    finally:
        store.close()
    assert console.errors == []
