"""petstore.internals: every guard holds on the installed versions, a changed release is refused
by name, and ``petstore serve`` refuses to start on one (each guarded module's own tests simulate
a release without one of its internals)."""

from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from petstore import internals
from petstore.db import sqlite
from petstore.server import uvicorn_http, uvicorn_ws, workers
from tests.releases import CHILD
from tests.server.test_shutdown import server_env
from tests.services import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
GUARDED = (sqlite, uvicorn_http, uvicorn_ws, workers)
#: Modules of dependencies that are their implementation, not their API: whoever imports one guards it.
IMPLEMENTATION = ("uvicorn.protocols", "uvicorn.supervisors", "sqlalchemy.dialects", "sqlalchemy.connectors")
#: Except a dialect's own package, whose names SQLAlchemy documents as API (``aggregate_order_by``).
DIALECT_API = re.compile(r"sqlalchemy\.dialects\.[a-z]+")


def guards() -> list[internals.Uses]:
    return [uses for module in GUARDED for uses in module.USES]


@pytest.mark.parametrize("uses", guards(), ids=lambda uses: f"{uses.user}:{uses.owner.__name__}")
def test_every_guard_holds_on_the_installed_versions(uses: internals.Uses) -> None:
    assert uses.problems() == []


@pytest.mark.parametrize("distribution", sorted({uses.distribution for uses in guards()}))
def test_the_installed_version_of_each_guarded_dependency_is_in_the_range_pyproject_states(distribution: str) -> None:
    stated = internals.tested_range(distribution)
    assert stated is not None, f"pyproject.toml states no range for {distribution}"
    requirement = Requirement(stated)
    assert requirement.specifier.contains(internals._version(distribution)), stated
    assert any(spec.operator == "<" for spec in requirement.specifier), f"{stated}: no upper bound"


def test_every_module_that_imports_a_dependencys_implementation_guards_what_it_uses() -> None:
    importers = set()
    for path in (REPO_ROOT / "petstore").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith(IMPLEMENTATION) and not DIALECT_API.fullmatch(module):
                importers.add(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
    assert importers == {module.__name__ for module in GUARDED}


class Changed:
    """Stands for a dependency's class that no longer sets what a guard names."""

    def __init__(self) -> None:
        self.kept = True


def test_a_missing_internal_is_refused_naming_the_dependency_its_version_the_range_and_the_name() -> None:
    guard = internals.Uses("petstore.example", "uvicorn", Changed, ("kept", "dropped"))
    with pytest.raises(internals.InternalsChanged) as refused:
        guard.check()
    message = str(refused.value)
    assert message.startswith(f"petstore.example cannot run on uvicorn {internals._version('uvicorn')}, which changed ")
    assert "tests.test_internals.Changed has no attribute 'dropped'" in message
    assert "'kept'" not in message
    assert f"tested with {internals.tested_range('uvicorn')}" in message
    assert isinstance(refused.value, internals.ConfigurationError)  # the CLI's one-line error


def test_a_class_whose_source_cannot_be_read_is_not_refused_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    nameless = type("Nameless", (), {"__module__": "nowhere"})
    with caplog.at_level(logging.WARNING, logger="petstore.internals"):
        assert internals.Uses("petstore.example", "uvicorn", nameless, ("anything",)).problems() == []
    assert "cannot read the source of nowhere.Nameless" in caplog.text


@pytest.mark.process
def test_petstore_serve_refuses_to_start_on_a_uvicorn_whose_websocket_protocol_changed(tmp_path: Path) -> None:
    """Today's defect was the opposite: the direct path silently fell back to the slow one."""
    change = ("uvicorn", "uvicorn.protocols.websockets.websockets_sansio_impl", "self.writable", "self.ready", "0.99.0")
    serve = f"import sys\nfrom petstore.cli import main\nsys.exit(main(['serve', '--port', '{free_port()}']))\n"
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(args=change) + serve],
        cwd=REPO_ROOT,
        env=server_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("petstore: error: petstore.server.uvicorn_ws cannot run on uvicorn 0.99.0")
    assert "WebSocketsSansIOProtocol has no attribute 'writable'" in lines[0]
    assert "Uvicorn running" not in done.stdout + done.stderr
