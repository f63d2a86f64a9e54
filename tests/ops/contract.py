"""What the operations files are checked against: SPEC §1 and §5 as data, and PromQL helpers.

The lists are copied from SPEC.md (the public contract) rather than parsed from it at test
time, so a change of the contract is a deliberate edit here, seen in review beside the
dashboards and alerts it affects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]

# SPEC §5: metric name -> (type, labels).
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "petstore_http_requests_total": ("counter", frozenset({"method", "route", "status"})),
    "petstore_http_request_duration_seconds": ("histogram", frozenset({"method", "route"})),
    "petstore_http_requests_in_progress": ("gauge", frozenset({"method"})),
    "petstore_ws_connections": ("gauge", frozenset()),
    "petstore_ws_disconnects_total": ("counter", frozenset({"code"})),
    "petstore_ws_subscriptions": ("gauge", frozenset({"room_kind"})),
    "petstore_ws_messages_sent_total": ("counter", frozenset({"room_kind"})),
    "petstore_ws_messages_received_total": ("counter", frozenset({"type"})),
    "petstore_ws_slow_consumer_disconnects_total": ("counter", frozenset()),
    "petstore_events_published_total": ("counter", frozenset({"event"})),
    "petstore_event_delivery_lag_seconds": ("histogram", frozenset()),
    "petstore_broker_reconnects_total": ("counter", frozenset()),
    "petstore_broker_connected": ("gauge", frozenset()),
    "petstore_outbox_pending": ("gauge", frozenset()),
    "petstore_ratelimit_rejections_total": ("counter", frozenset({"scope"})),
    "petstore_ratelimit_backend_errors_total": ("counter", frozenset()),
    "petstore_auth_failures_total": ("counter", frozenset({"reason"})),
    "petstore_inventory_pets": ("gauge", frozenset({"status"})),
}

# Series Prometheus itself attaches to every scrape target; not part of the app's contract.
SCRAPE_SERIES = frozenset({"up"})

# SPEC §1: the environment variables petstore reads.
ENV_VARS = frozenset(
    {
        "PETSTORE_DATABASE_URL",
        "PETSTORE_REDIS_URL",
        "PETSTORE_JWT_SECRET",
        "PETSTORE_PLUGINS",
        "PETSTORE_ALLOWED_ORIGINS",
        "PETSTORE_RATE_LIMIT",
        "PETSTORE_ENV",
    }
)

# The alerts issue 5 asks for, by the name their runbook headings use.
ALERTS = (
    "PetstoreInstanceDown",
    "PetstoreHighErrorRatio",
    "PetstoreHighLatencyP95",
    "PetstoreWebSocketSlowConsumerSpike",
    "PetstoreBrokerReconnectStorm",
    "PetstoreOutboxBacklogGrowing",
    "PetstoreRateLimiterFailingOpen",
    "PetstoreAuthFailureSpike",
)

DASHBOARDS_DIR = REPO / "grafana" / "dashboards"
PROMETHEUS_CONFIG = REPO / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "alertmanager.yml"
RUNBOOKS = REPO / "docs" / "runbooks.md"

# A metric selector: a name directly followed by `{` (matchers) or `[` (range). Function names
# are followed by `(`, label names by `=`, so neither is taken for a metric.
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\}|\[)")
# Not inside a recorded series' name (`slo:petstore_http_errors:ratio_rate5m`), which is no metric.
_PETSTORE_NAME = re.compile(r"(?<![\w:])petstore_[a-zA-Z0-9_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf"}
)


def base_metric(series_name: str) -> str:
    """The SPEC §5 name behind a series name: `x_bucket` of histogram `x` is `x`; anything else unchanged."""
    for suffix in _HISTOGRAM_SUFFIXES:
        stem = series_name.removesuffix(suffix)
        if stem != series_name and METRICS.get(stem, ("", frozenset()))[0] == "histogram":
            return stem
    return series_name


def petstore_names(expr: str) -> set[str]:
    """Every `petstore_*` series name written in a PromQL expression, as written."""
    return set(_PETSTORE_NAME.findall(expr))


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matcher text) of every vector selector in `expr` that has matchers or a range."""
    found = []
    for match in _SELECTOR.finditer(expr):
        name = match.group(1)
        start = match.start(1)
        if start > 0 and (expr[start - 1] in "$\"'" or expr[start - 1].isalnum()):
            continue  # inside a string or a variable such as ${1}
        if name in _PROMQL_WORDS:
            continue
        matchers = match.group(2) if match.group(2).startswith("{") else ""
        found.append((name, matchers))
    return found


def load_dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, also the ones nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def data_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The panels that query something (everything but rows)."""
    return (panel for panel in all_panels(dashboard) if panel.get("type") != "row")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables (`$name`, `${name}`) by `values`, leaving other `$` text (e.g. `${1}`) alone."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def rule_files() -> list[Path]:
    """The rule files prometheus.yml loads, resolved against its directory as Prometheus does."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return [PROMETHEUS_CONFIG.parent / name for name in config["rule_files"]]


def load_rules(path: Path | None = None) -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of one rule file, or of all that prometheus.yml loads."""
    paths = [path] if path is not None else rule_files()
    return [rule for each in paths for group in yaml.safe_load(each.read_text())["groups"] for rule in group["rules"]]


def recorded_series() -> frozenset[str]:
    """The series the recording rules write: queried by alerts and panels like metrics."""
    return frozenset(rule["record"] for rule in load_rules() if "record" in rule)


def markdown_anchor(heading: str) -> str:
    """The anchor GitHub and MkDocs give a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def markdown_anchors(path: Path) -> set[str]:
    return {markdown_anchor(heading) for heading in re.findall(r"^#{1,6} (.+)$", path.read_text(), flags=re.MULTILINE)}
