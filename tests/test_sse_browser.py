"""Authenticated Server-Sent Events from a browser, in real headless Chromium against the real server.

``EventSource`` cannot send ``Authorization``, and tokens are never taken from a URL: a page on an
allowed origin (another origin than the API's, so CORS is part of it) logs in with ``fetch``, spends
its bearer token on a single-use stream ticket, and follows the staff-only ``orders`` room with a
real ``EventSource``; an order placed over REST reaches it. The ticket goes through Redis, and the
server's access log shows the stream request with the ticket redacted.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.services import HOST, UvicornServer, free_port
from tests.test_dashboard import STAFF, Store, petstore_cli, server_env

pytestmark = pytest.mark.browser

DEADLINE_MS = 15_000
PAGE = "<!doctype html><title>orders</title><p>a page of another origin</p>"

FOLLOW_ORDERS = """
async ({ api, username, password }) => {
  const login = await fetch(`${api}/api/v3/auth/token`, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "password", username, password }),
  });
  const tokens = await login.json();
  const issued = await fetch(`${api}/api/v3/events/ticket`, {
    method: "POST",
    headers: { Authorization: `Bearer ${tokens.access_token}` },
  });
  const { ticket, expires_in } = await issued.json();
  window.seen = { subscribed: null, orders: [], errors: 0 };
  const source = new EventSource(`${api}/api/v3/events?room=orders&ticket=${encodeURIComponent(ticket)}`);
  source.addEventListener("subscribed", (event) => { window.seen.subscribed = JSON.parse(event.data); });
  source.addEventListener("order.placed", (event) => { window.seen.orders.push(JSON.parse(event.data)); });
  source.onerror = () => { window.seen.errors += 1; };
  return { ticket, expires_in, issued: issued.status };
}
"""


class PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """The page's own origin: a loopback HTTP server of its own (a page that Chromium believes
    public could not call a loopback API at all: Private Network Access)."""
    server = ThreadingHTTPServer((HOST, 0), PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_page_follows_orders_over_sse_with_a_stream_ticket(tmp_path: Path, redis_url: str, chromium: Browser) -> None:
    with page_server() as page_origin:
        env = server_env(tmp_path, redis_url, 0) | {"PETSTORE_ALLOWED_ORIGINS": page_origin}
        petstore_cli(env, "migrate")
        petstore_cli(env, "users", "create", STAFF[0], "--password", STAFF[1], "--role", "staff")
        follow_orders(chromium, env, page_origin)


def follow_orders(chromium: Browser, env: dict[str, str], page_origin: str) -> None:
    with UvicornServer(env=env, port=free_port()) as server:
        store = Store(server.url)
        page = chromium.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(f"{page_origin}/")
        started: dict[str, Any] = page.evaluate(
            FOLLOW_ORDERS, {"api": server.url, "username": STAFF[0], "password": STAFF[1]}
        )
        assert started["issued"] == 200 and started["expires_in"] == 30
        page.wait_for_function("window.seen.subscribed !== null", timeout=DEADLINE_MS)
        assert page.evaluate("window.seen.subscribed.room") == "orders"

        pet = store.add_pet("Ticketed")
        order = store.place_order(pet["id"])
        page.wait_for_function("window.seen.orders.length > 0", timeout=DEADLINE_MS)
        [placed] = page.evaluate("window.seen.orders")
        assert placed["event"] == "order.placed" and placed["room"] == "orders"
        assert placed["data"]["id"] == order["id"] and placed["data"]["petId"] == pet["id"]
        assert page.evaluate("window.seen.errors") == 0  # no reconnect: the spent ticket was never needed again
        assert errors == []
        store.close()
        page.close()
        server.stop()
        log = server.log_path.read_text()
    assert "GET /api/v3/events?room=orders&ticket=*** HTTP/1.1" in log  # the stream is logged...
    assert started["ticket"] not in log  # ...without its ticket
