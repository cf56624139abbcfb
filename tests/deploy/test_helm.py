"""deploy/helm: the library chart lints, and the example chart renders the kustomize sidecar."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.charts import EXAMPLE_CHART, LIBRARY_CHART, RELEASE, Helm
from tests.deploy.conftest import BASE, HELM, kustomize_build, pod_spec, sidecar_container
from tests.deploy.test_manifests import KUBERNETES_VERSIONS, validate_docs


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def _without_env(container: Mapping[str, Any]) -> dict[str, Any]:
    """The container without its env, its mounts in a fixed order (their order means nothing)."""
    result = {k: v for k, v in container.items() if k != "env"}
    result["volumeMounts"] = sorted(container["volumeMounts"], key=lambda m: m["mountPath"])
    return result


def sidecar_volumes(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod's volumes the sidecar brings (named cosyvoice-sidecar-*), sorted by name."""
    found = [v for v in pod["volumes"] if v["name"].startswith("cosyvoice-sidecar-")]
    return sorted(found, key=lambda v: v["name"])


def assert_same_sidecar(rendered: list[dict[str, Any]], built: list[dict[str, Any]]) -> None:
    """Helm's and kustomize's sidecar agree: container, env (a set), its volumes."""
    helm_pod, kustomize_pod = pod_spec(rendered), pod_spec(built)
    helm_sidecar = sidecar_container(helm_pod)
    kustomize_sidecar = sidecar_container(kustomize_pod)
    # The environment is a set of settings: the order of its entries means nothing.
    assert _env(helm_sidecar) == _env(kustomize_sidecar)
    assert _without_env(helm_sidecar) == _without_env(kustomize_sidecar)
    assert sidecar_volumes(helm_pod) == sidecar_volumes(kustomize_pod)
    assert len(sidecar_volumes(helm_pod)) == len(helm_sidecar["volumeMounts"])


@pytest.mark.parametrize("chart", [LIBRARY_CHART, EXAMPLE_CHART])
def test_helm_lint_strict(helm: Helm, chart: str) -> None:
    """helm lint --strict passes for the library and the example chart."""
    result = helm.run("lint", "--strict", chart)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_library_chart_installs_nothing_by_itself(helm: Helm) -> None:
    """A library chart: it can only be included in the pods of the chart that depends on it."""
    (chart,) = yaml.safe_load_all((HELM / LIBRARY_CHART / "Chart.yaml").read_text())
    assert chart["type"] == "library"
    result = helm.run("template", RELEASE, LIBRARY_CHART)
    assert result.returncode != 0
    assert "library" in result.stderr.lower(), result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_helm_template_validates(helm: Helm, version: str, tmp_path: Path) -> None:
    """The example chart's rendering (PodMonitor on) passes strict schema validation."""
    docs = helm.template("cosyvoiceSidecar.metrics.podMonitor.enabled=true")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "Service",
    ]
    validate_docs(docs, version, tmp_path)


def test_helm_renders_the_kustomize_sidecar(helm: Helm) -> None:
    """Container, volumes, pod label and annotations, grace, scraper rule: as kustomize renders."""
    rendered = helm.template()
    built = kustomize_build(BASE)
    assert_same_sidecar(rendered, built)
    helm_pod, kustomize_pod = pod_spec(rendered), pod_spec(built)
    templates = [
        next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
        for docs in (rendered, built)
    ]
    assert templates[0]["metadata"]["annotations"] == templates[1]["metadata"]["annotations"]
    for template in templates:
        assert template["metadata"]["labels"]["cosyvoice-sidecar/injected"] == "true"
    assert (
        helm_pod["terminationGracePeriodSeconds"] == kustomize_pod["terminationGracePeriodSeconds"]
    )
    policies = [next(d for d in docs if d["kind"] == "NetworkPolicy") for docs in (rendered, built)]
    assert policies[0]["spec"]["ingress"] == policies[1]["spec"]["ingress"]


def test_helm_values_change_the_sidecar(helm: Helm) -> None:
    """Settings merge over the defaults; metrics off removes the port, env, annotations, rule."""
    docs = helm.template(
        "cosyvoiceSidecar.settings.COSYVOICE_SIDECAR_POOL_MAX_SIZE=20",
        "cosyvoiceSidecar.metrics.enabled=false",
        "cosyvoiceSidecar.image.tag=9.9.9",
    )
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    sidecar = sidecar_container(deployment["spec"]["template"]["spec"])
    env = _env(sidecar)
    assert env["COSYVOICE_SIDECAR_POOL_MAX_SIZE"] == "20"
    assert env["COSYVOICE_SIDECAR_POOL_MIN_IDLE"] == "2"  # a default kept
    assert not [name for name in env if name.startswith("OTEL_")]
    assert [p["name"] for p in sidecar["ports"]] == ["sidecar-grpc"]
    assert sidecar["image"].endswith(":9.9.9")
    assert "annotations" not in deployment["spec"]["template"]["metadata"]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == [8080]
