"""deploy/haproxy.cfg and docker-compose.yml agree with each other and with petstore (SPEC §7).

No Docker engine runs here, so compose is kept honest statically, against the same haproxy.cfg
that the fault tests run with Debian's haproxy (tests/faults/test_instance_faults.py): the
variables the file reads are the ones compose and the tests set, its servers are compose's
instances on their ports, its health check asks a route the app serves, and what compose tells
petstore (variables, command-line flags) is what petstore reads. The last tests run the real
haproxy with this file in front of a small ASGI app that counts what reaches it, to check the
limits the file promises: retries only for idempotent requests, X-Forwarded-For, bounded
headers, slow headers timed out, JSON errors.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic_settings import BaseSettings

from petstore.app import create_app
from petstore.config import DEFAULT_PLUGINS, Settings
from tests.ops.test_compose import built_here, command_of, container_ports, dockerfile_command, petstore_servers
from tests.services import HOST, UvicornServer, free_port
from tests.services.haproxy import CONFIG, HaproxyServer

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[1]
PETSTORE = Path(sys.executable).with_name("petstore")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    return found


@pytest.fixture(scope="module")
def compose_networks() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())["networks"]
    return found


def config_lines() -> list[list[str]]:
    """haproxy.cfg as words per line, comments and blank lines dropped (quotes kept off the words)."""
    lines = []
    for raw in CONFIG.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if line:
            lines.append([word.strip('"') for word in re.findall(r"'[^']*'|\"[^\"]*\"|\S+", line)])
    return lines


def section(name: str) -> list[list[str]]:
    """The lines of one section (`backend instances`, `defaults`...), without its header."""
    found: list[list[str]] = []
    inside = False
    for words in config_lines():
        if words[0] in {"global", "defaults", "frontend", "backend", "listen", "resolvers"}:
            inside = " ".join(words) == name
            continue
        if inside:
            found.append(words)
    assert found, f"haproxy.cfg has no section {name!r}"
    return found


def variables_read() -> dict[str, str | None]:
    """Every `${NAME}` or `${NAME-default}` in the file: name -> default (None: the file needs it set)."""
    found: dict[str, str | None] = {}
    text = "\n".join(" ".join(words) for words in config_lines())  # not the comments' examples
    for name, dash, default in re.findall(r"\$\{(\w+)(-?)([^}]*)\}", text):
        found[name] = default if dash else None
    return found


def seconds(value: str) -> float:
    """An haproxy time (`500ms`, `10s`, `1h`; a bare number is milliseconds) in seconds."""
    number, unit = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1e-3}[unit]


def timeouts() -> dict[str, float]:
    return {words[1]: seconds(words[2]) for words in section("defaults") if words[0] == "timeout"}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ------------------------------------------------------------------------- compose and haproxy


def test_compose_runs_the_same_haproxy_cfg_the_tests_run(services: dict[str, dict[str, Any]]) -> None:
    haproxy = services["haproxy"]
    command = command_of(haproxy)
    config_path = command[command.index("-f") + 1]
    mounts = {target: (source, options) for source, target, *options in (v.split(":") for v in haproxy["volumes"])}
    source, options = mounts[config_path]
    assert source.startswith("./") and (REPO / source).resolve() == CONFIG
    assert options == ["ro"]


def test_haproxy_has_one_server_per_compose_instance_on_the_port_it_listens_on(
    services: dict[str, dict[str, Any]],
) -> None:
    servers = {words[1]: words[2] for words in section("backend instances") if words[0] == "server"}
    instances = petstore_servers(services)
    assert set(servers) == set(instances)
    environment = services["haproxy"]["environment"]
    for name, address in servers.items():
        variable = re.fullmatch(r"\$\{(\w+)\}", address)
        assert variable, f"server {name} must take its address from the environment, not {address}"
        command = command_of(instances[name])
        port = int(command[command.index("--port") + 1])
        assert environment[variable.group(1)] == f"{name}:{port}"
        assert port in container_ports(instances[name]), f"{name} does not expose {port}"


def test_every_variable_the_file_needs_is_set_by_compose_and_by_the_tests(
    services: dict[str, dict[str, Any]],
) -> None:
    read = variables_read()
    needed = {name for name, default in read.items() if default is None}
    compose = set(services["haproxy"]["environment"])
    tests = set(HaproxyServer([1, 2, 3]).environment())
    assert needed <= compose, needed - compose
    assert needed <= tests, needed - tests
    assert compose <= set(read), f"compose sets variables haproxy.cfg never reads: {compose - set(read)}"


def test_haproxy_publishes_the_ports_it_listens_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    haproxy = services["haproxy"]
    environment = haproxy["environment"]
    published = {int(str(mapping).rsplit(":", 1)[1]): str(mapping) for mapping in haproxy["ports"]}
    for variable in ("PETSTORE_LISTEN", "PETSTORE_STATS_LISTEN"):
        assert port_of(environment[variable]) in published, variable
    assert all(mapping.startswith("127.0.0.1:") for mapping in published.values())


def test_health_checks_ask_routes_the_app_serves(tmp_path: Path) -> None:
    checks = [words for words in section("backend instances") if words[:2] == ["http-check", "send"]]
    (send,) = checks
    readiness = send[send.index("uri") + 1]
    assert readiness == "/readyz"
    assert ["http-check", "expect", "status", "200"] in section("backend instances")
    assert all("check" in words for words in section("backend instances") if words[0] == "server")
    healthcheck = next(line for line in (REPO / "Dockerfile").read_text().splitlines() if "urlopen(" in line)
    liveness = re.search(r"http://127\.0\.0\.1:8000(/\w+)", healthcheck)
    assert liveness is not None and liveness.group(1) == "/healthz"
    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db'}", plugins=(), env="test"))
    paths = {getattr(route, "path", None) for route in app.routes}
    assert {readiness, liveness.group(1)} <= paths


def test_websocket_and_event_streams_outlive_the_heartbeat_and_slow_requests_do_not() -> None:
    heartbeat = Settings().ws_heartbeat_seconds
    limits = timeouts()
    # An idle but healthy WebSocket (a tunnel) or SSE stream (client and server timeouts) gets
    # a heartbeat before haproxy would give up on it.
    for name in ("tunnel", "client", "server"):
        assert limits[name] > heartbeat, name
    assert limits["client-fin"] <= 30 and limits["server-fin"] <= 30
    assert limits["http-request"] <= 30  # slowloris: the whole request within this


def test_haproxy_refuses_what_an_instance_would_refuse_before_the_instance_does() -> None:
    """The instances bound the HTTP layer themselves (petstore.server.uvicorn_http); haproxy's bounds are
    no looser, so a client behind it gets haproxy's answer, and nothing haproxy forwards is
    refused by an instance for its size or its pace."""
    defaults = Settings()
    tune = {words[0]: int(words[1]) for words in section("global") if words[0].startswith("tune.")}
    # The request line and headers must fit in one buffer (less the room kept for rewrites, which
    # X-Forwarded-For uses): at most the buffer reaches an instance.
    assert tune["tune.bufsize"] <= defaults.max_header_bytes
    limits = timeouts()
    # The whole request, headers and the buffered start of a body (`option http-buffer-request`).
    assert ["option", "http-buffer-request"] in section("defaults")
    assert limits["http-request"] <= defaults.header_timeout_seconds
    assert limits["http-request"] <= defaults.body_timeout_seconds


def test_headers_haproxy_lets_through_are_served_by_a_real_instance(tmp_path: Path) -> None:
    """The same agreement, run: headers as large as haproxy forwards reach petstore and are
    answered; larger ones are haproxy's 400 and never reach it."""
    from tests.server.test_shutdown import running

    with running(tmp_path) as instance, HaproxyServer([instance.port, free_port(), free_port()]) as haproxy:
        haproxy.wait_states({"petstore-1": "UP"})
        tune = {words[0]: int(words[1]) for words in section("global") if words[0].startswith("tune.")}
        # The buffer, less the room kept for rewrites and what haproxy and httpx add (HTX blocks,
        # the request line, httpx's own headers): as large as haproxy forwards, within 400 bytes.
        room = tune["tune.bufsize"] - tune["tune.maxrewrite"] - 512
        response = httpx.get(f"{haproxy.url}/healthz", headers={"X-Padding": "a" * room}, timeout=30)
        assert response.status_code == 200, response.text
        refused = httpx.get(f"{haproxy.url}/healthz", headers={"X-Padding": "a" * 2 * room}, timeout=30)
        assert refused.status_code == 400


def test_every_petstore_variable_compose_sets_is_one_petstore_reads(services: dict[str, dict[str, Any]]) -> None:
    for module in ("petstore.config", *DEFAULT_PLUGINS, "plugins.auth.config"):
        import_module(module)  # registers each plugin's settings class
    known: set[str] = set()
    pending = list(BaseSettings.__subclasses__())
    while pending:
        settings = pending.pop()
        pending += settings.__subclasses__()
        prefix = str(settings.model_config.get("env_prefix", ""))
        if prefix.startswith("PETSTORE_"):
            known |= {f"{prefix}{name}".upper() for name in settings.model_fields}
    assert "PETSTORE_RATELIMIT_TRUSTED_PROXIES" in known  # the plugin settings were found
    for name, svc in services.items():
        if built_here(svc):
            unknown = set(svc["environment"]) - known
            assert not unknown, f"{name} sets {unknown}, which petstore does not read"


def test_every_petstore_command_compose_runs_uses_flags_petstore_has(services: dict[str, dict[str, Any]]) -> None:
    top = subprocess.run([str(PETSTORE), "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
    commands = [dockerfile_command()] + [command_of(svc) for svc in services.values() if built_here(svc)]
    for command in commands:
        assert command[0] == "petstore", command
        assert re.search(rf"^\s+{command[1]}\s", top, re.MULTILINE), f"petstore has no command {command[1]}"
        usage = subprocess.run(
            [str(PETSTORE), command[1], "--help"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        for flag in (word for word in command[2:] if word.startswith("--")):
            assert re.search(rf"\s{flag}\b", usage), f"`petstore {command[1]}` has no {flag}"


def test_instances_trust_x_forwarded_for_from_haproxys_fixed_address_only(
    services: dict[str, dict[str, Any]], compose_networks: dict[str, Any]
) -> None:
    address = ipaddress.ip_address(services["haproxy"]["networks"]["default"]["ipv4_address"])
    (subnet,) = [ipaddress.ip_network(c["subnet"]) for c in compose_networks["default"]["ipam"]["config"]]
    assert address in subnet
    for name, svc in petstore_servers(services).items():
        cidrs = svc["environment"]["PETSTORE_RATELIMIT_TRUSTED_PROXIES"].split(",")
        trusted = [ipaddress.ip_network(cidr) for cidr in cidrs]
        assert trusted == [ipaddress.ip_network(f"{address}/32")], name
    assert ["option", "forwardfor"] in section("defaults")


def test_haproxy_accepts_the_file_without_a_warning_as_the_tests_run_it() -> None:
    output = HaproxyServer([1, 2, 3]).check_config()
    assert "WARNING" not in output and "ALERT" not in output, output


def test_haproxy_serves_its_view_of_the_instances_and_its_metrics() -> None:
    with HaproxyServer([free_port(), free_port(), free_port()]) as haproxy:
        assert set(haproxy.states()) == {"petstore-1", "petstore-2", "petstore-3"}
        metrics = httpx.get(f"http://{HOST}:{haproxy.stats_port}/metrics", timeout=10)
    assert metrics.status_code == 200 and "haproxy_server_status" in metrics.text


def test_haproxy_accepts_the_file_with_composes_environment(services: dict[str, dict[str, Any]]) -> None:
    """`haproxy -c`: instance names that do not resolve here are allowed (`init-addr none`)."""
    environment = {key: str(value) for key, value in services["haproxy"]["environment"].items()}
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(CONFIG)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **environment},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------- the real haproxy, in front


#: What reached this process: method and path -> count (the counting app below).
HITS: Counter[str] = Counter()


async def counting_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A stand-in instance: `/readyz` 200; `/unavailable` always 503; `/hits` what reached it; else echo."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/hits":
        status, body = 200, dict(HITS)
    else:
        if path != "/readyz":
            HITS[f"{scope['method']} {path}"] += 1
        headers = {key.decode(): value.decode() for key, value in scope["headers"]}
        status, body = (503, {"code": 503}) if path == "/unavailable" else (200, {"headers": headers})
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@pytest.fixture(scope="module")
def front() -> Iterator[tuple[HaproxyServer, list[UvicornServer]]]:
    """haproxy with deploy/haproxy.cfg in front of three counting apps."""
    app = f"{__name__}:counting_app"
    command = [sys.executable, "-m", "uvicorn", app, "--host", "{host}", "--port", "{port}"]
    apps = [UvicornServer(command=command, health_path="/readyz", cwd=REPO).start() for _ in range(3)]
    try:
        with HaproxyServer([app.port for app in apps]) as haproxy:
            haproxy.wait_states(dict.fromkeys(haproxy.servers, "UP"))
            yield haproxy, apps
    finally:
        for app in apps:
            app.close()


def hits(apps: list[UvicornServer]) -> Counter[str]:
    total: Counter[str] = Counter()
    for app in apps:
        total.update(httpx.get(f"{app.url}/hits", timeout=10).json())
    return total


def test_idempotent_requests_are_retried_on_another_instance_and_a_post_is_sent_once(
    front: tuple[HaproxyServer, list[UvicornServer]],
) -> None:
    haproxy, apps = front
    before = hits(apps)
    for method in ("PUT", "POST", "GET"):
        response = httpx.request(method, f"{haproxy.url}/unavailable", timeout=30)
        assert response.status_code == 503
    reached = hits(apps) - before
    retries = int(next(words[1] for words in section("defaults") if words[0] == "retries"))
    assert reached == {"PUT /unavailable": retries + 1, "GET /unavailable": retries + 1, "POST /unavailable": 1}


def test_the_instance_sees_the_clients_address_in_x_forwarded_for(
    front: tuple[HaproxyServer, list[UvicornServer]],
) -> None:
    haproxy, _ = front
    headers = httpx.get(f"{haproxy.url}/echo", timeout=10).json()["headers"]
    assert headers["x-forwarded-for"] == HOST


def test_headers_too_large_are_refused_before_an_instance_sees_them(
    front: tuple[HaproxyServer, list[UvicornServer]],
) -> None:
    haproxy, apps = front
    before = hits(apps)
    response = httpx.get(f"{haproxy.url}/big", headers={"X-Padding": "a" * 20_000}, timeout=10)
    assert response.status_code == 400
    assert hits(apps) - before == Counter()
    assert httpx.get(f"{haproxy.url}/echo", headers={"X-Padding": "a" * 4_000}, timeout=10).status_code == 200


def test_a_request_whose_headers_never_end_is_timed_out(front: tuple[HaproxyServer, list[UvicornServer]]) -> None:
    haproxy, apps = front
    before = hits(apps)
    limit = timeouts()["http-request"]
    with socket.create_connection((HOST, haproxy.port), timeout=limit + 10) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: petstore\r\nX-Half: sent")
        answer = sock.recv(4096)  # haproxy answers, then closes, once its limit is reached
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert hits(apps) - before == Counter()


def test_with_no_instance_ready_the_answer_is_petstores_json_error_shape() -> None:
    with HaproxyServer([free_port(), free_port(), free_port()]) as haproxy:
        haproxy.wait_states(dict.fromkeys(haproxy.servers, "DOWN"))
        response = httpx.get(f"{haproxy.url}/api/v3/pet/1", timeout=30)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == 503 and body["type"] and body["message"]
