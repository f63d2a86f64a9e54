"""Every query of the Grafana dashboard returns data from a real Prometheus scraping a real petstore.

The stack: real Redis, petstore served by its own CLI (`petstore serve`, as the container runs
it) with the default plugins, and Debian's Prometheus with the repository's scrape job and
alert rules, scraping every second. Generated traffic touches every metric of SPEC §5: REST
(successes, 4xx, a refused token, a rate-limited login), WebSocket (subscriptions to every
room kind, pings, a bad message, a closed connection) and events (pets, orders). It runs in
two rounds with a scrape in between, so counters created in the first round have increased by
the second and every `rate()` has something to show.

Then each panel query, variables substituted as Grafana would, goes through Prometheus' HTTP
API: it must parse, and it must return at least one series with a number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection, connect

from tests.ops.contract import (
    METRICS,
    REPO,
    base_metric,
    data_panels,
    load_dashboards,
    load_rules,
    petstore_names,
    rule_files,
    substitute,
)
from tests.services import PrometheusServer, RedisServer, UvicornServer, wait_until
from tests.services.base import HOST

pytestmark = [pytest.mark.prometheus, pytest.mark.redis]

PETSTORE = str(Path(sys.executable).with_name("petstore"))
SERVE_COMMAND = (PETSTORE, "serve", "--host", "{host}", "--port", "{port}")
STAFF = ("ops-staff", "ops-staff-password-1")
CUSTOMER = ("ops-customer", "ops-customer-password-1")
DEADLINE = 20.0  # seconds for anything the server or Prometheus should do "soon"


def panel_targets() -> list[tuple[str, str, str]]:
    """(test id, panel title, expression) of every target of every dashboard."""
    found = []
    for path, dashboard in load_dashboards().items():
        for panel in data_panels(dashboard):
            for target in panel["targets"]:
                slug = re.sub(r"\W+", "-", panel["title"].lower()).strip("-")
                test_id = f"{path.stem}-{panel['id']}{target['refId']}-{slug}"
                found.append((test_id, panel["title"], target["expr"]))
    return found


@dataclass
class Stack:
    prometheus: PrometheusServer
    petstore: UvicornServer
    started: float
    variables: dict[str, str] = field(default_factory=dict)

    def window(self) -> str:
        """A range that covers all the traffic, standing in for $__rate_interval and $__range."""
        return f"{int(time.time() - self.started) + 15}s"


# ----------------------------------------------------------------------------------- traffic


def messages(frame: str | bytes) -> list[dict[str, Any]]:
    """A server frame holds one message or a JSON array of them (SPEC §3)."""
    decoded = json.loads(frame)
    return decoded if isinstance(decoded, list) else [decoded]


class Subscriber:
    """A WebSocket client that remembers every message it was sent."""

    def __init__(self, url: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        # websockets wants its connections opened as context managers; this object is one.
        self._exit = contextlib.ExitStack()
        self.connection: ClientConnection = self._exit.enter_context(
            connect(f"{url}/ws", additional_headers=headers, open_timeout=DEADLINE)
        )
        self.seen: list[dict[str, Any]] = []
        try:
            self.expect(lambda message: message["type"] == "welcome", "welcome")
        except BaseException:
            self.close()
            raise

    def send(self, message: dict[str, Any]) -> None:
        self.connection.send(json.dumps(message))

    def expect(self, wanted: Any, what: str) -> dict[str, Any]:
        """Read until a message satisfies `wanted`; fail after DEADLINE seconds."""
        deadline = time.monotonic() + DEADLINE
        for message in self.seen:
            if wanted(message):
                self.seen.remove(message)
                return message
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} on the WebSocket within {DEADLINE}s; got {self.seen[-5:]}")
            batch = messages(self.connection.recv(timeout=remaining))
            for index, message in enumerate(batch):
                if wanted(message):
                    self.seen.extend(batch[index + 1 :])
                    return message
            self.seen.extend(batch)

    def subscribe(self, room: str, request_id: int) -> None:
        self.send({"type": "subscribe", "room": room, "id": request_id})
        reply = self.expect(lambda m: m.get("id") == request_id and m["type"] in {"subscribed", "error"}, room)
        assert reply["type"] == "subscribed", reply

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Traffic:
    """REST and WebSocket traffic that makes every SPEC §5 metric move."""

    def __init__(self, url: str, ws_url: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/api/v3", timeout=DEADLINE)
        self.ws_url = ws_url
        self.staff_ws: Subscriber | None = None
        try:
            self.staff_token = self.login(*STAFF)
            self.signup(*CUSTOMER)
            self.customer_token = self.login(*CUSTOMER)
            self.staff_ws = Subscriber(ws_url, self.staff_token)
            for request_id, room in enumerate(["inventory", "pets", "orders", f"user:{STAFF[0]}"], start=1):
                self.staff_ws.subscribe(room, request_id)
        except BaseException:
            self.close()  # the fixture never gets an object to close
            raise

    @property
    def staff(self) -> Subscriber:
        assert self.staff_ws is not None
        return self.staff_ws

    def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.request(method, path, headers=headers, **kwargs)

    def login(self, username: str, password: str) -> str:
        response = self.request("POST", "/auth/token", data={"username": username, "password": password})
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    def signup(self, username: str, password: str) -> None:
        user = {"username": username, "password": password, "email": f"{username}@example.test", "firstName": "Ops"}
        response = self.request("POST", "/user", json=user)
        assert response.status_code in {200, 201}, response.text

    def round(self, number: int) -> None:
        staff, customer = self.staff_token, self.customer_token
        # Pets: created, read, searched, changed; the events reach the subscribed staff socket.
        created = self.request(
            "POST", "/pet", staff, json={"name": f"Rex {number}", "photoUrls": [], "status": "available"}
        )
        assert created.status_code in {200, 201}, created.text
        pet_id = created.json()["id"]
        self.staff.expect(lambda m: m.get("event") == "pet.created", "pet.created event")
        # An anonymous watcher of this pet, whose connection then closes (a disconnect code).
        with Subscriber(self.ws_url) as pet_watcher:
            pet_watcher.subscribe(f"pet:{pet_id}", 1)
            assert self.request("GET", f"/pet/{pet_id}").status_code == 200
            assert self.request("GET", "/pet/findByStatus", params={"status": "available"}).status_code == 200
            assert self.request("GET", "/store/inventory").status_code == 200
            changed = dict(created.json(), name=f"Rex {number} the second")
            assert self.request("PUT", "/pet", staff, json=changed).status_code == 200
            pet_watcher.expect(lambda m: m.get("event") == "pet.updated", "pet.updated event")
        # Orders: placed by a customer, seen by staff, then deleted by the customer.
        order = self.request(
            "POST", "/store/order", customer, json={"petId": pet_id, "quantity": 1, "status": "placed"}
        )
        assert order.status_code in {200, 201}, order.text
        self.staff.expect(lambda m: m.get("event") == "order.placed", "order.placed event")
        self.staff.expect(lambda m: m.get("event") == "inventory.changed", "inventory.changed event")
        order_id = order.json()["id"]
        assert self.request("GET", f"/store/order/{order_id}", customer).status_code == 200
        assert self.request("DELETE", f"/store/order/{order_id}", customer).status_code in {200, 204}
        # Client mistakes: unknown ids, bad input, a forged token.
        assert self.request("GET", "/pet/987654321").status_code == 404
        assert self.request("POST", "/pet", staff, json={"photoUrls": "not a list"}).status_code in {400, 422}
        assert self.request("DELETE", f"/pet/{pet_id}", "not-a-token").status_code == 401
        # WebSocket: ping, and a bad message answered with an error.
        self.staff.send({"type": "ping", "id": 100 + number})
        self.staff.expect(lambda m: m["type"] == "pong", "pong")
        self.staff.send({"type": "no-such-type", "id": 200 + number})
        self.staff.expect(lambda m: m["type"] == "error", "error for a bad message")
        # A rate-limited login: wrong passwords until the strict login limit answers 429.
        self.wrong_logins_until_limited()

    def wrong_logins_until_limited(self) -> None:
        for _ in range(200):
            response = self.request("POST", "/auth/token", data={"username": "ops-guesser", "password": "wrong"})
            if response.status_code == 429:
                return
            assert response.status_code in {400, 401}, response.text
        raise AssertionError("200 wrong logins in a row were never rate limited")

    def close(self) -> None:
        if self.staff_ws is not None:
            self.staff_ws.close()
        self.http.close()


# ------------------------------------------------------------------------------------- stack


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> None:
    result = subprocess.run(
        [PETSTORE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"petstore {args[0]} failed:\n{result.stdout}\n{result.stderr}"


def prometheus_config(target: str) -> str:
    """The repository's prometheus.yml, scraping `target` every second, with its rules beside it.

    No Alertmanager: the alerts are evaluated, not sent.
    """
    config = yaml.safe_load((REPO / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [path.name for path in rule_files()]
    config.pop("alerting", None)
    (job,) = config["scrape_configs"]
    job.pop("file_sd_configs", None)
    job["static_configs"] = [{"targets": [target]}]
    return yaml.safe_dump(config)


def caught_up(prometheus: PrometheusServer, petstore: UvicornServer) -> bool:
    """Has Prometheus scraped every petstore counter at least at the value the server shows now?

    Requests to /metrics are left out: each look (ours, Prometheus') adds one, so that count is
    always ahead of the last scrape.
    """
    text = httpx.get(f"{petstore.url}/metrics", timeout=DEADLINE).text
    for family in text_string_to_metric_families(text):
        if family.type != "counter" or not family.name.startswith("petstore_"):
            continue
        served = sum(
            sample.value
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("route") != "/metrics"
        )
        scraped = prometheus.query(f'sum({family.name}_total{{job="petstore", route!="/metrics"}})')
        if served and (not scraped or float(scraped[0]["value"][1]) < served):
            return False
    return True


def rules_evaluated_since(prometheus: PrometheusServer, moment: float) -> bool:
    """Has every rule group been evaluated after `moment` (so recorded series include what came before)?"""
    groups = prometheus.api("rules")["groups"]
    return bool(groups) and all(evaluated_at(group["lastEvaluation"]) > moment for group in groups)


def evaluated_at(rfc3339: str) -> float:
    """Prometheus' RFC 3339 time (nanoseconds, `Z`) as a POSIX timestamp; Go's zero time is long ago."""
    whole, _, fraction = rfc3339.removesuffix("Z").partition(".")
    stamp = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return stamp + float(f"0.{fraction or 0}")


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    workdir = tmp_path_factory.mktemp("ops-stack")
    env = {
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'petstore.db'}",
        "PETSTORE_REDIS_URL": redis_server.url,
        "PETSTORE_JWT_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
    }
    # The CLI sees what the server sees, and nothing of the developer's own PETSTORE_* settings.
    cli_env = {key: value for key, value in os.environ.items() if not key.startswith("PETSTORE_")}
    cli_env.update(env)
    run_cli(cli_env, workdir, "migrate")
    run_cli(cli_env, workdir, "users", "create", STAFF[0], "--password", STAFF[1], "--role", "staff")

    with UvicornServer(env=env, command=SERVE_COMMAND, cwd=workdir) as petstore:
        config = prometheus_config(f"{HOST}:{petstore.port}")
        rules = {path.name: path.read_text() for path in rule_files()}
        with PrometheusServer(config, files=rules, binary=prometheus_bin) as prometheus:
            started = time.time()
            wait_until(lambda: prometheus.query('up{job="petstore"} == 1'), DEADLINE, "the first successful scrape")
            traffic = Traffic(petstore.url, petstore.ws_url)
            try:
                # Each round ends once Prometheus holds every counter at the value the server
                # shows, so every series has samples before and after round 2 for rate().
                traffic.round(1)
                wait_until(lambda: caught_up(prometheus, petstore), DEADLINE, "a scrape of round 1", interval=0.5)
                traffic.round(2)
                wait_until(lambda: caught_up(prometheus, petstore), DEADLINE, "a scrape of round 2", interval=0.5)
                scraped = time.time()
                wait_until(lambda: rules_evaluated_since(prometheus, scraped), DEADLINE, "the rules on round 2")
                # The staff socket stays open during the queries: live gauges have a live value.
                stack = Stack(prometheus, petstore, started)
                stack.variables = resolve_variables(stack)
                yield stack
            finally:
                traffic.close()


def resolve_variables(stack: Stack) -> dict[str, str]:
    """The values Grafana would give the dashboard's variables, asked from Prometheus the way Grafana does."""
    dashboard = load_dashboards()[REPO / "grafana" / "dashboards" / "petstore.json"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    jobs = stack.prometheus.api("label/job/values", **{"match[]": "petstore_http_requests_total"})
    assert jobs == ["petstore"], jobs
    instances = stack.prometheus.api(
        "label/instance/values", **{"match[]": 'petstore_http_requests_total{job=~"petstore"}'}
    )
    assert instances == [f"{HOST}:{stack.petstore.port}"], instances
    window = stack.window()
    return {
        "job": jobs[0],
        # "All" instances, which the dashboard renders as its allValue.
        "instance": variables["instance"].get("allValue") or "(" + "|".join(instances) + ")",
        "__rate_interval": window,
        "__range": window,
    }


# ------------------------------------------------------------------------------------- tests


def test_metrics_endpoint_serves_every_spec_metric_with_its_type_and_labels(stack: Stack) -> None:
    response = httpx.get(f"{stack.petstore.url}/metrics", timeout=DEADLINE)
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    for name, (kind, labels) in METRICS.items():
        family = families.get(name.removesuffix("_total") if kind == "counter" else name)
        assert family is not None, f"/metrics does not serve {name}"
        assert family.type == kind, f"{name} is a {family.type}, SPEC §5 says {kind}"
        for sample in family.samples:
            served = set(sample.labels) - {"le", "pid"}
            assert served == labels, f"{sample.name} has labels {sorted(served)}, SPEC §5 says {sorted(labels)}"


def test_every_metric_the_dashboards_and_alerts_name_is_served(stack: Stack) -> None:
    response = httpx.get(f"{stack.petstore.url}/metrics", timeout=DEADLINE)
    served = {sample.name for family in text_string_to_metric_families(response.text) for sample in family.samples}
    named: set[str] = set()
    for dashboard in load_dashboards().values():
        for panel in data_panels(dashboard):
            for target in panel["targets"]:
                named |= petstore_names(target["expr"])
    for rule in load_rules():
        named |= petstore_names(rule["expr"])
    for name in sorted(named):
        assert name in served or base_metric(name) + "_bucket" in served, f"{name} is not in /metrics"


def test_the_variables_resolve_to_the_scraped_job_and_instance(stack: Stack) -> None:
    assert stack.variables["job"] == "petstore"
    assert stack.variables["instance"]


@pytest.mark.parametrize(
    ("title", "expr"), [pytest.param(title, expr, id=test_id) for test_id, title, expr in panel_targets()]
)
def test_panel_query_returns_data(stack: Stack, title: str, expr: str) -> None:
    query = substitute(expr, stack.variables)
    assert "$" not in query.replace("${1}", ""), f"unsubstituted variable in {query}"
    result = stack.prometheus.query(query)  # raises ServiceError with Prometheus' message if invalid
    assert result, f"{title!r}: no series for {query}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(value) for value in values), f"{title!r}: only NaN/Inf for {query}: {values}"


def test_alert_rules_load_and_evaluate_without_errors(stack: Stack) -> None:
    def evaluated() -> list[dict[str, Any]]:
        rules = [rule for group in stack.prometheus.api("rules")["groups"] for rule in group["rules"]]
        # Never evaluated yet shows as Go's zero time.
        done = rules and all(not rule.get("lastEvaluation", "0001").startswith("0001") for rule in rules)
        return rules if done else []

    rules = wait_until(evaluated, DEADLINE, "every alert rule to be evaluated")
    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} == {
        rule["alert"] for rule in load_rules() if "alert" in rule
    }
    assert {rule["name"] for rule in rules if rule["type"] == "recording"} == {
        rule["record"] for rule in load_rules() if "record" in rule
    }
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
