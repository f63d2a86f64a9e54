"""alertmanager.yml: Debian's amtool accepts it, every alert rule routes by its severity, and a real
Alertmanager holds back the symptoms of PetstoreInstanceDown while it fires."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any, Self

import pytest
import yaml

from tests.ops.contract import ALERTMANAGER_CONFIG, PROMETHEUS_CONFIG, REPO, load_rules
from tests.services.base import HOST, START_TIMEOUT, Service, http_get, require_binary, wait_until

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process

RECEIVER_OF_SEVERITY = {"critical": "page", "warning": "ticket"}
DEADLINE = 20.0


@pytest.fixture(scope="module")
def amtool() -> str:
    path = shutil.which("amtool")
    assert path, "amtool is not installed (Debian package prometheus-alertmanager): run scripts/test"
    return path


def run(amtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([amtool, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=60)


def route(amtool: str, labels: dict[str, str]) -> str:
    """The receiver(s) amtool resolves for an alert with `labels`, as it prints them."""
    pairs = [f"{name}={value}" for name, value in labels.items()]
    result = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG.name}", *pairs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_amtool_check_config_accepts_the_configuration(amtool: str) -> None:
    result = run(amtool, "check-config", ALERTMANAGER_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert " - 2 inhibit rules" in result.stdout
    assert " - 2 receivers" in result.stdout


def test_a_page_routes_to_the_page_receiver_and_a_ticket_to_the_ticket_receiver(amtool: str) -> None:
    assert route(amtool, {"alertname": "PetstoreInstanceDown", "severity": "critical"}) == "page"
    assert route(amtool, {"alertname": "PetstoreHighLatencyP95", "severity": "warning"}) == "ticket"
    # An alert someone forgot to give a severity is still seen, as a ticket.
    assert route(amtool, {"alertname": "SomethingNew"}) == "ticket"


def test_every_alert_rule_routes_by_its_severity(amtool: str) -> None:
    alerts = [rule for rule in load_rules() if "alert" in rule]
    assert len(alerts) >= 15
    for rule in alerts:
        labels = {"alertname": rule["alert"], "job": "petstore", "instance": "petstore-1:8000", **rule["labels"]}
        assert route(amtool, labels) == RECEIVER_OF_SEVERITY[rule["labels"]["severity"]], rule["alert"]


def test_receivers_are_loopback_placeholders_holding_no_secret() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        assert set(receiver) == {"name", "webhook_configs"}, receiver["name"]
        for webhook in receiver["webhook_configs"]:
            assert webhook["url"].startswith("http://127.0.0.1:"), receiver["name"]


def test_the_inhibited_alerts_exist_and_are_not_the_cause_itself() -> None:
    names = {rule["alert"] for rule in load_rules() if "alert" in rule}
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for rule in config["inhibit_rules"]:
        assert rule["source_matchers"] == ['alertname="PetstoreInstanceDown"']
        (matcher,) = rule["target_matchers"]
        pattern = matcher.removeprefix('alertname=~"').removesuffix('"')
        targets = {name for name in names if re.fullmatch(pattern, name)}
        assert targets, matcher
        assert "PetstoreInstanceDown" not in targets


def test_prometheus_sends_its_alerts_to_the_alertmanager() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    ((manager,),) = [config["alerting"]["alertmanagers"]]
    ((target,),) = [group["targets"] for group in manager["static_configs"]]
    assert target == "alertmanager:9093"


# ------------------------------------------------------------------- a running Alertmanager


class AlertmanagerServer(Service):
    """Debian's Alertmanager with the repository's configuration, alone (no cluster), temp storage."""

    name = "alertmanager"

    def __init__(self, binary: str = "prometheus-alertmanager") -> None:
        self.binary = require_binary(binary)
        super().__init__(None, "alertmanager")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        argv = [
            self.binary,
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--cluster.listen-address=",
        ]
        self._child.spawn(argv, cwd=self.workdir)
        self._wait_ready(self._ready, START_TIMEOUT)
        return self

    def _ready(self) -> bool:
        try:
            status, _ = http_get(f"{self.url}/-/ready", timeout=2)
        except OSError:
            return False
        return status == 200

    def post_alerts(self, alerts: list[dict[str, str]]) -> None:
        body = json.dumps([{"labels": labels} for labels in alerts]).encode()
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def alerts(self) -> list[dict[str, Any]]:
        status, body = http_get(f"{self.url}/api/v2/alerts")
        assert status == 200, body
        found: list[dict[str, Any]] = json.loads(body)
        return found


@pytest.fixture
def alertmanager() -> Iterator[AlertmanagerServer]:
    with AlertmanagerServer() as server:
        yield server


def test_instance_down_holds_back_its_symptoms_and_nothing_else(alertmanager: AlertmanagerServer) -> None:
    down = {"job": "petstore", "instance": "petstore-2:8000"}
    alertmanager.post_alerts(
        [
            {"alertname": "PetstoreInstanceDown", "severity": "critical", **down},
            # Symptoms of that instance being down: held back.
            {"alertname": "PetstoreDeliveryStalled", "severity": "critical", **down},
            {"alertname": "PetstoreRestErrorBudgetBurnFast", "severity": "critical", "job": "petstore"},
            # Another instance stalled, another job burning, a different problem: still sent.
            {"alertname": "PetstoreDeliveryStalled", "severity": "critical", "job": "petstore", "instance": "p-1"},
            {"alertname": "PetstoreRestErrorBudgetBurnFast", "severity": "critical", "job": "canary"},
            {"alertname": "PetstoreAuthFailureSpike", "severity": "warning", "job": "petstore"},
        ]
    )

    def states() -> dict[tuple[str, str, str], str]:
        return {
            (alert["labels"]["alertname"], alert["labels"]["job"], alert["labels"].get("instance", "")): alert[
                "status"
            ]["state"]
            for alert in alertmanager.alerts()
        }

    # The inhibitor learns of the cause asynchronously; once one alert shows inhibited it has, and
    # the next look shows every alert's state under that knowledge.
    wait_until(lambda: "suppressed" in states().values(), DEADLINE, "the inhibitor to see PetstoreInstanceDown")
    found = states()
    assert found == {
        ("PetstoreInstanceDown", "petstore", "petstore-2:8000"): "active",
        ("PetstoreDeliveryStalled", "petstore", "petstore-2:8000"): "suppressed",
        ("PetstoreRestErrorBudgetBurnFast", "petstore", ""): "suppressed",
        ("PetstoreDeliveryStalled", "petstore", "p-1"): "active",
        ("PetstoreRestErrorBudgetBurnFast", "canary", ""): "active",
        ("PetstoreAuthFailureSpike", "petstore", ""): "active",
    }
