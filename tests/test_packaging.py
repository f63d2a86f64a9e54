"""What pyproject.toml declares holds: the default install runs without the extras (rich for the
seed's progress bar, asyncpg for PostgreSQL), and the declared licence ships as its full text.

The floors of the version ranges are kept true by scripts/test-lowest, which the full run of
scripts/test runs.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from petstore.cli import PROGRESS_THRESHOLD
from petstore.config import Settings

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PG_URL = "postgresql+asyncpg://petstore@127.0.0.1:1/petstore"


def _names(requirements: list[str]) -> set[str]:
    return {line.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for line in requirements}


def _petstore_without(module: str, *args: str, cwd: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    """``petstore ARGS`` in a fresh interpreter where ``import MODULE`` fails as if it were not installed."""
    code = f"import sys; sys.modules[{module!r}] = None; from petstore.cli import main; sys.exit(main({list(args)!r}))"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PETSTORE_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rich_and_asyncpg_are_extras_that_the_test_extra_brings() -> None:
    extras = PROJECT["optional-dependencies"]
    assert {"rich", "asyncpg"}.isdisjoint(_names(PROJECT["dependencies"]))
    assert _names(extras["cli"]) == {"rich"}
    assert _names(extras["postgres"]) == {"asyncpg"}
    assert "petstore[postgres,cli]" in extras["test"]


def test_the_license_file_is_the_full_apache_2_0_text_the_metadata_names() -> None:
    text = (REPO / "LICENSE").read_text()
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert "Apache License\n                           Version 2.0, January 2004" in text
    for section in ("1. Definitions.", "4. Redistribution.", "9. Accepting Warranty or Additional Liability."):
        assert section in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_a_postgresql_url_without_asyncpg_is_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ValidationError, match=r"pip install 'petstore\[postgres\]'"):
        Settings(database_url=PG_URL)


def test_a_postgresql_url_is_accepted_when_asyncpg_is_installed() -> None:
    assert Settings(database_url=PG_URL).database_url == PG_URL


@pytest.mark.process
def test_the_cli_without_asyncpg_says_in_one_line_what_to_install(tmp_path: Path) -> None:
    result = _petstore_without("asyncpg", "migrate", cwd=tmp_path, database_url=PG_URL)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("petstore: error: ")
    assert "pip install 'petstore[postgres]'" in result.stderr


@pytest.mark.process
def test_seed_without_rich_reports_progress_in_plain_lines(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}"
    migrated = _petstore_without("rich", "migrate", cwd=tmp_path, database_url=url)
    assert migrated.returncode == 0, migrated.stderr
    count = PROGRESS_THRESHOLD  # the fewest pets for which a progress display is shown
    seeded = _petstore_without("rich", "seed", "--pets", str(count), cwd=tmp_path, database_url=url)
    assert seeded.returncode == 0, seeded.stderr
    assert f"seeded {count} pets" in seeded.stdout
    assert f"seeding pets: {count}/{count}" in seeded.stderr.splitlines()
