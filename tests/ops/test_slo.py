"""The SLO rules of issue 13: recording rules per window, multi-window burn-rate alerts as the SRE
workbook sets them, a runbook page for each alert, and unit tests that show each one both ways.

Whether the rules compute the right numbers is promtool's part (prometheus/slo_test.yml, run by
test_promtool.py); this checks what promtool cannot: that nothing is missing.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.ops.contract import (
    METRICS,
    REPO,
    RUNBOOKS,
    base_metric,
    load_rules,
    markdown_anchors,
    petstore_names,
    recorded_series,
    selectors,
)

SLO_RULES = REPO / "prometheus" / "slo.yml"
SLO_TESTS = REPO / "prometheus" / "slo_test.yml"
SLIS = ("slo:petstore_http_errors", "slo:petstore_event_delivery_slow")
WINDOWS = ("5m", "30m", "1h", "6h", "3d", "30d")
# (suffix, long window, short window, burn rate, severity): the workbook's table.
BURN_ALERTS = (
    ("BurnFast", "1h", "5m", 14.4, "critical"),
    ("BurnMedium", "6h", "30m", 6.0, "critical"),
    ("BurnSlow", "3d", "6h", 1.0, "warning"),
)
ALERT_PREFIXES = {
    "slo:petstore_http_errors": "PetstoreRestErrorBudget",
    "slo:petstore_event_delivery_slow": "PetstoreDeliveryErrorBudget",
}


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    return load_rules(SLO_RULES)


@pytest.fixture(scope="module")
def alerts(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules if "alert" in rule}


@pytest.fixture(scope="module")
def unit_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(SLO_TESTS.read_text())["tests"]
    return tests


def test_each_sli_is_recorded_as_a_ratio_and_a_burn_rate_over_every_window(rules: list[dict[str, Any]]) -> None:
    recorded = {rule["record"] for rule in rules if "record" in rule}
    expected = {f"{sli}:{kind}{window}" for sli in SLIS for kind in ("ratio_rate", "burnrate") for window in WINDOWS}
    assert recorded == expected


def test_a_burn_rate_divides_its_own_window_by_one_budget_per_sli(rules: list[dict[str, Any]]) -> None:
    budgets: dict[str, set[str]] = {sli: set() for sli in SLIS}
    for rule in rules:
        name = rule.get("record", "")
        if ":burnrate" not in name:
            continue
        sli, window = name.rsplit(":burnrate", 1)
        match = re.fullmatch(rf"{re.escape(sli)}:ratio_rate{window} / (0\.\d+)", rule["expr"].strip())
        assert match, f"{name}: {rule['expr']}"
        budgets[sli].add(match.group(1))
    # REST 99.9%, delivery 99%.
    assert budgets == {"slo:petstore_http_errors": {"0.001"}, "slo:petstore_event_delivery_slow": {"0.01"}}


def test_the_delivery_sli_counts_the_one_second_bucket(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        if rule.get("record", "").startswith("slo:petstore_event_delivery_slow:ratio_rate"):
            assert 'petstore_event_delivery_lag_seconds_bucket{le=~"1(\\\\.0)?"}' in rule["expr"], rule["record"]


def test_burn_rate_alerts_pair_a_long_and_a_short_window_at_the_workbook_rates(
    alerts: dict[str, dict[str, Any]],
) -> None:
    for sli, prefix in ALERT_PREFIXES.items():
        for suffix, long, short, rate, severity in BURN_ALERTS:
            rule = alerts[prefix + suffix]
            expected = f"{sli}:burnrate{long} > {rate:g}\nand\n{sli}:burnrate{short} > {rate:g}"
            assert rule["expr"].strip() == expected, prefix + suffix
            assert rule["labels"]["severity"] == severity, prefix + suffix
            assert "for" not in rule, f"{prefix + suffix}: the short window is the debounce"


def test_every_alert_has_summary_description_severity_and_a_runbook_that_exists(
    alerts: dict[str, dict[str, Any]],
) -> None:
    anchors = markdown_anchors(RUNBOOKS)
    assert set(alerts) == {prefix + suffix for prefix in ALERT_PREFIXES.values() for suffix, *_ in BURN_ALERTS} | {
        "PetstoreDeliveryStalled"
    }
    for name, rule in alerts.items():
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert len(annotations["description"]) >= 100, f"{name}: the description should tell what is wrong"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert annotations["runbook_url"] == f"docs/runbooks.md#{name.lower()}", name
        assert name.lower() in anchors, f"{name}: no heading {name!r} in docs/runbooks.md"


def test_rules_query_only_spec_metrics_and_recorded_series(rules: list[dict[str, Any]]) -> None:
    recorded = recorded_series()
    for rule in rules:
        name = rule.get("record") or rule["alert"]
        for series in petstore_names(rule["expr"]):
            assert base_metric(series) in METRICS, f"{name}: {series} is not a SPEC §5 metric"
        for series, _ in selectors(rule["expr"]):
            assert base_metric(series) in METRICS or series in recorded, f"{name}: unknown series {series}"


def test_every_alert_is_unit_tested_firing_quiet_and_in_a_harmless_scenario(
    alerts: dict[str, dict[str, Any]], unit_tests: list[dict[str, Any]]
) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    harmless: set[str] = set()
    for test in unit_tests:
        cases = test.get("alert_rule_test", [])
        for case in cases:
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
        if all(not case.get("exp_alerts") for case in cases):
            harmless |= {case["alertname"] for case in cases}
    assert fires == set(alerts), f"never shown firing: {set(alerts) - fires}"
    assert quiet == set(alerts), f"never shown quiet: {set(alerts) - quiet}"
    assert harmless == set(alerts), f"no harmless scenario for {set(alerts) - harmless}"


def test_every_recording_rule_is_unit_tested(rules: list[dict[str, Any]], unit_tests: list[dict[str, Any]]) -> None:
    tested = " ".join(case["expr"] for test in unit_tests for case in test.get("promql_expr_test", []))
    untested = {rule["record"] for rule in rules if "record" in rule and not re.search(rf"{rule['record']}\b", tested)}
    assert not untested


def test_prometheus_loads_the_slo_rules() -> None:
    config = yaml.safe_load((REPO / "prometheus.yml").read_text())
    assert "prometheus/slo.yml" in config["rule_files"]
