"""deploy/kubernetes/ agrees with what petstore really serves and needs: checked by parsing the manifests
and asking the real app, since no cluster runs here (the way tests/ops/test_compose.py keeps compose honest).

The probes ask routes the app answers, on the port `petstore serve` listens on; the container runs a
real `petstore` command; every variable the manifests set is one petstore reads, and together they
pass the production checks; the grace period covers the preStop sleep and the shutdown bound; the
HPA scales on a metric the metrics plugin exports, through the Prometheus Adapter rule the docs
give. The last tests run kubernetes-validate and checkov, as scripts/check does.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from starlette.testclient import TestClient

from petstore.app import create_app, load_checked_plugins
from petstore.cli import build_parser
from petstore.config import CORE_VARIABLES, DEFAULT_PLUGINS, Settings
from petstore.errors import PetstoreError
from petstore.plugin import load_plugins
from tests.ops.contract import METRICS, REPO
from tests.ops.test_compose import dockerfile_command

KUBERNETES = REPO / "deploy" / "kubernetes"
#: What `kubectl apply -k` leaves out on purpose: the Secret is a template, the Job runs before a rollout.
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "secret.example.yaml", "migrate-job.yaml"}
#: The oldest Kubernetes the manifests are validated against (autoscaling/v2, policy/v1 are GA there).
KUBERNETES_VERSION = "1.30.0"
#: Bounds the scanners (each takes seconds); a hang fails instead of holding the run.
TOOL_TIMEOUT = 300


def manifest_files() -> list[Path]:
    # Not .checkov.yaml (a dot file, the scanner's settings) nor the kustomization: no Kubernetes objects.
    names = (path for path in KUBERNETES.glob("*.yaml") if not path.name.startswith("."))
    return sorted(path for path in names if path.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of every manifest, by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{key} is defined twice"
            found[key] = document
    return found


@pytest.fixture(scope="module")
def pod(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = objects[("Deployment", "petstore")]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (found,) = pod["containers"]
    assert isinstance(found, dict)
    return found


def environment(objects: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds: its ConfigMap and Secret (template) by envFrom, then `env`."""
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env |= objects[("ConfigMap", source["configMapRef"]["name"])]["data"]
        else:
            env |= objects[("Secret", source["secretRef"]["name"])]["stringData"]
    env |= {item["name"]: item["value"] for item in container.get("env", [])}
    return env


def dockerfile_lines(instruction: str) -> list[str]:
    return [
        line.split(None, 1)[1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith(instruction)
    ]


def container_port(container: dict[str, Any], name: str) -> int:
    (port,) = [port["containerPort"] for port in container["ports"] if port["name"] == name]
    assert isinstance(port, int)
    return port


def prestop_seconds(container: dict[str, Any]) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return float(command[1])


def adapter_rules() -> dict[str, Any]:
    """The Prometheus Adapter configuration docs/operations.md gives, as YAML."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("### The Prometheus Adapter rule", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block, "docs/operations.md gives the adapter rule in a ```yaml block"
    rules: dict[str, Any] = yaml.safe_load(block.group(1))
    return rules


# --------------------------------------------------------------------------- the file set


def test_kustomization_lists_every_manifest_but_the_secret_template_and_the_migration_job() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {path.name for path in manifest_files()} - NOT_IN_KUSTOMIZATION
    assert kustomization["namespace"] == "petstore"


def test_every_object_is_in_the_petstore_namespace(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    for (kind, name), document in objects.items():
        if kind != "Namespace":
            assert document["metadata"]["namespace"] == "petstore", (kind, name)
    assert ("Namespace", "petstore") in objects


# --------------------------------------------------------------- command, port and probes


def test_the_container_runs_the_dockerfiles_cmd_a_real_petstore_serve_on_the_exposed_port(
    container: dict[str, Any],
) -> None:
    command = container["command"]
    assert command == dockerfile_command()
    assert command[0] == "petstore"
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve"
    assert args.host == "0.0.0.0"  # reachable from the kubelet and the Service, not loopback only
    assert args.port == container_port(container, "http")
    assert [int(port) for port in dockerfile_lines("EXPOSE")] == [args.port]


def test_the_migration_job_runs_petstore_migrate_with_the_same_image_and_environment(
    objects: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]
) -> None:
    job = objects[("Job", "petstore-migrate")]["spec"]["template"]["spec"]
    (migrate,) = job["containers"]
    assert build_parser().parse_args(migrate["command"][1:]).command == "migrate"
    assert migrate["command"][0] == "petstore"
    assert migrate["image"] == container["image"]
    assert migrate["envFrom"] == container["envFrom"]
    assert job["restartPolicy"] == "Never"


def test_probes_ask_routes_the_real_app_answers_200_on_the_container_port(
    container: dict[str, Any], tmp_path: Path
) -> None:
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert probe["port"] == "http", kind
        assert container_port(container, "http") == 8000
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db'}", plugins=(), env="test")
    with TestClient(create_app(settings)) as client:
        for kind, probe in probes.items():
            response = client.get(probe["path"])
            assert response.status_code == 200, (kind, response.text)


def test_the_service_and_ingress_reach_the_pods_named_port(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    labels = objects[("Deployment", "petstore")]["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "petstore")]["spec"]
    assert service["selector"].items() <= labels.items()
    assert not service.get("sessionAffinity") or service["sessionAffinity"] == "None"  # no stickiness needed
    ((port,),) = [service["ports"]]
    assert port["targetPort"] == "http"
    ingress = objects[("Ingress", "petstore")]["spec"]
    (backend,) = [path["backend"]["service"] for rule in ingress["rules"] for path in rule["http"]["paths"]]
    assert backend == {"name": "petstore", "port": {"name": port["name"]}}
    budget = objects[("PodDisruptionBudget", "petstore")]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] == 1


def test_the_ingress_keeps_websockets_and_sse_streams_open_past_the_heartbeat_and_unbuffered(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    annotations = objects[("Ingress", "petstore")]["metadata"]["annotations"]
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        seconds = int(annotations[f"nginx.ingress.kubernetes.io/{name}"])
        assert seconds >= 3600 > Settings().ws_heartbeat_seconds, name
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body.removesuffix("m")) * 1024 * 1024 > Settings().max_image_bytes  # an upload still fits


def test_metrics_are_not_served_through_the_public_ingress(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    metrics = objects[("Ingress", "petstore-metrics")]
    ((path,),) = [[path for rule in metrics["spec"]["rules"] for path in rule["http"]["paths"]]]
    assert (path["path"], path["pathType"]) == ("/metrics", "Exact")
    assert metrics["metadata"]["annotations"]["nginx.ingress.kubernetes.io/whitelist-source-range"] == "127.0.0.1/32"


# ---------------------------------------------------------------------------- environment


def test_every_variable_the_manifests_set_is_one_petstore_reads(
    objects: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]
) -> None:
    known = CORE_VARIABLES | load_plugins(Settings(plugins=DEFAULT_PLUGINS, env="test")).environment()
    assert "PETSTORE_RATELIMIT_TRUSTED_PROXIES" in known  # the plugins' own variables were found
    unknown = set(environment(objects, container)) - known
    assert not unknown, f"the manifests set {unknown}, which petstore does not read"


def test_the_secret_holds_what_carries_a_password_and_the_configmap_the_rest(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    secret = objects[("Secret", "petstore")]["stringData"]
    config = objects[("ConfigMap", "petstore")]["data"]
    assert set(secret) == {"PETSTORE_DATABASE_URL", "PETSTORE_REDIS_URL", "PETSTORE_JWT_SECRET"}
    assert not set(secret) & set(config)
    assert urlsplit(secret["PETSTORE_DATABASE_URL"]).password == "CHANGE-ME"
    assert urlsplit(secret["PETSTORE_REDIS_URL"]).password == "CHANGE-ME"


def test_production_settings_from_the_manifests_pass_the_production_checks(
    objects: dict[tuple[str, str], dict[str, Any]],
    container: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """With real values in place of the Secret's placeholders; the template as it is is refused."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = environment(objects, container)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The placeholder cannot be deployed by accident: the auth plugin refuses it (a PluginError).
    with pytest.raises(PetstoreError, match="PETSTORE_JWT_SECRET is shorter than"):
        load_checked_plugins(Settings())

    monkeypatch.setenv("PETSTORE_JWT_SECRET", secrets.token_urlsafe(48))
    settings = Settings()
    assert settings.env == "production"
    assert urlsplit(settings.database_url).scheme == "postgresql+asyncpg"
    assert settings.redis_url is not None and urlsplit(settings.redis_url).scheme == "redis"
    assert settings.production_problems() == []
    assert set(load_checked_plugins(settings).names()) == {name.rsplit(".", 1)[1] for name in DEFAULT_PLUGINS}
    assert all(origin.startswith("https://") for origin in settings.allowed_origins)


def test_the_root_file_system_is_read_only_and_tmp_and_media_are_volumes(
    objects: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    media = environment(objects, container)["PETSTORE_MEDIA_DIR"]
    claim = volumes[mounts[media]]["persistentVolumeClaim"]["claimName"]
    # Shared by every replica: an image uploaded through one pod is served by all.
    assert objects[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    # Where the image's working directory keeps it (the final stage's WORKDIR /app, media dir ./media).
    assert dockerfile_lines("WORKDIR")[-1] == "/app" and media == "/app/media"


def test_the_pod_runs_as_the_images_unprivileged_user_with_nothing_to_escalate(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    (user,) = dockerfile_lines("USER")
    uid, gid = (int(part) for part in user.split(":"))
    context = pod["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (uid, gid, True)
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound


# ------------------------------------------------------------------------------- the drain


def test_the_grace_period_covers_the_prestop_sleep_and_the_shutdown_bound(
    objects: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    bound = float(environment(objects, container)["PETSTORE_SHUTDOWN_TIMEOUT"])
    assert Settings(shutdown_timeout=bound).shutdown_timeout == bound  # a value the server accepts
    sleep = prestop_seconds(container)
    assert sleep > 0  # the endpoints and the ingress stop routing to the pod before SIGTERM
    assert pod["terminationGracePeriodSeconds"] > sleep + bound


def test_a_rollout_starts_a_new_pod_before_stopping_an_old_one(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    rolling = objects[("Deployment", "petstore")]["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1


# ----------------------------------------------------------------------------- autoscaling


def test_the_hpa_scales_the_deployment_on_cpu_and_on_connections_per_pod(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    hpa = objects[("HorizontalPodAutoscaler", "petstore")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "petstore")
    kinds = {metric["type"]: metric for metric in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    pods = kinds["Pods"]["pods"]
    assert pods["metric"]["name"] == "petstore_ws_connections"
    assert pods["target"]["type"] == "AverageValue"
    assert hpa["spec"]["minReplicas"] >= 2  # a pod's clients need another to reconnect to


def test_the_connection_metric_is_one_the_metrics_plugin_really_exports(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    (metric,) = [
        m["pods"]["metric"]["name"]
        for m in objects[("HorizontalPodAutoscaler", "petstore")]["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    assert METRICS[metric][0] == "gauge"  # per pod, averaged: a gauge, not a rate
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db'}", plugins=("plugins.metrics",), env="test")
    with TestClient(create_app(settings)) as client:
        exposition = client.get("/metrics").text
    assert f"# TYPE {metric} gauge" in exposition


def test_the_documented_prometheus_adapter_rule_serves_the_hpas_metric(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    (metric,) = [
        m["pods"]["metric"]["name"]
        for m in objects[("HorizontalPodAutoscaler", "petstore")]["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    (rule,) = [rule for rule in adapter_rules()["rules"] if metric in rule["seriesQuery"]]
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    exposed = re.sub(rule["name"]["matches"], rule["name"]["as"], metric)
    assert exposed == metric
    assert metric in rule["metricsQuery"] or "<<.Series>>" in rule["metricsQuery"]


# -------------------------------------------------------------------- the scanners, for real


def checkov_binary() -> str:
    """checkov lives in its own venv (its packaging pin cannot share one with pytest): see pyproject.toml."""
    own = REPO / ".venv" / "checkov" / "bin" / "checkov"
    found = str(own) if own.exists() else shutil.which("checkov")
    assert found, "checkov is missing: scripts/check installs it into .venv/checkov"
    return found


@pytest.mark.process
def test_kubernetes_validate_accepts_every_manifest_strictly() -> None:
    validate = shutil.which("kubernetes-validate") or str(REPO / ".venv" / "bin" / "kubernetes-validate")
    files = [str(path) for path in manifest_files()]
    result = subprocess.run(
        [validate, "--strict", "--kubernetes-version", KUBERNETES_VERSION, *files],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r"passed for resource (\S+)", result.stdout + result.stderr)
    assert len(passed) == sum(len(list(yaml.safe_load_all(Path(f).read_text()))) for f in files)


@pytest.mark.process
def test_kubernetes_validate_refuses_a_field_kubernetes_does_not_have(tmp_path: Path) -> None:
    """--strict is what catches a misspelled field (one Kubernetes would silently drop)."""
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    validate = shutil.which("kubernetes-validate") or str(REPO / ".venv" / "bin" / "kubernetes-validate")
    result = subprocess.run(
        [validate, "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(broken)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.returncode != 0
    assert "terminationGracePeriod" in result.stdout + result.stderr


@pytest.mark.process
def test_checkov_passes_every_kubernetes_check_but_the_justified_skips() -> None:
    config = yaml.safe_load((KUBERNETES / ".checkov.yaml").read_text())
    assert set(config["skip-check"]) == {"CKV_K8S_43", "CKV_K8S_35"}
    result = subprocess.run(
        [checkov_binary(), "--config-file", str(KUBERNETES / ".checkov.yaml"), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads(result.stdout)["summary"]
    assert summary["failed"] == 0 and summary["passed"] > 100, summary
    assert summary["parsing_errors"] == 0, summary
