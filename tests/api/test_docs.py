"""``/docs``: Swagger UI on the served document, every file from this server and no other host."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from playwright.sync_api import Browser, expect
from starlette.testclient import TestClient

from petstore.api.docs import ASSETS
from petstore.app import create_app
from petstore.config import Settings
from tests.services import UvicornServer

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process

PETSTORE = Path(sys.executable).with_name("petstore")
EXTERNAL = re.compile(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", re.IGNORECASE)


class References(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}",
        plugins=(),
        media_dir=tmp_path / "media",
        env="test",
    )
    with TestClient(create_app(settings)) as client:
        yield client


def page_references(client: TestClient) -> list[str]:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    parser = References()
    parser.feed(response.text)
    return parser.urls


def test_the_page_and_its_script_name_no_other_host(client: TestClient) -> None:
    page = client.get("/docs").text
    script = client.get("/docs/init.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert not EXTERNAL.search(page), page
    assert not EXTERNAL.search(script.text), script.text
    assert '"api/v3/openapi.json"' in script.text  # relative to the page: under a proxy's prefix too
    assert "validatorUrl: null" in script.text  # Swagger UI's default sends the document to a public validator


def test_every_file_the_page_loads_is_served_here(client: TestClient) -> None:
    named = page_references(client)
    # Relative to the page, so that behind a proxy's path prefix (--root-path) they stay under it.
    assert all(not url.startswith("/") and "//" not in url for url in named), named
    urls = [urljoin("/docs", url) for url in named]
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/docs/init.js"} <= set(urls)
    assert {urljoin("/store/docs", url) for url in named} >= {"/store/docs/assets/swagger-ui-bundle.js"}
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.content, url


def test_the_stylesheet_imports_nothing_from_elsewhere(client: TestClient) -> None:
    css = client.get("/docs/assets/swagger-ui.css")
    assert css.headers["content-type"].startswith("text/css")
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", css.text)


def test_only_the_assets_the_page_needs_are_served(client: TestClient) -> None:
    """The bundle's own index.html and initializer point at a public demo server: not served."""
    for name in ("index.html", "swagger-initializer.js", "oauth2-redirect.html", "../__init__.py"):
        response = client.get(f"/docs/assets/{name}")
        assert response.status_code == 404, name
        assert response.json()["code"] == 404
    for name in ASSETS:
        assert client.get(f"/docs/assets/{name}").status_code == 200, name


# ---------------------------------------------------------------------------------- in Chromium


@pytest.fixture
def server(tmp_path: Path) -> Iterator[UvicornServer]:
    """The real server with the auth plugin, so that its paths are in the document too."""
    env = {
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}",
        "PETSTORE_PLUGINS": "plugins.auth",
        "PETSTORE_JWT_SECRET": "docs-test-secret-0123456789abcdefghij",
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
    }
    subprocess.run([str(PETSTORE), "migrate"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    with UvicornServer(env=env, cwd=tmp_path) as server:
        yield server


@pytest.mark.browser
def test_swagger_ui_renders_every_operation_without_leaving_the_server(
    chromium: Browser, server: UvicornServer
) -> None:
    spec = httpx.get(f"{server.url}/api/v3/openapi.json").json()
    operations = sum(len(item) for item in spec["paths"].values())
    page = chromium.new_page()
    requested: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/docs")
    expect(page.locator(".opblock")).to_have_count(operations, timeout=15_000)
    expect(page.locator(".info .title")).to_contain_text("Petstore")
    expect(page.locator(".opblock-summary-path", has_text="/pet/{petId}").first).to_be_visible()
    assert page.locator(".errors-wrapper").count() == 0
    assert errors == []
    assert requested and all(url.startswith(server.url + "/") for url in requested), requested
    assert f"{server.url}/api/v3/openapi.json" in requested
