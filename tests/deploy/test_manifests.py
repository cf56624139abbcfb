"""deploy/kubernetes: schema-valid for the stated Kubernetes versions, and the sidecar contract."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    AUTH_TOKEN_ENV,
    AUTH_TOKEN_FILE_ENV,
    FLEET_URL_FILE_ENV,
)
from sidecar.config import OPTIONS as SIDECAR_OPTIONS
from sidecar.server import LIVENESS_SERVICE
from sidecar.telemetry import telemetry_from_env
from tests.deploy.conftest import (
    BASE,
    EXAMPLE,
    FLEET_EXAMPLE,
    OVERLAY,
    env_of,
    kustomize_build,
    load_yaml,
    pod_spec,
    require_executable,
    sidecar_container,
)
from tests.timing import scaled

# 1.29: the oldest release with native sidecars (restartPolicy: Always on an
# init container) on by default. 1.37: the newest the pinned kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
RESOURCE_FILES = sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
TARGETS = {
    "base": BASE,
    "unix-socket": OVERLAY,
    "existing-app": EXAMPLE,
    "fleet-quota": FLEET_EXAMPLE,
}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
# Kinds kubernetes-validate has no schema for (CRDs): checked field by field below.
CUSTOM_KINDS = {"PodMonitor"}
# The OpenTelemetry variables the manifests set; telemetry_from_env reads them.
OTEL_ENV = {
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_PROMETHEUS_HOST",
    "OTEL_EXPORTER_PROMETHEUS_PORT",
}
# The environment the sidecar reads (sidecar/config.py), beyond the OPTIONS table.
KNOWN_ENV = (
    {o.env for o in SIDECAR_OPTIONS}
    | OTEL_ENV
    | {
        "COSYVOICE_SIDECAR_REGION",
        API_KEY_FILE_ENV,
        AUTH_TOKEN_ENV,
        AUTH_TOKEN_FILE_ENV,
        FLEET_URL_FILE_ENV,
    }
)
METRICS_PORT = 9464
SIDECAR_UID = 10001


def validate(path: Path, version: str) -> None:
    """kubernetes-validate --strict passes, and really checked every document."""
    tool = require_executable("kubernetes-validate")
    result = subprocess.run(  # noqa: S603 - a pinned validator, no shell
        [tool, "--strict", "--kubernetes-version", version, str(path)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = [line for line in output.splitlines() if " passed for resource " in line]
    # A kind without a schema only warns; every document must have been checked.
    assert len(passed) == len(load_yaml(path)), output


def validate_docs(docs: list[dict[str, Any]], version: str, tmp_path: Path) -> None:
    """Validate the documents of built-in kinds; custom kinds are left to their own tests."""
    path = tmp_path / f"built-{version}.yaml"
    builtin = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    path.write_text(yaml.safe_dump_all(builtin), encoding="utf-8")
    validate(path, version)


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment


def _listen_port(sidecar: dict[str, Any]) -> int:
    host, _, port = env_of(sidecar)["COSYVOICE_SIDECAR_LISTEN"].rpartition(":")
    # The kubelet probes the pod IP: a loopback-only sidecar never passes them.
    assert host == "0.0.0.0", host
    return int(port)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    """`kustomize build` of the base, the unix-socket overlay and the component's example."""
    return {name: kustomize_build(target) for name, target in TARGETS.items()}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", RESOURCE_FILES, ids=lambda p: p.name)
def test_manifest_validates(path: Path, version: str) -> None:
    """Each base manifest passes strict schema validation."""
    validate(path, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kustomize_build_validates(
    target: str, version: str, built: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """`kustomize build` of the base, the overlay and the example passes strict validation."""
    validate_docs(built[target], version, tmp_path)


def test_kustomization_names_every_manifest_and_image(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    """Every manifest is a resource of the base, and every container image is rewritten."""
    (kustomization,) = load_yaml(BASE / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in RESOURCE_FILES]
    pod = pod_spec(built["base"])
    for container in pod["initContainers"] + pod["containers"]:
        assert container["image"].startswith("registry.example.com/"), container["name"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_sidecar_is_native(target: str, built: dict[str, list[dict[str, Any]]]) -> None:
    """The sidecar is an init container with restartPolicy Always, in every build."""
    pod = pod_spec(built[target])
    sidecar = sidecar_container(pod)
    assert sidecar["restartPolicy"] == "Always"
    assert all(c["name"] != "cosyvoice-sidecar" for c in pod["containers"])


def test_component_keeps_what_the_deployment_had(built: dict[str, list[dict[str, Any]]]) -> None:
    """Added to an existing Deployment: its init container, volumes and env stay; patches apply."""
    (original,) = load_yaml(EXAMPLE / "deployment.yaml")
    before = original["spec"]["template"]["spec"]
    pod = pod_spec(built["existing-app"])
    names = sorted(c["name"] for c in pod["initContainers"])
    assert names == sorted(["cosyvoice-sidecar", *(c["name"] for c in before["initContainers"])])
    assert pod["containers"] == before["containers"]
    volumes = {v["name"] for v in pod["volumes"]}
    assert {v["name"] for v in before["volumes"]} < volumes
    env = env_of(sidecar_container(pod))
    # The example's patch wins over the component's defaults, entry by entry.
    assert (env["COSYVOICE_SIDECAR_POOL_MAX_SIZE"], env["COSYVOICE_SIDECAR_POOL_MIN_IDLE"]) == (
        "20",
        "4",
    )
    assert env["COSYVOICE_SIDECAR_LISTEN"] == "0.0.0.0:50051"
    assert _deployment(built["existing-app"])["metadata"]["name"] == "voice-bot"


@pytest.mark.parametrize("target", ["base", "existing-app", "fleet-quota"])
def test_probes_use_the_sidecar_port_and_health(
    target: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    """startup/readiness ask health service "" on the listen port; liveness asks "liveness"."""
    sidecar = sidecar_container(pod_spec(built[target]))
    port = _listen_port(sidecar)
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"sidecar-grpc": port, "sidecar-metrics": METRICS_PORT}
    for name in ("startupProbe", "readinessProbe"):
        # Service "" is the pod's readiness: SERVING once the pool has warmed,
        # kept through an upstream outage. The Synthesizer's own service
        # follows the upstream, and would take every replica out at once.
        assert sidecar[name]["grpc"] == {"port": port}, name
    # A liveness probe on an upstream-following service would restart the
    # sidecar for a DashScope outage. "liveness" only says the process answers.
    assert sidecar["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS_SERVICE}
    # Warming may take connect retries (backoff); the startup probe, which also
    # holds back liveness, allows at least a minute before giving up.
    startup = sidecar["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_probe_has_exactly_one_handler(
    target: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    """Each probe has one handler (a patch that adds exec must remove grpc/tcpSocket)."""
    pod = pod_spec(built[target])
    for container in pod["initContainers"] + pod["containers"]:
        for name in PROBES:
            if name in container:
                handlers = [h for h in HANDLERS if h in container[name]]
                assert len(handlers) == 1, (container["name"], name, handlers)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_metrics_are_served_and_announced(
    target: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    """Prometheus exporter on 0.0.0.0:9464, a named port, and the prometheus.io annotations."""
    template = _deployment(built[target])["spec"]["template"]
    sidecar = sidecar_container(template["spec"])
    env = env_of(sidecar)
    assert env["OTEL_METRICS_EXPORTER"] == "prometheus"
    assert env["OTEL_EXPORTER_PROMETHEUS_HOST"] == "0.0.0.0"  # the scraper comes to the pod IP
    port = int(env["OTEL_EXPORTER_PROMETHEUS_PORT"])
    assert {"name": "sidecar-metrics", "containerPort": port, "protocol": "TCP"} in sidecar["ports"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert template["metadata"]["labels"]["cosyvoice-sidecar/injected"] == "true"


def test_podmonitor_is_optional_and_selects_the_sidecars(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    """The base has no PodMonitor (its CRD may be absent); the example's scrapes its pods."""
    assert not [d for d in built["base"] if d["kind"] == "PodMonitor"]
    docs = built["existing-app"]
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    template = _deployment(docs)["spec"]["template"]
    assert _selects(monitor["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    port_names = {p["name"] for p in sidecar_container(template["spec"])["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"


def test_unix_socket_overlay_opens_no_grpc_port(built: dict[str, list[dict[str, Any]]]) -> None:
    """Overlay: the sidecar listens on a socket both containers mount; only metrics on TCP."""
    pod = pod_spec(built["unix-socket"])
    sidecar = sidecar_container(pod)
    (app,) = pod["containers"]
    listen = env_of(sidecar)["COSYVOICE_SIDECAR_LISTEN"]
    assert listen.startswith("unix:///"), listen
    assert env_of(app)["COSYVOICE_SIDECAR_ADDR"] == listen
    assert [p["containerPort"] for p in sidecar["ports"]] == [METRICS_PORT]
    socket_dir = str(Path(listen.removeprefix("unix://")).parent)
    for container in (sidecar, app):
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = mounts[socket_dir]
        (spec,) = [v for v in pod["volumes"] if v["name"] == volume]
        assert "emptyDir" in spec
    for name in PROBES:
        assert "exec" in sidecar[name], name  # grpc: and tcpSocket: need a TCP port
    # The same health services as the TCP probes: "" (no argument), and "liveness".
    commands = {name: sidecar[name]["exec"]["command"] for name in PROBES}
    assert commands["startupProbe"] == commands["readinessProbe"]
    assert len(commands["startupProbe"]) == 3
    assert commands["livenessProbe"] == [*commands["startupProbe"], LIVENESS_SERVICE]


@pytest.mark.parametrize("target", ["base", "existing-app", "fleet-quota"])
def test_api_key_comes_from_a_mounted_secret_file(
    target: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    """DASHSCOPE_API_KEY_FILE names a file of a Secret volume mounted without subPath."""
    pod = pod_spec(built[target])
    sidecar = sidecar_container(pod)
    env = env_of(sidecar)
    assert API_KEY_ENV not in env
    key_dir = str(Path(env[API_KEY_FILE_ENV]).parent)
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == key_dir]
    # subPath mounts are never updated by the kubelet: no rotation.
    assert "subPath" not in mount
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "dashscope-api-key"
    # Readable (not writable) by the sidecar's user without imposing an fsGroup
    # on the pod; no other container mounts the volume.
    assert volume["secret"]["defaultMode"] == 0o444
    mounted_by = [
        c["name"]
        for c in pod["initContainers"] + pod["containers"]
        if any(m["name"] == mount["name"] for m in c.get("volumeMounts", []))
    ]
    assert mounted_by == ["cosyvoice-sidecar"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_sidecar_env_names_settings_it_reads(
    target: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    """Every variable set on the sidecar is one it reads (a typo would be silently ignored)."""
    env = env_of(sidecar_container(pod_spec(built[target])))
    assert env, target
    assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV
    assert "COSYVOICE_SIDECAR_EMULATOR" not in env
    # The OTEL_* ones: the sidecar's own reader of them turns metrics on (on
    # loopback and a free port here, for the test).
    otel = {name: env[name] for name in OTEL_ENV}
    otel |= {"OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT": "0"}
    telemetry = telemetry_from_env(otel)
    try:
        assert telemetry.metering, telemetry
        assert not telemetry.tracing, telemetry
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize("target", ["base", "existing-app", "fleet-quota"])
def test_termination_grace_covers_the_sidecar_drain(
    target: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    """terminationGracePeriodSeconds exceeds drain grace + ending calls + pool close + the app."""
    pod = pod_spec(built[target])
    env = env_of(sidecar_container(pod))
    drain = float(env["COSYVOICE_SIDECAR_DRAIN_GRACE_S"])
    # After the drain grace the server ends what is left (2 s) and closes the
    # pool (at most 5 s); the app's own shutdown comes on top, before the sidecar's.
    assert pod["terminationGracePeriodSeconds"] >= drain + 2 + 5 + 10


@pytest.mark.parametrize("target", ["base", "existing-app", "fleet-quota"])
def test_sidecar_is_hardened_on_its_own(
    target: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    """The sidecar's container is non-root, read-only, unprivileged whatever the pod says."""
    sidecar = sidecar_container(pod_spec(built[target]))
    context = sidecar["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (SIDECAR_UID, SIDECAR_UID)
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    resources = sidecar["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    assert "/tmp" in {m["mountPath"] for m in sidecar["volumeMounts"]}  # noqa: S108


def test_pod_is_hardened(built: dict[str, list[dict[str, Any]]]) -> None:
    """Base: non-root, read-only root file system, no privileges, no token, resources set."""
    pod = pod_spec(built["base"])
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == SIDECAR_UID  # the unix socket needs one user for both
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]
        # Anything writable is a volume, /tmp included.
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, container["name"]  # noqa: S108 - a mount path


def test_sidecar_port_is_private(built: dict[str, list[dict[str, Any]]]) -> None:
    """No Service targets the sidecar's ports; the NetworkPolicy admits metrics from the scraper."""
    docs = built["base"]
    pod_labels = _deployment(docs)["spec"]["template"]["metadata"]["labels"]
    pod = pod_spec(docs)
    sidecar = sidecar_container(pod)
    port = _listen_port(sidecar)
    named = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
    named |= {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    for service in (d for d in docs if d["kind"] == "Service"):
        for service_port in service["spec"]["ports"]:
            target = named.get(service_port.get("targetPort", service_port["port"]))
            assert target not in (port, METRICS_PORT), service["metadata"]["name"]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert "Ingress" in policy["spec"]["policyTypes"]
    metrics_rules = 0
    for rule in policy["spec"]["ingress"]:
        # A rule without ports would admit every port, the sidecar's too.
        allowed = [named.get(p["port"], p["port"]) for p in rule.get("ports", [])]
        assert allowed, rule
        assert port not in allowed, rule
        if METRICS_PORT in allowed:
            # The metrics port only from a selected scraper, never from everywhere.
            assert rule.get("from"), rule
            for peer in rule["from"]:
                assert peer["namespaceSelector"]["matchLabels"], peer
                assert peer["podSelector"]["matchLabels"], peer
            metrics_rules += 1
    assert metrics_rules == 1


def test_selectors_match_the_pods(built: dict[str, list[dict[str, Any]]]) -> None:
    """The Deployment, Service, NetworkPolicy and PodDisruptionBudget select the pod's labels."""
    docs = built["base"]
    deployment = _deployment(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert _selects(service["spec"]["selector"], labels)
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0  # a new pod is warm before an old one goes
