"""The repository is self-contained: a clone alone runs the suite, the scripts and the server.

Nothing tracked refers to a file outside the repository (the Petstore document once came from
``../shared``, so a clone without that directory failed the generated-client tests), and the
copy of the Petstore document the tests use is the one tests/data/README.md records.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"

#: Ways a file has pointed outside the repository: the shared documents' directory by name, and
#: ``Path(__file__)`` parents above the repository's root (checked against each file's depth).
OUTSIDE = re.compile(r"\.\./shared\b|/work/shared\b|\bshared/petstore/")
PARENTS = re.compile(r"Path\(__file__\)\.resolve\(\)\.parents\[(\d+)\]")
#: Allowed to name the outside: where the document came from, and the patterns of this test and the docs test.
EXPLAINS = {"tests/data/README.md", "tests/test_repository.py", "tests/test_docs_site.py"}


def _files() -> list[str]:
    """Tracked files and new ones not ignored: what a clone (or the next commit) holds."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (REPO / name).is_file()})


def test_no_file_refers_outside_the_repository() -> None:
    found = []
    for name in _files():
        if name in EXPLAINS:
            continue
        try:
            text = (REPO / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images, fonts: no paths in them
        for number, line in enumerate(text.splitlines(), 1):
            depth = len(Path(name).parts)  # parents[depth - 1] is the root, anything above is outside
            if OUTSIDE.search(line) or any(int(k) >= depth for k in PARENTS.findall(line)):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == [], "\n".join(found)


def test_the_petstore_document_is_the_copy_its_readme_records() -> None:
    (recorded,) = re.findall(r"sha256\s+`([0-9a-f]{64})`", (DATA / "README.md").read_text())
    assert hashlib.sha256((DATA / "openapi-v3.yaml").read_bytes()).hexdigest() == recorded


#: What the tools and the server write into a working tree, which a careless ``git add`` must not
#: pick up: the development JWT secret, SQLite's write-ahead log, Schemathesis' cache, the venvs.
WRITTEN_HERE = (".petstore-jwt-secret", "petstore.db-wal", "petstore.db-shm", ".schemathesis/", ".venv-lowest/")


@pytest.mark.parametrize("path", WRITTEN_HERE)
def test_files_the_tools_write_are_ignored_by_git(path: str) -> None:
    # --no-index: ignored by the rules alone, whether or not such a file exists or was ever tracked.
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, check=False)
    assert result.returncode == 0, f"{path} is not in .gitignore"
