"""Debian's promtool accepts the repository's Prometheus configuration, alert rules and their unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ops.contract import REPO

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
    return subprocess.run([promtool, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=60)


def test_check_config_accepts_prometheus_yml_and_finds_its_rule_file(promtool: str) -> None:
    result = run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


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


def test_check_rules_accepts_the_alert_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", "prometheus/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", "prometheus/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
