"""deploy/kubernetes: schema-valid for the stated Kubernetes versions, and the sidecar contract."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import API_KEY_ENV, API_KEY_FILE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_FILE_ENV
from sidecar.config import OPTIONS as SIDECAR_OPTIONS
from sidecar.server import LIVENESS_SERVICE, SERVICE_NAME
from tests.deploy.conftest import BASE, OVERLAY, load_yaml, require_executable, sidecar_container
from tests.timing import scaled

# 1.29: the oldest release with native sidecars (restartPolicy: Always on an
# init container) on by default. 1.37: the newest the pinned kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
RESOURCE_FILES = sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
# The environment the sidecar reads (sidecar/config.py), beyond the OPTIONS table.
KNOWN_ENV = {o.env for o in SIDECAR_OPTIONS} | {
    "COSYVOICE_SIDECAR_REGION",
    API_KEY_FILE_ENV,
    AUTH_TOKEN_ENV,
    AUTH_TOKEN_FILE_ENV,
}


def _validate(path: Path, version: str) -> None:
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


def _kustomize_build(target: Path, out: Path) -> Path:
    kustomize = require_executable("kustomize")
    result = subprocess.run(  # noqa: S603 - a pinned tool, no shell
        [kustomize, "build", str(target)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out.write_text(result.stdout, encoding="utf-8")
    return out


def _built(target: Path, tmp_path: Path) -> list[dict[str, Any]]:
    return load_yaml(_kustomize_build(target, tmp_path / "built.yaml"))


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _deployment(docs)["spec"]["template"]["spec"]
    return spec


def _base() -> list[dict[str, Any]]:
    return [doc for path in RESOURCE_FILES for doc in load_yaml(path)]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _listen_port(sidecar: dict[str, Any]) -> int:
    host, _, port = _env(sidecar)["COSYVOICE_SIDECAR_LISTEN"].rpartition(":")
    # The kubelet probes the pod IP: a loopback-only sidecar never passes them.
    assert host == "0.0.0.0", host
    return int(port)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", RESOURCE_FILES, ids=lambda p: p.name)
def test_manifest_validates(path: Path, version: str) -> None:
    """Each base manifest passes strict schema validation."""
    _validate(path, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", [BASE, OVERLAY], ids=["base", "unix-socket"])
def test_kustomize_build_validates(target: Path, version: str, tmp_path: Path) -> None:
    """`kustomize build` of the base and of the overlay passes strict schema validation."""
    _validate(_kustomize_build(target, tmp_path / "built.yaml"), version)


def test_kustomization_names_every_manifest_and_image() -> None:
    """Every manifest is a resource of the base, and every container image is rewritable."""
    (kustomization,) = load_yaml(BASE / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in RESOURCE_FILES]
    images = {image["name"] for image in kustomization["images"]}
    pod = _pod(_base())
    for container in pod["initContainers"] + pod["containers"]:
        assert container["image"] in images, container["name"]


def test_sidecar_is_native() -> None:
    """The sidecar is an init container with restartPolicy Always, started before the app."""
    pod = _pod(_base())
    sidecar = sidecar_container(pod)
    assert sidecar["restartPolicy"] == "Always"
    assert pod["initContainers"][0] is sidecar
    assert all(c["name"] != "cosyvoice-sidecar" for c in pod["containers"])


def test_probes_use_the_sidecar_port_and_health() -> None:
    """startup/readiness are gRPC health checks on the listen port; liveness ignores upstream."""
    sidecar = sidecar_container(_pod(_base()))
    port = _listen_port(sidecar)
    assert [p["containerPort"] for p in sidecar["ports"]] == [port]
    for name in ("startupProbe", "readinessProbe"):
        grpc = sidecar[name]["grpc"]
        assert grpc["port"] == port, name  # grpc probes take a number, not a port name
        assert grpc.get("service", "") in ("", SERVICE_NAME), name
    liveness = sidecar["livenessProbe"]
    # Health of "" and the Synthesizer follows the upstream pool; a liveness probe
    # on it would restart the sidecar for a DashScope outage. The "liveness"
    # service only says the process answers.
    assert liveness["grpc"] == {"port": port, "service": LIVENESS_SERVICE}
    # Warming may take connect retries (backoff); the startup probe, which also
    # holds back liveness, allows at least a minute before giving up.
    startup = sidecar["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("source", ["base", "overlay"])
def test_every_probe_has_exactly_one_handler(source: str, tmp_path: Path) -> None:
    """Each probe has one handler (a patch that adds exec must remove grpc/tcpSocket)."""
    docs = _base() if source == "base" else _built(OVERLAY, tmp_path)
    pod = _pod(docs)
    for container in pod["initContainers"] + pod["containers"]:
        for name in PROBES:
            if name in container:
                handlers = [h for h in HANDLERS if h in container[name]]
                assert len(handlers) == 1, (container["name"], name, handlers)


def test_unix_socket_overlay_opens_no_port(tmp_path: Path) -> None:
    """Built overlay: the sidecar listens on a socket both containers mount, with no TCP port."""
    pod = _pod(_built(OVERLAY, tmp_path))
    sidecar = sidecar_container(pod)
    (app,) = pod["containers"]
    listen = _env(sidecar)["COSYVOICE_SIDECAR_LISTEN"]
    assert listen.startswith("unix:///"), listen
    assert _env(app)["COSYVOICE_SIDECAR_ADDR"] == listen
    assert "ports" not in sidecar
    socket_dir = str(Path(listen.removeprefix("unix://")).parent)
    for container in (sidecar, app):
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = mounts[socket_dir]
        (spec,) = [v for v in pod["volumes"] if v["name"] == volume]
        assert "emptyDir" in spec
    for name in PROBES:
        assert "exec" in sidecar[name], name  # grpc: and tcpSocket: need a TCP port


def test_api_key_comes_from_a_mounted_secret_file() -> None:
    """DASHSCOPE_API_KEY_FILE names a file of a Secret volume mounted without subPath."""
    pod = _pod(_base())
    sidecar = sidecar_container(pod)
    env = _env(sidecar)
    assert API_KEY_ENV not in env
    key_dir = str(Path(env[API_KEY_FILE_ENV]).parent)
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == key_dir]
    # subPath mounts are never updated by the kubelet: no rotation.
    assert "subPath" not in mount
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"]
    # Readable by the pod's group only (0440 with fsGroup).
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("source", ["base", "overlay"])
def test_sidecar_env_names_settings_it_reads(source: str) -> None:
    """Every variable set on the sidecar is one it reads (a typo would be silently ignored)."""
    if source == "base":
        sidecar = sidecar_container(_pod(_base()))
    else:
        patch = load_yaml(OVERLAY / "unix-socket.yaml")[0]
        sidecar = sidecar_container(patch["spec"]["template"]["spec"])
    env = _env(sidecar)
    assert env, source
    assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV
    assert "COSYVOICE_SIDECAR_EMULATOR" not in env


def test_termination_grace_covers_the_sidecar_drain() -> None:
    """terminationGracePeriodSeconds exceeds drain grace + upstream cancel + pool close + margin."""
    pod = _pod(_base())
    env = _env(sidecar_container(pod))
    drain = float(env["COSYVOICE_SIDECAR_DRAIN_GRACE_S"])
    cancel = float(env["COSYVOICE_SIDECAR_CANCEL_TIMEOUT_S"])
    # After the drain grace the server cancels what is left (cancel timeout + 1 s)
    # and closes the pool; the app's own shutdown comes on top, before the sidecar's.
    assert pod["terminationGracePeriodSeconds"] >= drain + cancel + 1 + 5 + 10


def test_pod_is_hardened() -> None:
    """Non-root, read-only root file system, no privileges, no token, resources set."""
    pod = _pod(_base())
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] > 0
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


def test_sidecar_port_is_private() -> None:
    """No Service targets the sidecar's port; the NetworkPolicy admits only the app's port."""
    docs = _base()
    pod_labels = _deployment(docs)["spec"]["template"]["metadata"]["labels"]
    pod = _pod(docs)
    sidecar = sidecar_container(pod)
    port = _listen_port(sidecar)
    named = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
    named |= {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    for service in (d for d in docs if d["kind"] == "Service"):
        for service_port in service["spec"]["ports"]:
            target = service_port.get("targetPort", service_port["port"])
            assert named.get(target, target) != port, service["metadata"]["name"]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert "Ingress" in policy["spec"]["policyTypes"]
    for rule in policy["spec"]["ingress"]:
        # A rule without ports would admit every port, the sidecar's too.
        allowed = [named.get(p["port"], p["port"]) for p in rule.get("ports", [])]
        assert allowed, rule
        assert port not in allowed, rule


def test_selectors_match_the_pods() -> None:
    """The Deployment, Service, NetworkPolicy and PodDisruptionBudget select the pod's labels."""
    docs = _base()
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
