"""The Grafana dashboards and provisioning are well-formed and speak only the metric names of SPEC §5.

What a broken dashboard looks like in Grafana (a panel silently showing "No data", a panel
bound to a datasource that does not exist elsewhere, two panels fighting for one id) is
checked here on the JSON, without Grafana. Whether each query really returns data from a real
server is `test_dashboard_queries.py`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.contract import (
    DASHBOARDS_DIR,
    METRICS,
    REPO,
    SCRAPE_SERIES,
    all_panels,
    base_metric,
    data_panels,
    load_dashboards,
    petstore_names,
    recorded_series,
    selectors,
    substitute,
)

DATASOURCE_REF = "${datasource}"
ROWS = ["Overview", "SLOs & error budgets", "REST by route", "WebSocket", "Events & broker", "Plugins", "Business"]
# Sample values for the dashboard's variables and Grafana's built-in ones, so promtool can parse
# each query as Prometheus will receive it.
SAMPLE_VARIABLES = {"job": "petstore", "instance": ".*", "__rate_interval": "1m", "__range": "1h"}


@pytest.fixture(scope="module")
def dashboards() -> dict[Path, dict[str, Any]]:
    found = load_dashboards()
    assert found, f"no dashboard JSON in {DASHBOARDS_DIR}"
    return found


@pytest.fixture(scope="module")
def petstore_dashboard(dashboards: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    return dashboards[DASHBOARDS_DIR / "petstore.json"]


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in data_panels(dashboard) for target in panel.get("targets", [])]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


# ---------------------------------------------------------------------------------- identity


def test_dashboard_uids_are_present_and_unique(dashboards: dict[Path, dict[str, Any]]) -> None:
    uids = [dashboard.get("uid") for dashboard in dashboards.values()]
    assert all(isinstance(uid, str) and re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid) for uid in uids), uids
    assert len(uids) == len(set(uids)), uids


def test_panel_ids_are_unique_positive_integers(dashboards: dict[Path, dict[str, Any]]) -> None:
    for path, dashboard in dashboards.items():
        ids = [panel.get("id") for panel in all_panels(dashboard)]
        assert all(isinstance(panel_id, int) and panel_id > 0 for panel_id in ids), (path.name, ids)
        duplicates = sorted({panel_id for panel_id in ids if ids.count(panel_id) > 1})
        assert not duplicates, f"{path.name}: duplicate panel ids {duplicates}"


def test_panels_do_not_overlap_on_the_grid(dashboards: dict[Path, dict[str, Any]]) -> None:
    for path, dashboard in dashboards.items():
        taken: dict[tuple[int, int], str] = {}
        for panel in all_panels(dashboard):
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (path.name, panel["title"], pos)
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in taken, f"{path.name}: {panel['title']!r} overlaps {taken[(x, y)]!r}"
                    taken[(x, y)] = panel["title"]


def test_provisioned_datasource_uids_are_unique() -> None:
    uids = []
    for path in sorted((REPO / "grafana" / "provisioning" / "datasources").glob("*.yml")):
        uids += [source["uid"] for source in yaml.safe_load(path.read_text())["datasources"]]
    assert uids
    assert len(uids) == len(set(uids)), uids


# -------------------------------------------------------------------------------- datasource


def test_the_dashboard_has_datasource_job_and_instance_variables(petstore_dashboard: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in petstore_dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    assert variables["instance"]["type"] == "query"
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    # The instance list follows the job picked.
    assert '{job=~"$job"}' in variables["instance"]["query"]["query"]


def test_every_panel_target_and_variable_uses_the_datasource_variable(
    dashboards: dict[Path, dict[str, Any]],
) -> None:
    for path, dashboard in dashboards.items():
        for panel in data_panels(dashboard):
            assert panel.get("datasource", {}).get("uid") == DATASOURCE_REF, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                assert target.get("datasource", {}).get("uid") == DATASOURCE_REF, (path.name, panel["title"])
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == DATASOURCE_REF, (path.name, variable["name"])


def test_no_hard_coded_datasource_uid_anywhere(dashboards: dict[Path, dict[str, Any]]) -> None:
    provisioned = [
        source["uid"]
        for path in (REPO / "grafana" / "provisioning" / "datasources").glob("*.yml")
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    for path in dashboards:
        text = path.read_text()
        for uid in provisioned:
            assert f'"uid": "{uid}"' not in text, f"{path.name} names datasource {uid!r} instead of ${{datasource}}"


# ------------------------------------------------------------------------ what an SRE reads


def test_rows_cover_the_areas_in_order(petstore_dashboard: dict[str, Any]) -> None:
    rows = [panel["title"] for panel in petstore_dashboard["panels"] if panel["type"] == "row"]
    assert rows == ROWS


def test_every_panel_has_a_description_a_unit_and_thresholds(dashboards: dict[Path, dict[str, Any]]) -> None:
    for path, dashboard in dashboards.items():
        for panel in data_panels(dashboard):
            where = (path.name, panel["title"])
            assert len(panel.get("description", "")) >= 60, f"{where}: description too short to explain the panel"
            defaults = panel["fieldConfig"]["defaults"]
            assert defaults.get("unit"), f"{where}: no unit"
            steps = defaults.get("thresholds", {}).get("steps", [])
            assert steps and steps[0]["value"] is None, f"{where}: thresholds need a base step"
            values = [step["value"] for step in steps[1:]]
            assert values == sorted(values), f"{where}: threshold steps out of order"


def test_every_target_has_a_query_a_legend_and_its_own_ref_id(dashboards: dict[Path, dict[str, Any]]) -> None:
    for path, dashboard in dashboards.items():
        for panel in data_panels(dashboard):
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["expr"].strip(), (path.name, panel["title"])
                assert target.get("legendFormat"), (path.name, panel["title"])


# ------------------------------------------------------------------------------ the queries


def test_every_metric_named_is_a_spec_metric_or_a_recorded_series(dashboards: dict[Path, dict[str, Any]]) -> None:
    known = SCRAPE_SERIES | recorded_series()
    for path, dashboard in dashboards.items():
        exprs = [target["expr"] for _, target in targets(dashboard)] + variable_queries(dashboard)
        for expr in exprs:
            for name in petstore_names(expr):
                assert base_metric(name) in METRICS, f"{path.name}: {name} is not a SPEC §5 metric ({expr})"
            for name, _ in selectors(expr):
                assert base_metric(name) in METRICS or name in known, f"{path.name}: unknown series {name}"


def test_the_slo_row_shows_budget_left_and_the_alerts_burn_rates_for_both_slos(
    petstore_dashboard: dict[str, Any],
) -> None:
    panels = petstore_dashboard["panels"]
    start = next(index for index, panel in enumerate(panels) if panel["title"] == "SLOs & error budgets")
    end = next(index for index, panel in enumerate(panels[start + 1 :], start + 1) if panel["type"] == "row")
    exprs = " ".join(target["expr"] for panel in panels[start + 1 : end] for target in panel["targets"])
    for sli in ("slo:petstore_http_errors", "slo:petstore_event_delivery_slow"):
        assert f"1 - {sli}:burnrate30d" in exprs, sli
        for window in ("5m", "30m", "1h", "6h", "3d"):
            assert f"{sli}:burnrate{window}{{" in exprs, (sli, window)


def test_every_spec_metric_is_on_the_dashboard(petstore_dashboard: dict[str, Any]) -> None:
    shown = {base_metric(name) for _, target in targets(petstore_dashboard) for name in petstore_names(target["expr"])}
    assert set(METRICS) - shown == set()


def test_every_selector_follows_the_job_and_instance_variables(dashboards: dict[Path, dict[str, Any]]) -> None:
    """Recorded SLO series are per job (an SLO is the whole service's): they follow the job variable only."""
    recorded = recorded_series()
    for path, dashboard in dashboards.items():
        for panel, target in targets(dashboard):
            for name, matchers in selectors(target["expr"]):
                wanted = ['job=~"$job"'] if name in recorded else ['job=~"$job"', 'instance=~"$instance"']
                assert all(matcher in matchers for matcher in wanted), (
                    f"{path.name} {panel['title']!r}: {name} ignores the job/instance variables"
                )


def test_rate_windows_use_grafana_rate_interval_or_an_alert_window(dashboards: dict[Path, dict[str, Any]]) -> None:
    """Hard-coded windows are only the alerts' own (5m, 10m), so the panel shows what the alert sees."""
    for path, dashboard in dashboards.items():
        for panel, target in targets(dashboard):
            for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
                assert window in {"$__rate_interval", "$__range", "5m", "10m"}, (path.name, panel["title"], window)


def test_grouping_labels_exist_on_the_metrics_queried(dashboards: dict[Path, dict[str, Any]]) -> None:
    for path, dashboard in dashboards.items():
        for panel, target in targets(dashboard):
            expr = target["expr"]
            labels = {"job", "instance", "le"}
            for name in petstore_names(expr):
                labels |= METRICS[base_metric(name)][1]
            # label_replace(v, "dst", "replacement", "src", "regex") adds "dst".
            labels |= set(re.findall(r'"(\w+)",\s*"[^"]*",\s*"\w+",\s*"[^"]*"\s*\)', expr))
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
                for label in filter(None, (part.strip() for part in group.split(","))):
                    assert label in labels, f"{path.name} {panel['title']!r}: no label {label!r} on {expr}"


@pytest.mark.process
def test_every_query_parses_as_promql(dashboards: dict[Path, dict[str, Any]], tmp_path: Path) -> None:
    """promtool parses each query, variables given sample values, as a recording rule."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian package prometheus): run scripts/test"
    rules = []
    for dashboard in dashboards.values():
        for _, target in targets(dashboard):
            expr = substitute(target["expr"], SAMPLE_VARIABLES)
            rules.append({"record": f"dashboard:query:{len(rules)}", "expr": expr})
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# ------------------------------------------------------------------------------ provisioning


def test_dashboard_provider_loads_the_dashboards_folder_into_a_folder() -> None:
    providers = yaml.safe_load((REPO / "grafana" / "provisioning" / "dashboards" / "petstore.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["folder"]
    assert provider["options"]["path"].startswith("/")


def test_datasource_is_the_default_prometheus() -> None:
    sources = yaml.safe_load((REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    assert source["url"].startswith("http://")
