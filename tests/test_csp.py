"""The two pages under their Content-Security-Policy, in real Chromium (SPEC §2): they work, the
browser reports no violation, and the policy is really enforced (an inline script is refused)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.services import HOST, UvicornServer, free_port

pytestmark = pytest.mark.browser

PETSTORE = Path(sys.executable).with_name("petstore")
DEADLINE_MS = 15_000

#: Runs before any script of the page (Playwright's init scripts are not subject to the page's
#: CSP): every violation the browser reports, as the page would see it.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const where = `${event.sourceFile}:${event.lineNumber}`;
  window.__violations.push(`${event.violatedDirective} ${event.blockedURI || "inline"} ${where}`);
});
"""
INJECT_INLINE = """() => {
  const script = document.createElement("script");
  script.textContent = "window.__inlineRan = true";
  document.body.append(script);
}"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[UvicornServer]:
    port = free_port()
    env = {
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}",
        "PETSTORE_JWT_SECRET": "csp-test-secret-0123456789abcdefghijkl",
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
        "PETSTORE_ALLOWED_ORIGINS": f"http://{HOST}:{port}",
    }
    subprocess.run([str(PETSTORE), "migrate"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    with UvicornServer(env=env, cwd=tmp_path, port=port) as server:
        yield server


def violations(page: Page) -> list[str]:
    found: list[str] = page.evaluate("window.__violations")
    return found


def assert_enforced(page: Page) -> None:
    """The policy is live: an inline script added now is refused, and reported."""
    page.evaluate(INJECT_INLINE)
    page.wait_for_function("window.__violations.length > 0", timeout=DEADLINE_MS)
    assert page.evaluate("window.__inlineRan === undefined")
    assert all(v.startswith("script-src") for v in violations(page)), violations(page)


def test_the_dashboard_works_under_its_csp(chromium: Browser, server: UvicornServer) -> None:
    page = chromium.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(RECORD_VIOLATIONS)
    response = page.goto(f"{server.url}/")
    assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.get_by_test_id("count-available")).to_have_text("0", timeout=DEADLINE_MS)
    expect(page.get_by_test_id("connection-state")).to_have_text("connected", timeout=DEADLINE_MS)
    assert violations(page) == []
    assert errors == []
    assert_enforced(page)


def test_swagger_ui_works_under_its_csp(chromium: Browser, server: UvicornServer) -> None:
    page = chromium.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(RECORD_VIOLATIONS)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=DEADLINE_MS)
    # Open one operation: its schemas and examples render (React sets inline styles here).
    page.locator(".opblock-summary-path", has_text="/pet/{petId}").first.click()
    expect(page.locator(".opblock-body").first).to_be_visible(timeout=DEADLINE_MS)
    assert violations(page) == []
    assert errors == []
    assert_enforced(page)
