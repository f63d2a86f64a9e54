"""``petstore serve --root-path /store`` behind a proxy that strips the prefix (real haproxy), in
real Chromium: the dashboard loads its files, calls REST and joins its rooms under the prefix,
and Swagger UI renders the document and signs in (OAuth2) under it too."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.services import HOST, UvicornServer, free_port
from tests.services.haproxy import HaproxyServer

pytestmark = [pytest.mark.browser, pytest.mark.process]

PETSTORE = Path(sys.executable).with_name("petstore")
PREFIX = "/store"
DEADLINE_MS = 15_000

#: A proxy that serves the app under PREFIX and strips it: what --root-path is for.
CONFIG = f"""
global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 60s
frontend www
    bind "${{PETSTORE_LISTEN}}"
    http-request redirect location {PREFIX}/ code 308 if {{ path {PREFIX} }}
    http-request deny deny_status 404 unless {{ path_beg {PREFIX}/ }}
    http-request replace-path ^{PREFIX}(/.*)$ \\1
    default_backend instances
backend instances
    server petstore-1 "${{PETSTORE_BACKEND_1}}"
listen stats
    bind "${{PETSTORE_STATS_LISTEN}}"
    stats enable
    stats uri /stats
"""


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[HaproxyServer, UvicornServer]]:
    proxy_port = free_port()
    env = {
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}",
        "PETSTORE_JWT_SECRET": "root-path-test-secret-0123456789abcdefgh",
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
        "PETSTORE_ALLOWED_ORIGINS": f"http://{HOST}:{proxy_port}",
    }
    for args in (["migrate"], ["users", "create", "rooted", "--password", "rooted-password-1", "--role", "staff"]):
        subprocess.run([str(PETSTORE), *args], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    command = [str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}", "--root-path", PREFIX]
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG)
    with (
        UvicornServer(env=env, command=command, cwd=tmp_path) as app,
        HaproxyServer([app.port], port=proxy_port, config=config) as proxy,
    ):
        yield proxy, app


def test_the_dashboard_and_swagger_ui_work_under_a_path_prefix(
    chromium: Browser, proxied: tuple[HaproxyServer, UvicornServer]
) -> None:
    proxy, _ = proxied
    base = f"{proxy.url}{PREFIX}"
    document = httpx.get(f"{base}/api/v3/openapi.json").json()
    assert document["servers"] == [{"url": f"{PREFIX}/api/v3"}]
    assert document["components"]["securitySchemes"]["oauth2Password"]["flows"]["password"]["tokenUrl"] == (
        f"{PREFIX}/api/v3/auth/token"
    )

    page = chromium.new_page()
    requested: list[str] = []
    failed: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("response", lambda response: failed.append(response.url) if response.status >= 400 else None)
    page.on("websocket", lambda socket: requested.append(socket.url))
    page.goto(f"{base}/")
    expect(page.get_by_test_id("connection-state")).to_have_text("connected", timeout=DEADLINE_MS)
    expect(page.get_by_test_id("count-available")).to_have_text("0", timeout=DEADLINE_MS)
    with httpx.Client(base_url=f"{base}/api/v3", timeout=10) as http:
        token = http.post("/auth/token", data={"username": "rooted", "password": "rooted-password-1"}).json()
        created = http.post(
            "/pet",
            json={"name": "Rooted", "photoUrls": []},
            headers={"Authorization": f"Bearer {token['access_token']}"},
        )
        assert created.status_code == 200, created.text
    expect(page.get_by_test_id("count-available")).to_have_text("1", timeout=DEADLINE_MS)
    assert f"ws://{HOST}:{proxy.port}{PREFIX}/ws" in requested
    assert all(url.startswith((f"{base}/", f"ws://{HOST}:{proxy.port}{PREFIX}/")) for url in requested), requested
    assert failed == []

    docs = chromium.new_page()
    docs.on("response", lambda response: failed.append(response.url) if response.status >= 400 else None)
    docs.goto(f"{base}/docs")
    expect(docs.locator(".opblock").first).to_be_visible(timeout=DEADLINE_MS)
    # Authorize with the OAuth2 password flow: the login goes to the token URL under the prefix.
    docs.locator("button.authorize").first.click()
    dialog = docs.locator(".dialog-ux")
    expect(dialog).to_be_visible(timeout=DEADLINE_MS)
    dialog.locator("#oauth_username").fill("rooted")
    dialog.locator("#oauth_password").fill("rooted-password-1")
    dialog.locator("#client_id_password").fill("swagger-ui")  # the form requires one; a public client
    with docs.expect_response(lambda response: response.url.endswith("/auth/token")) as login:
        dialog.get_by_role("button", name="Apply given OAuth2 credentials").click()
    assert login.value.url == f"{base}/api/v3/auth/token" and login.value.status == 200
    assert failed == []
