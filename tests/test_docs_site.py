"""The documentation: a short README for a newcomer, and the MkDocs site in docs/ that builds strictly.

The site is built with ``--strict`` (mkdocs.yml turns unknown links and anchors into warnings),
so a page missing from the nav, a link to a page that does not exist or to a heading that is
gone fails. Nothing in it may send the reader to a document outside the repository.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from petstore.config import CORE_VARIABLES, Settings, variables
from plugins.auth.config import AuthSettings
from plugins.ratelimit.config import RateLimitSettings

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README = REPO / "README.md"
#: What a newcomer reads first; the rest belongs in docs/.
README_MAX_LINES = 250
#: References a reader of the repository cannot follow: sections of a document it does not hold,
#: and the directory beside the checkout that document lived in.
OUTSIDE = ("SPEC §", "../shared")
#: ``[text](target)`` and ``![alt](target)``, the target up to a space or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.process
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: every nav entry exists, every link and anchor resolves."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move the detail into docs/"


def test_no_page_cites_a_document_outside_the_repository() -> None:
    found = [
        f"{page.relative_to(REPO)}:{number}: {line.strip()}"
        for page in _pages()
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if any(outside in line for outside in OUTSIDE)
    ]
    assert found == [], "\n".join(found)


def test_every_relative_link_of_the_readme_is_a_file_of_the_repository() -> None:
    targets = LINK.findall(README.read_text(encoding="utf-8"))
    relative = [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert relative, "the README links to no page of docs/"
    missing = [t for t in relative if not (REPO / t.split("#", 1)[0]).is_file()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


def test_the_readme_links_to_every_page_of_the_site() -> None:
    linked = {t.split("#", 1)[0] for t in LINK.findall(README.read_text(encoding="utf-8"))}
    pages = {f"docs/{page.relative_to(DOCS).as_posix()}" for page in DOCS.rglob("*.md")}
    # Pages being written by others may land before the README learns of them; the site's own
    # index and nav (checked by the strict build) list them. The README must reach these:
    ours = {"rest", "authentication", "protocol", "dashboard", "configuration", "operations", "limits"}
    ours |= {"benchmarks", "architecture", "index"}
    assert {f"docs/{name}.md" for name in ours} <= pages
    assert {f"docs/{name}.md" for name in ours} <= linked


def test_every_setting_is_on_the_configuration_page() -> None:
    """Each variable the core and the default plugins read, with the default the code has."""
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    names = [*CORE_VARIABLES, *variables(AuthSettings), *variables(RateLimitSettings)]
    missing = sorted(name for name in names if f"`{name}`" not in page)
    assert missing == [], f"not on docs/configuration.md: {missing}"
    rows = dict(re.findall(r"^\| `(PETSTORE_[A-Z0-9_]+)` \| ([^|]*) \|", page, flags=re.MULTILINE))
    for settings in (Settings, AuthSettings, RateLimitSettings):
        prefix = str(settings.model_config.get("env_prefix", ""))
        for field, info in settings.model_fields.items():
            default = info.default
            if default is None or default == ():
                continue  # unset, or computed (the JWT secret, the concurrency limit): said in words
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
            shown = shown.removesuffix(".0") if isinstance(default, float) else shown
            shown = f"./{default}" if isinstance(default, Path) else shown  # as it is written in the environment
            name = f"{prefix}{field}".upper()
            assert f"`{shown}`" in rows[name], f"{name}: the code's default is {shown!r}, the page says {rows[name]!r}"
