"""Debian's promtool accepts the repository's Prometheus configuration, alert rules and their unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops.contract import REPO, load_rules, rule_files

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not installed (Debian package prometheus): run scripts/test"
    return path


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    # From the repository root, as an operator would run it; prometheus.yml names its rule and
    # file_sd files relative to itself, so the working directory does not matter to promtool.
    return subprocess.run([promtool, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=180)


UNIT_TESTS = sorted((REPO / "prometheus").glob("*_test.yml"))


def test_check_config_accepts_prometheus_yml_and_finds_its_rule_files(promtool: str) -> None:
    result = run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout
    for path in rule_files():
        assert f"SUCCESS: {len(load_rules(path))} rules found" in result.stdout.split(path.name, 1)[1], path.name


def test_check_config_resolves_paths_from_another_directory(promtool: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [promtool, "check", "config", str(REPO / "prometheus.yml")],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("path", "count"), [("prometheus/alerts.yml", 8), ("prometheus/slo.yml", 31)], ids=["alerts", "slo"]
)
def test_check_rules_accepts_each_rule_file(promtool: str, path: str, count: int) -> None:
    result = run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_every_rule_file_prometheus_loads_has_unit_tests() -> None:
    tested = {
        (path.parent / name).resolve() for path in UNIT_TESTS for name in yaml.safe_load(path.read_text())["rule_files"]
    }
    assert {path.resolve() for path in rule_files()} <= tested


@pytest.mark.parametrize("path", UNIT_TESTS, ids=[path.stem for path in UNIT_TESTS])
def test_rule_unit_tests_pass(promtool: str, path: Path) -> None:
    result = run(promtool, "test", "rules", str(path.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
