"""The dashboard as a real store's page (issue 15), in headless Chromium against the real server.

One server for the module, over 20,000 pets: the search finds a pet by name, pages walked
forward and back show each pet once, the shown rows stay live (a REST change shows in its row, a
deletion marks it, a new pet that matches the filter appears) while the page joins only the
`pet:{id}` rooms of the rows it shows; staff change an order's status from the page and the
customer's page shows it; an admin changes a role. A second store with six-digit counts: no
element overlaps another at 320, 390, 1280 and 2560 px, and axe-core finds no serious or critical
violation. Last, a page served by `scripts/serve --port N` connects (its own origin is allowed by
default), says "server restarting" when the server stops, and a page whose origin is not allowed
says so in words.

The pets and users are written straight into the migrated SQLite file (one executemany per table,
about a second for 20,000; `petstore seed` creates each through the API code and its events, minutes at
this size). No sleeps: every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from petstore.passwords import hash_password
from tests.services import HOST, UvicornServer, free_port
from tests.test_dashboard import ConsoleWatch, petstore_cli

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
AXE = ROOT / "tests" / "js" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOT = ROOT / "docs" / "dashboard.png"
DEADLINE_MS = 15_000
PETS = 20_000
NEEDLE = "Zanzibar Quillfeather"  # one pet of the 20,000 has this name
PASSWORD = "store-password-1"
STAFF, ADMIN, CUSTOMER, PROMOTED = "clerk", "boss", "buyer", "newhire"
USERS = ((STAFF, "staff"), (ADMIN, "admin"), (CUSTOMER, "customer"), (PROMOTED, "customer"))
CATEGORIES = ("Dogs", "Cats", "Birds", "Fish", "Reptiles")
TAGS = ("friendly", "young", "senior", "trained", "vaccinated", "rare")
STATUSES = ("available", "pending", "sold")


def seed_store(
    database: Path,
    count: int,
    *,
    needle_at: int | None = None,
    tags: bool = True,
    weights: tuple[int, int, int] = (6, 1, 3),
) -> None:
    """`count` pets (ids 1..count) and a user of each role written straight into a migrated SQLite database."""
    rng = random.Random(count)
    password_hash = asyncio.run(hash_password(PASSWORD))  # one Argon2 hash for the four (a second each)
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA synchronous = OFF")  # a test's throwaway file: no need to survive a power cut
        db.executemany(
            "INSERT INTO users (username, password_hash, role) VALUES (?, ?, ?)",
            [(name, password_hash, role) for name, role in USERS],
        )
        db.executemany("INSERT INTO category (id, name) VALUES (?, ?)", list(enumerate(CATEGORIES, 1)))
        db.executemany("INSERT INTO tag (id, name) VALUES (?, ?)", list(enumerate(TAGS, 1)))
        pets = []
        links = []
        for pet_id in range(1, count + 1):
            name = NEEDLE if pet_id == needle_at else f"{rng.choice(('Rex', 'Milo', 'Luna', 'Kiwi', 'Nemo'))} {pet_id}"
            status = rng.choices(STATUSES, weights=weights)[0]
            pets.append((pet_id, name, status, rng.randint(1, len(CATEGORIES)), "[]"))
            if tags:
                links.extend((pet_id, tag) for tag in rng.sample(range(1, len(TAGS) + 1), k=rng.randint(1, 2)))
        db.executemany("INSERT INTO pet (id, name, status, category_id, photo_urls) VALUES (?, ?, ?, ?, ?)", pets)
        db.executemany("INSERT INTO pet_tag (pet_id, tag_id) VALUES (?, ?)", links)


def store_env(directory: Path, port: int) -> dict[str, str]:
    return {
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'petstore.db'}",
        "PETSTORE_JWT_SECRET": "dashboard-store-secret-0123456789abcdef",
        "PETSTORE_ALLOWED_ORIGINS": f"http://{HOST}:{port}",
        "PETSTORE_RATE_LIMIT": "10000/minute",
        "PETSTORE_MEDIA_DIR": str(directory / "media"),
    }


def started_store(template: Path, directory: Path, pets: int, **seeding: Any) -> UvicornServer:
    """A server over a copy of the migrated `template` database with `pets` pets and the users."""
    port = free_port()
    env = store_env(directory, port)
    began = time.monotonic()
    shutil.copyfile(template, directory / "petstore.db")
    seed_store(directory / "petstore.db", pets, **seeding)
    seeded = time.monotonic()
    server = UvicornServer(env=env, port=port).start()
    ready = time.monotonic() - began
    print(f"store of {pets:,} pets: seeded in {seeded - began:.1f} s, ready in {ready:.1f} s")
    return server


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database migrated once (`petstore migrate`), copied by each store."""
    directory = tmp_path_factory.mktemp("template")
    began = time.monotonic()
    petstore_cli(store_env(directory, 0), "migrate")
    print(f"migrated in {time.monotonic() - began:.1f} s")
    return directory / "petstore.db"


@pytest.fixture(scope="module")
def store(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    """The module's server: 20,000 pets, one of them named NEEDLE, and a user of each role."""
    server = started_store(template, tmp_path_factory.mktemp("store"), PETS, needle_at=12_345)
    try:
        yield server
    finally:
        print(f"server log:\n{server.logtail(40)}")
        server.stop()


@pytest.fixture(scope="module")
def big_store(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    """Six-digit counts: 104,000 pets, about 100,900 of them available (no tags, to keep the set-up short)."""
    server = started_store(template, tmp_path_factory.mktemp("big"), 104_000, tags=False, weights=(97, 1, 2))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser_context(chromium: Browser) -> Iterator[BrowserContext]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


class Api:
    """REST as one of the module's users."""

    def __init__(self, server: UvicornServer, username: str) -> None:
        self.http = httpx.Client(base_url=f"{server.url}/api/v3", timeout=10)
        reply = self.http.post("/auth/token", data={"username": username, "password": PASSWORD})
        reply.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self.http.request(method, path, **kwargs)
        assert reply.is_success, reply.text
        return reply.json() if reply.content else None


@pytest.fixture
def staff_api(store: UvicornServer) -> Iterator[Api]:
    api = Api(store, STAFF)
    yield api
    api.http.close()


class StoreConsole(ConsoleWatch):
    """ConsoleWatch, also excusing in an outage the failed `/origin` call the page makes to find out why."""

    def _console(self, message: ConsoleMessage) -> None:
        if self.outage and message.type == "error" and "/origin?" in message.location.get("url", ""):
            self.excused.append(message.text)
            return
        super()._console(message)


def open_page(context: BrowserContext, server: UvicornServer) -> tuple[Page, ConsoleWatch]:
    page = context.new_page()
    console = StoreConsole(page, server.port)
    page.goto(f"{server.url}/")
    expect(page.get_by_test_id("connection-state")).to_have_text("connected", timeout=DEADLINE_MS)
    expect(page.get_by_test_id("pet-row").first).to_be_visible(timeout=DEADLINE_MS)
    return page, console


def sign_in(page: Page, username: str) -> None:
    page.get_by_test_id("login-username").fill(username)
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("session-user")).to_have_text(username, timeout=DEADLINE_MS)


def search(page: Page, q: str = "", status: str = "") -> None:
    page.get_by_test_id("search-q").fill(q)
    page.get_by_test_id("search-status").select_option(status)  # a change searches at once
    page.get_by_test_id("search-q").press("Enter")


def shown_ids(page: Page) -> list[int]:
    ids: list[int] = page.eval_on_selector_all('[data-testid="pet-row"]', "rows => rows.map(r => +r.dataset.petId)")
    return ids


def row(page: Page, pet_id: int) -> Any:
    return page.locator(f'[data-testid="pet-row"][data-pet-id="{pet_id}"]')


def record_rooms(page: Page) -> list[tuple[str, str]]:
    """(type, room) of each subscribe and unsubscribe the page sends, as they go."""
    sent: list[tuple[str, str]] = []

    def on_frame(payload: str | bytes) -> None:
        message = json.loads(payload)
        for item in message if isinstance(message, list) else [message]:
            if item.get("type") in ("subscribe", "unsubscribe"):
                sent.append((item["type"], item["room"]))

    page.on("websocket", lambda socket: socket.on("framesent", on_frame))
    return sent


# ---------------------------------------------------------------------------------- searching


def test_searching_finds_a_pet_by_name_among_20000(browser_context: BrowserContext, store: UvicornServer) -> None:
    page, console = open_page(browser_context, store)
    expect(page.get_by_test_id("pets-count")).to_contain_text("found", timeout=DEADLINE_MS)
    page.get_by_test_id("search-q").fill("quillfeath")  # any part of the name, in any case
    page.get_by_test_id("search-q").press("Enter")
    expect(page.get_by_test_id("pet-row")).to_have_count(1, timeout=DEADLINE_MS)
    expect(row(page, 12_345)).to_contain_text(NEEDLE)
    expect(page.get_by_test_id("pets-count")).to_have_text("1 shown · 1 found")
    expect(page.get_by_test_id("page-next")).to_be_disabled()
    assert console.errors == []


def test_the_search_works_from_the_keyboard(browser_context: BrowserContext, store: UvicornServer) -> None:
    """Tab reaches the skip link first, which leads to the pets; the search box is next, Enter searches."""
    page, console = open_page(browser_context, store)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the pets")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.get_by_test_id("search-q")).to_be_focused()
    page.keyboard.type("Quillfeather")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("pet-row")).to_have_count(1, timeout=DEADLINE_MS)
    expect(row(page, 12_345)).to_be_visible()
    assert console.errors == []


def test_paging_forward_and_back_shows_each_pet_once(browser_context: BrowserContext, store: UvicornServer) -> None:
    page, console = open_page(browser_context, store)
    search(page, status="sold")
    expect(page.get_by_test_id("pet-row").first).to_have_attribute("data-status", "sold", timeout=DEADLINE_MS)
    pages: list[list[int]] = []
    for number in range(5):
        expect(page.get_by_test_id("pets-table")).to_have_attribute("data-page", str(number), timeout=DEADLINE_MS)
        pages.append(shown_ids(page))
        if number < 4:
            page.get_by_test_id("page-next").click()
    walked = [pet_id for ids in pages for pet_id in ids]
    assert len(walked) == len(set(walked)) == 5 * 20, walked
    assert walked == sorted(walked, reverse=True)  # newest first, no pet skipped between pages
    rest = httpx.get(f"{store.url}/api/v3/pet/search", params={"status": "sold", "sort": "-id", "limit": 100}).json()
    assert walked == [pet["id"] for pet in rest["items"]]
    for number in range(3, -1, -1):
        page.get_by_test_id("page-previous").click()
        expect(page.get_by_test_id("pets-table")).to_have_attribute("data-page", str(number), timeout=DEADLINE_MS)
        expect(page.get_by_test_id("pet-row").first).to_have_attribute("data-pet-id", str(pages[number][0]))
        assert shown_ids(page) == pages[number]
    expect(page.get_by_test_id("page-previous")).to_be_disabled()
    assert console.errors == []


# ---------------------------------------------------------------------------------- live rows


def test_shown_rows_stay_live_through_their_own_rooms(
    browser_context: BrowserContext, store: UvicornServer, staff_api: Api
) -> None:
    page = browser_context.new_page()
    rooms = record_rooms(page)
    console = StoreConsole(page, store.port)
    page.goto(f"{store.url}/")
    expect(page.get_by_test_id("connection-state")).to_have_text("connected", timeout=DEADLINE_MS)
    search(page, q="Luna")
    expect(page.get_by_test_id("pet-row").first).to_contain_text("Luna", timeout=DEADLINE_MS)
    shown = shown_ids(page)
    assert len(shown) == 20

    # The page joins the room of every row it shows, and of no other pet.
    def joined() -> set[str]:
        live: set[str] = set()
        for kind, room in rooms:
            (live.add if kind == "subscribe" else live.discard)(room)
        return {room for room in live if room.startswith("pet:")}

    # Each row is marked once its room has answered.
    expect(page.locator('[data-testid="pet-row"][data-live="true"]')).to_have_count(20, timeout=DEADLINE_MS)
    assert joined() == {f"pet:{pet_id}" for pet_id in shown}

    # A change over REST shows in its row; a deletion marks it.
    target, doomed = shown[3], shown[5]
    staff_api.json("POST", f"/pet/{target}", params={"name": "Luna the Renamed", "status": "pending"})
    expect(row(page, target)).to_have_attribute("data-status", "pending", timeout=DEADLINE_MS)
    expect(row(page, target)).to_contain_text("Luna the Renamed")
    staff_api.json("DELETE", f"/pet/{doomed}")
    expect(row(page, doomed)).to_have_attribute("data-deleted", "true", timeout=DEADLINE_MS)

    # A new pet matching the filter appears at the top (newest first); one that does not match, nowhere.
    other = staff_api.json("POST", "/pet", json={"name": "Biscuit", "photoUrls": [], "status": "available"})
    fresh = staff_api.json("POST", "/pet", json={"name": "Luna Nova", "photoUrls": [], "status": "available"})
    expect(page.get_by_test_id("pet-row").first).to_have_attribute("data-pet-id", str(fresh["id"]), timeout=DEADLINE_MS)
    expect(row(page, other["id"])).to_have_count(0)

    # One changed into the search appears too, in its place: below the newer Luna Nova.
    staff_api.json("POST", f"/pet/{other['id']}", params={"name": "Luna Late"})
    expect(row(page, other["id"])).to_contain_text("Luna Late", timeout=DEADLINE_MS)
    assert shown_ids(page)[:2] == [fresh["id"], other["id"]]
    assert console.errors == []


# ---------------------------------------------------------------------------------- accounts


def test_staff_change_an_order_status_from_the_page_and_the_customer_sees_it(
    chromium: Browser, store: UvicornServer, staff_api: Api
) -> None:
    pet = staff_api.json("POST", "/pet", json={"name": "Order Me", "photoUrls": [], "status": "available"})
    buyer = Api(store, CUSTOMER)
    order = buyer.json("POST", "/store/order", json={"petId": pet["id"], "quantity": 1, "status": "placed"})
    contexts = [chromium.new_context(viewport={"width": 1280, "height": 900}) for _ in range(2)]
    try:
        customer_page, customer_console = open_page(contexts[0], store)
        sign_in(customer_page, CUSTOMER)
        customer_row = customer_page.locator(f'[data-testid="order-row"][data-order-id="{order["id"]}"]')
        expect(customer_row).to_have_attribute("data-status", "placed", timeout=DEADLINE_MS)
        expect(customer_page.get_by_test_id("order-status-select")).to_have_count(0)  # customers change nothing

        staff_page, staff_console = open_page(contexts[1], store)
        sign_in(staff_page, STAFF)
        staff_row = staff_page.locator(f'[data-testid="order-row"][data-order-id="{order["id"]}"]')
        expect(staff_row).to_have_attribute("data-status", "placed", timeout=DEADLINE_MS)
        staff_row.get_by_test_id("order-status-select").select_option("approved")
        staff_row.get_by_test_id("order-status-set").click()
        expect(staff_row).to_have_attribute("data-status", "approved", timeout=DEADLINE_MS)
        expect(customer_row).to_have_attribute("data-status", "approved", timeout=DEADLINE_MS)
        assert buyer.json("GET", f"/store/order/{order['id']}")["status"] == "approved"

        # An order placed meanwhile shows on both pages without a reload.
        second = staff_api.json("POST", "/pet", json={"name": "Order Me Too", "photoUrls": [], "status": "available"})
        later = buyer.json("POST", "/store/order", json={"petId": second["id"], "quantity": 2, "status": "placed"})
        for page in (customer_page, staff_page):
            later_row = page.locator(f'[data-testid="order-row"][data-order-id="{later["id"]}"]')
            expect(later_row).to_have_attribute("data-status", "placed", timeout=DEADLINE_MS)
        # The README's picture (docs/dashboard.png is copied from it by hand): staff, live, mid-change.
        ARTIFACTS.mkdir(exist_ok=True)
        staff_page.screenshot(path=str(ARTIFACTS / "dashboard-staff.png"), full_page=True)
        assert customer_console.errors == [] and staff_console.errors == []
    finally:
        buyer.http.close()
        for context in contexts:
            context.close()


def test_an_admin_changes_a_role_from_the_page(browser_context: BrowserContext, store: UvicornServer) -> None:
    page, console = open_page(browser_context, store)
    sign_in(page, ADMIN)
    user_row = page.locator(f'[data-testid="user-row"][data-username="{PROMOTED}"]')
    expect(user_row).to_have_attribute("data-role", "customer", timeout=DEADLINE_MS)
    user_row.get_by_test_id("user-role-select").select_option("staff")
    user_row.get_by_test_id("user-role-set").click()
    expect(user_row).to_have_attribute("data-role", "staff", timeout=DEADLINE_MS)
    admin = Api(store, ADMIN)
    try:
        roles = {user["username"]: user["role"] for user in admin.json("GET", "/user")}
        assert roles[PROMOTED] == "staff"
    finally:
        admin.http.close()
    assert console.errors == []


# ---------------------------------------------------------------------------------- layout, a11y

#: Every piece of text (each line box) and every control or chart, clipped by the scrolling boxes
#: around it; any two that overlap by more than a pixel either way are reported.
OVERLAPS = """() => {
  const boxes = [];
  const clip = (rect, node) => {
    let r = { left: rect.left, top: rect.top, right: rect.right, bottom: rect.bottom };
    for (let el = node.parentElement; el; el = el.parentElement) {
      const style = getComputedStyle(el);
      if (style.overflowX !== "visible" || style.overflowY !== "visible") {
        const c = el.getBoundingClientRect();
        r = { left: Math.max(r.left, c.left), top: Math.max(r.top, c.top),
              right: Math.min(r.right, c.right), bottom: Math.min(r.bottom, c.bottom) };
      }
    }
    return r.right - r.left > 2 && r.bottom - r.top > 2 ? r : null;
  };
  const describe = (node) => {
    const el = node.nodeType === 1 ? node : node.parentElement;
    const id = el.closest("[data-testid]")?.dataset.testid ?? el.tagName;
    return `${id}:${(node.textContent ?? "").trim().slice(0, 30)}`;
  };
  const controls = "input, select, button, svg, img";
  for (const el of document.querySelectorAll(controls)) {
    const r = el.getClientRects()[0] && clip(el.getBoundingClientRect(), el);
    if (r) boxes.push({ r, what: describe(el), owner: el });
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.textContent.trim() || node.parentElement.closest(controls)) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    for (const rect of range.getClientRects()) {
      const r = clip(rect, node);
      if (r) boxes.push({ r, what: describe(node), owner: node });
    }
  }
  const found = [];
  for (let i = 0; i < boxes.length; i += 1) {
    for (let j = i + 1; j < boxes.length; j += 1) {
      const a = boxes[i], b = boxes[j];
      if (a.owner === b.owner) continue;
      const x = Math.min(a.r.right, b.r.right) - Math.max(a.r.left, b.r.left);
      const y = Math.min(a.r.bottom, b.r.bottom) - Math.max(a.r.top, b.r.top);
      if (x > 1 && y > 1) found.push(`${a.what} / ${b.what}`);
    }
  }
  const wide = [...document.querySelectorAll("body *")].filter((el) => el.getClientRects().length
    && el.getBoundingClientRect().right > innerWidth + 1 && !el.closest(".table-wrap"));
  // A count broken over two lines does not overlap anything, but it is broken all the same.
  const wrapped = [...document.querySelectorAll(".count .value, .series-now")].filter((el) => {
    const range = document.createRange();
    range.selectNodeContents(el);
    return range.getClientRects().length > 1;
  });
  return { overlaps: found.slice(0, 20), scroll: document.documentElement.scrollWidth - innerWidth,
           wide: wide.slice(0, 10).map((el) => el.dataset.testid ?? el.tagName),
           wrapped: wrapped.map((el) => el.dataset.testid) };
}"""
AXE_RUN = """async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
  .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map((n) => n.target) }))"""


def test_every_width_from_320_to_2560_px_has_no_overlap_and_axe_finds_no_serious_violation(
    chromium: Browser, big_store: UvicornServer
) -> None:
    """Six-digit counts, every panel shown (an admin); one page, resized: the layout follows the width alone."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run scripts/test, which installs tests/js's packages (npm ci)")
    context = chromium.new_context(viewport={"width": 1280, "height": 1000})
    try:
        page, console = open_page(context, big_store)
        sign_in(page, ADMIN)
        expect(page.get_by_test_id("user-row").first).to_be_visible(timeout=DEADLINE_MS)
        expect(page.get_by_test_id("orders-panel")).to_be_visible()
        for status in STATUSES:
            expect(page.get_by_test_id(f"count-{status}")).to_have_text(re.compile(r"^\d{1,3}(,\d{3})*$"))
        assert len(page.get_by_test_id("count-available").inner_text()) == len("100,000")
        # evaluate() runs outside the page's CSP, which (rightly) refuses inline scripts.
        page.evaluate(AXE.read_text())
        ARTIFACTS.mkdir(exist_ok=True)
        failures = {}
        for width in (320, 390, 1280, 2560):
            page.set_viewport_size({"width": width, "height": 1000})
            layout = page.evaluate(OVERLAPS)
            page.screenshot(path=str(ARTIFACTS / f"dashboard-store-{width}.png"), full_page=True)
            if layout != {"overlaps": [], "scroll": 0, "wide": [], "wrapped": []}:
                failures[width] = layout
            if width in (320, 1280):
                report = page.evaluate(AXE_RUN)
                serious = [v for v in report if v["impact"] in ("serious", "critical")]
                if serious:
                    failures[f"axe at {width}"] = serious
                print(f"axe at {width} px: {report}")
        assert failures == {}
        assert console.errors == []
    finally:
        context.close()


# ---------------------------------------------------------------------------------- ports, origins


def test_a_page_served_by_scripts_serve_on_another_port_connects(chromium: Browser, tmp_path: Path) -> None:
    """No PETSTORE_ALLOWED_ORIGINS: the server's own origin is allowed on whatever port it serves."""
    server = UvicornServer(
        command=[str(ROOT / "scripts" / "serve"), "--host", "{host}", "--port", "{port}"],
        env={
            "PETSTORE_VENV": str(Path(sys.executable).parents[1]),
            "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
            "PETSTORE_DEMO_PETS": "30",
            "PETSTORE_DEMO_PASSWORD": PASSWORD,
            "PETSTORE_JWT_SECRET": "dashboard-store-secret-0123456789abcdef",
            "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
        },
        cwd=tmp_path,
        start_timeout=120,
    )
    context = chromium.new_context()
    with server:
        assert server.port != 8000
        page = context.new_page()
        console = StoreConsole(page, server.port)
        page.goto(f"{server.url}/")
        expect(page.get_by_test_id("connection-state")).to_have_text("connected", timeout=DEADLINE_MS)
        expect(page.get_by_test_id("pet-row")).to_have_count(20, timeout=DEADLINE_MS)
        expect(page.get_by_test_id("connection-detail")).to_have_text("")

        # (Coming back after a restart is tests/test_dashboard.py's; here, only what the page says.)
        console.outage = True
        server.stop()  # SIGTERM: the server closes the page's socket with 1012
        expect(page.get_by_test_id("connection-state")).to_have_text("reconnecting", timeout=DEADLINE_MS)
        expect(page.get_by_test_id("connection-detail")).to_have_text("server restarting", timeout=DEADLINE_MS)
    context.close()
    assert console.errors == []


def test_a_page_says_offline_while_the_browser_has_no_network(
    browser_context: BrowserContext, store: UvicornServer
) -> None:
    page, console = open_page(browser_context, store)
    console.outage = True
    browser_context.set_offline(True)
    expect(page.get_by_test_id("connection-detail")).to_have_text("offline", timeout=DEADLINE_MS)
    browser_context.set_offline(False)
    expect(page.get_by_test_id("connection-detail")).to_have_text("", timeout=DEADLINE_MS)
    expect(page.get_by_test_id("connection-state")).to_have_text(re.compile("connected|recovered"))
    assert console.errors == []


def test_a_page_whose_origin_is_not_allowed_says_so(chromium: Browser, store: UvicornServer) -> None:
    """A second server over the module's database, allowing another origin only."""
    env = store.env | {"PETSTORE_ALLOWED_ORIGINS": "https://shop.example"}
    with UvicornServer(env=env) as server:
        page = chromium.new_page()
        console = StoreConsole(page, server.port)
        console.outage = True  # Chromium logs the refused upgrade itself
        page.goto(f"{server.url}/")
        expect(page.get_by_test_id("connection-state")).to_have_text("refused", timeout=DEADLINE_MS)
        expect(page.get_by_test_id("connection-detail")).to_have_text(
            "refused: this page's origin is not allowed (set PETSTORE_ALLOWED_ORIGINS)"
        )
        expect(page.get_by_test_id("pet-row").first).to_be_visible()  # REST works: only the socket is refused
        assert console.errors == []
