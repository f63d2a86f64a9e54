"""The alert rules are those of issue 5, explain themselves, link a runbook that exists, and are tested both ways."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.ops.contract import ALERTS, METRICS, REPO, SCRAPE_SERIES, base_metric, petstore_names, selectors

RUNBOOK_DOC = REPO / "docs" / "operations.md"


@pytest.fixture(scope="module")
def rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((REPO / "prometheus" / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


@pytest.fixture(scope="module")
def unit_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load((REPO / "prometheus" / "alerts_test.yml").read_text())["tests"]
    return tests


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_exactly_the_alerts_of_issue_5_are_defined(rules: dict[str, dict[str, Any]]) -> None:
    assert sorted(rules) == sorted(ALERTS)


def test_every_alert_has_summary_description_runbook_and_severity(rules: dict[str, dict[str, Any]]) -> None:
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert len(annotations["description"]) >= 100, f"{name}: the description should tell what is wrong"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name


def test_runbook_links_point_to_the_operations_anchor_named_after_the_alert(rules: dict[str, dict[str, Any]]) -> None:
    for name, rule in rules.items():
        assert rule["annotations"]["runbook"] == f"docs/operations.md#runbook-{name.lower()}"


def test_every_runbook_anchor_has_its_heading_in_the_operations_doc(rules: dict[str, dict[str, Any]]) -> None:
    headings = re.findall(r"^#{2,6} (.+)$", RUNBOOK_DOC.read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(heading) for heading in headings}
    for name, rule in rules.items():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, f"{name}: no heading 'Runbook: {name}' in {RUNBOOK_DOC.relative_to(REPO)}"


def test_alerts_query_only_spec_metrics(rules: dict[str, dict[str, Any]]) -> None:
    for name, rule in rules.items():
        for series in petstore_names(rule["expr"]):
            assert base_metric(series) in METRICS, f"{name}: {series} is not a SPEC §5 metric"
        for series, _ in selectors(rule["expr"]):
            assert base_metric(series) in METRICS or series in SCRAPE_SERIES, f"{name}: unknown series {series}"


def test_every_alert_is_unit_tested_firing_and_not_firing(
    rules: dict[str, dict[str, Any]], unit_tests: list[dict[str, Any]]
) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in unit_tests:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fires == set(rules), f"never shown firing: {set(rules) - fires}"
    assert quiet == set(rules), f"never shown quiet: {set(rules) - quiet}"


def test_each_alert_has_a_test_where_it_never_fires(
    rules: dict[str, dict[str, Any]], unit_tests: list[dict[str, Any]]
) -> None:
    """Not only "still pending" before `for:` elapses: a whole scenario of nearby, harmless series."""
    harmless = {
        case["alertname"]
        for test in unit_tests
        if all(not case.get("exp_alerts") for case in test.get("alert_rule_test", []))
        for case in test.get("alert_rule_test", [])
    }
    assert harmless == set(rules), f"no harmless scenario for {set(rules) - harmless}"


def test_file_sd_example_is_a_valid_target_list() -> None:
    files = sorted((REPO / "prometheus" / "targets").glob("*.json"))
    assert files
    for path in files:
        groups = json.loads(path.read_text())
        assert isinstance(groups, list) and groups, path.name
        for group in groups:
            assert set(group) <= {"targets", "labels"}, path.name
            assert all(re.fullmatch(r"[\w.-]+:\d+", target) for target in group["targets"]), path.name
            assert all(isinstance(value, str) for value in group.get("labels", {}).values()), path.name
