"""docker-compose.yml gives a coherent stack: checked by parsing it, since no Docker engine runs in CI.

What `docker compose up` would trip over is checked against the files it uses: a mounted file
that does not exist, Prometheus scraping a port nobody listens on, an instance nobody scrapes,
Grafana pointed at the wrong Prometheus, an environment variable petstore does not read.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.ops.contract import ENV_VARS, REPO

PETSTORE = {"petstore-1", "petstore-2", "petstore-3"}
EXPECTED_SERVICES = {"redis", "postgres", "migrate", *PETSTORE, "haproxy", "prometheus", "alertmanager", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "prometheus.yml").read_text())
    return config


def dockerfile_command() -> list[str]:
    """The image's exec-form CMD, which every petstore service runs unless it says otherwise."""
    (line,) = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    command: list[str] = json.loads(line.removeprefix("CMD "))
    return command


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", dockerfile_command())
    return command if isinstance(command, list) else command.split()


def built_here(service: dict[str, Any]) -> bool:
    return service.get("build") in {".", "./"} or service.get("build", {}) == {"context": "."}


def petstore_servers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run `petstore serve` (the ones Prometheus must scrape)."""
    return {
        name: svc for name, svc in services.items() if built_here(svc) and command_of(svc)[:2] == ["petstore", "serve"]
    }


def listen_port(service: dict[str, Any]) -> int:
    command = command_of(service)
    return int(command[command.index("--port") + 1])


def container_ports(service: dict[str, Any]) -> set[int]:
    """Ports the service offers to the compose network: `expose` and the container side of `ports`."""
    ports = {int(str(port)) for port in service.get("expose", [])}
    ports |= {int(str(mapping).rsplit(":", 1)[-1].split("/")[0]) for mapping in service.get("ports", [])}
    return ports


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def host_path_for(service: dict[str, Any], container_path: str) -> str | None:
    """The repository path (relative, normalised) a bind mount puts at `container_path`, if any."""
    path = PurePosixPath(container_path)
    for source, target in bind_mounts(service):
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return str(PurePosixPath(source) / path.relative_to(target))
    return None


def scrape_targets(config: dict[str, Any]) -> set[str]:
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
        for file_sd in job.get("file_sd_configs", []):
            for pattern in file_sd["files"]:
                for path in sorted(REPO.glob(pattern)):
                    for group in json.loads(path.read_text()):
                        targets |= set(group["targets"])
    return targets


# ----------------------------------------------------------------------------------- services


def test_the_stack_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == EXPECTED_SERVICES


def test_three_petstore_instances_serve_and_migrate_runs_once_before_them(services: dict[str, dict[str, Any]]) -> None:
    assert set(petstore_servers(services)) == PETSTORE
    assert command_of(services["migrate"]) == ["petstore", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in petstore_servers(services):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"], name


def test_every_bind_mounted_file_exists(services: dict[str, dict[str, Any]]) -> None:
    mounts = [(name, source) for name, svc in services.items() for source, _ in bind_mounts(svc)]
    assert mounts, "Prometheus and Grafana must mount the repository's configuration"
    for name, source in mounts:
        assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def test_published_ports_bind_to_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for mapping in svc.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} on every interface"
    assert "ports" not in services["redis"] and "ports" not in services["postgres"]


# ---------------------------------------------------------------------------- environment


def test_petstore_environment_sets_every_spec_variable_it_needs(services: dict[str, dict[str, Any]]) -> None:
    """Each variable is one petstore reads: tests/test_deploy.py checks beyond SPEC §1 (plugin settings)."""
    needed = {"PETSTORE_ENV", "PETSTORE_DATABASE_URL", "PETSTORE_REDIS_URL", "PETSTORE_JWT_SECRET"}
    for name, svc in services.items():
        if built_here(svc):
            assert needed <= set(svc["environment"]) & ENV_VARS, name


def test_instances_run_in_production_sharing_postgres_redis_and_one_required_secret(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        if not built_here(svc):
            continue
        env = svc["environment"]
        assert env["PETSTORE_ENV"] == "production", name
        database = urlsplit(env["PETSTORE_DATABASE_URL"])
        assert database.scheme == "postgresql+asyncpg", name
        assert (database.hostname, database.port) == ("postgres", 5432), name
        redis = urlsplit(env["PETSTORE_REDIS_URL"])
        assert (redis.scheme, redis.hostname, redis.port or 6379) == ("redis", "redis", 6379), name
        # Interpolated and required (`:?`): compose refuses to start without it, nothing is committed.
        assert re.fullmatch(r"\$\{PETSTORE_JWT_SECRET:\?[^}]+\}", env["PETSTORE_JWT_SECRET"]), name


def test_allowed_origins_are_haproxys_published_address(services: dict[str, dict[str, Any]]) -> None:
    servers = petstore_servers(services)
    assert not any(svc.get("ports") for svc in servers.values()), "instances are reached through haproxy only"
    front = str(services["haproxy"]["ports"][0])
    published = {f"http://{host}:{front.split(':')[1]}" for host in ("127.0.0.1", "localhost")}
    for name, svc in servers.items():
        assert set(svc["environment"]["PETSTORE_ALLOWED_ORIGINS"].split(",")) == published, name


def test_database_credentials_match_the_postgres_service(services: dict[str, dict[str, Any]]) -> None:
    pg = services["postgres"]["environment"]
    database = urlsplit(services["petstore-1"]["environment"]["PETSTORE_DATABASE_URL"])
    assert database.username == pg["POSTGRES_USER"]
    assert database.path == f"/{pg['POSTGRES_DB']}"
    assert database.password == pg["POSTGRES_PASSWORD"]


# ----------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_exactly_the_petstore_instances_on_their_ports(
    services: dict[str, dict[str, Any]], prometheus_config: dict[str, Any]
) -> None:
    servers = petstore_servers(services)
    expected = {f"{name}:{listen_port(svc)}" for name, svc in servers.items()}
    assert scrape_targets(prometheus_config) == expected
    for name, svc in servers.items():
        assert listen_port(svc) in container_ports(svc), f"{name} does not expose its port {listen_port(svc)}"


def test_prometheus_finds_its_config_rules_and_targets_inside_the_container(
    services: dict[str, dict[str, Any]], prometheus_config: dict[str, Any]
) -> None:
    prometheus = services["prometheus"]
    (config_flag,) = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_path = config_flag.split("=", 1)[1]
    assert host_path_for(prometheus, config_path) == "prometheus.yml"
    config_dir = PurePosixPath(config_path).parent
    relative = list(prometheus_config["rule_files"]) + [
        pattern
        for job in prometheus_config["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for pattern in sd["files"]
    ]
    for path in relative:
        inside = config_dir / path
        on_host = host_path_for(prometheus, str(inside))
        assert on_host is not None, f"{inside} is not mounted into the prometheus container"
        assert list(REPO.glob(on_host)), f"{inside} maps to {on_host}, which matches no file"


def test_prometheus_sends_alerts_to_the_alertmanager_service_and_its_configuration(
    services: dict[str, dict[str, Any]], prometheus_config: dict[str, Any]
) -> None:
    (manager,) = prometheus_config["alerting"]["alertmanagers"]
    ((target,),) = [group["targets"] for group in manager["static_configs"]]
    host, port = target.rsplit(":", 1)
    alertmanager = services[host]
    assert alertmanager["image"].startswith("prom/alertmanager:")
    # Alertmanager listens on 9093 unless told otherwise.
    assert not any(arg.startswith("--web.listen-address") for arg in alertmanager["command"])
    assert int(port) == 9093
    assert host in services["prometheus"]["depends_on"]
    (config_flag,) = [arg for arg in alertmanager["command"] if arg.startswith("--config.file=")]
    assert host_path_for(alertmanager, config_flag.split("=", 1)[1]) == "alertmanager.yml"


def test_prometheus_port_is_published(services: dict[str, dict[str, Any]]) -> None:
    assert 9090 in container_ports(services["prometheus"])


# -------------------------------------------------------------------------------- Grafana


def test_grafana_datasource_points_at_the_prometheus_service(services: dict[str, dict[str, Any]]) -> None:
    sources = yaml.safe_load((REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    url = urlsplit(sources["datasources"][0]["url"])
    assert url.hostname in services
    assert services[url.hostname]["image"].startswith("prom/prometheus:")
    assert url.port in container_ports(services[url.hostname])


def test_grafana_mounts_provisioning_and_the_dashboards_where_the_provider_looks(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    assert host_path_for(grafana, "/etc/grafana/provisioning/datasources") == "grafana/provisioning/datasources"
    providers = yaml.safe_load((REPO / "grafana" / "provisioning" / "dashboards" / "petstore.yml").read_text())
    dashboards_path = providers["providers"][0]["options"]["path"]
    assert host_path_for(grafana, dashboards_path) == "grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    on_host = host_path_for(grafana, home)
    assert on_host is not None and (REPO / on_host).is_file()


def test_instances_share_one_media_volume_for_uploaded_images(services: dict[str, dict[str, Any]]) -> None:
    """An image uploaded through one instance must be served by the other (default media dir ./media in /app)."""
    mounts = [set(svc.get("volumes", [])) for svc in petstore_servers(services).values()]
    shared = set.intersection(*mounts)
    assert "media:/app/media" in shared
