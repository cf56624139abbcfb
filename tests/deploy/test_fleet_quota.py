"""The fleet quota deployed: the kustomize component, its example and the Helm values.

The Redis URL (which may hold a password) reaches the sidecar only as a file
of a Secret volume, and the settings rendered beside it build a valid fleet
configuration. The sidecar started with this environment against a real Redis
is in test_image.py.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import (
    API_KEY_FILE_ENV,
    FLEET_URL_FILE_ENV,
    Config,
    add_serve_arguments,
    config_from_args,
)
from tests.deploy.charts import Helm
from tests.deploy.conftest import (
    BASE,
    DEPLOY,
    FLEET_COMPONENT,
    FLEET_EXAMPLE,
    HELM,
    REPO,
    env_of,
    kustomize_build,
    pod_spec,
    sidecar_container,
)
from tests.deploy.test_helm import assert_same_sidecar
from tests.deploy.test_manifests import KUBERNETES_VERSIONS, validate_docs

FLEET_SECRET = "cosyvoice-fleet-redis"
FLEET_ENV = {
    "COSYVOICE_SIDECAR_FLEET_QUOTA",
    "COSYVOICE_SIDECAR_FLEET_KEY",
    "COSYVOICE_SIDECAR_FLEET_START_RATE",
    "COSYVOICE_SIDECAR_FLEET_LEASE_TTL_S",
    "COSYVOICE_SIDECAR_FLEET_ON_REDIS_DOWN",
}
# What the example chart's values turn on, to match the kustomize example.
HELM_FLEET = (
    "cosyvoiceSidecar.fleet.enabled=true",
    "cosyvoiceSidecar.settings.COSYVOICE_SIDECAR_POOL_MAX_SIZE=20",
)
REDIS_URL = re.compile(r"rediss?://", re.IGNORECASE)
FLEET_DOC = REPO / "docs" / "fleet-quota.md"


def _strings(node: Any) -> Iterator[str]:
    """Every string of a parsed YAML document: keys, values, inline patches."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _redis_urls(docs: list[dict[str, Any]]) -> list[str]:
    return [text for text in _strings(docs) if REDIS_URL.search(text)]


def _component_alone(tmp_path: Path) -> list[dict[str, Any]]:
    """The component with its own values, added to the base."""
    tmp_path.mkdir()
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes relative paths only.
                "resources": [os.path.relpath(BASE, tmp_path)],
                "components": [os.path.relpath(FLEET_COMPONENT, tmp_path)],
            }
        ),
        encoding="utf-8",
    )
    return kustomize_build(tmp_path)


def _config(env: dict[str, str], tmp_path: Path) -> Config:
    """The sidecar's configuration from a rendered env, its two files made locally."""
    key = tmp_path / "api-key"
    key.write_text("sk-fleet-deploy-test\n", encoding="utf-8")
    url = tmp_path / "redis-url"
    url.write_text("redis://:not-in-any-manifest@redis.example:6379/0\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    local = env | {API_KEY_FILE_ENV: str(key), FLEET_URL_FILE_ENV: str(url)}
    return config_from_args(parser.parse_args([]), local)


def _assert_url_from_a_secret_directory(pod: dict[str, Any], secret: str, key: str) -> None:
    """The URL file's directory is the mount of Secret ``secret``: read-only, no subPath,
    0444, the sidecar's alone; the file is its ``key``."""
    sidecar = sidecar_container(pod)
    path = Path(env_of(sidecar)[FLEET_URL_FILE_ENV])
    assert path.name == key
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == str(path.parent)]
    # A subPath mount is never updated by the kubelet, and would hide the
    # Secret's other keys (a CA for rediss://).
    assert "subPath" not in mount
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == secret
    assert "items" not in volume["secret"]  # every key of the Secret, as a file
    assert volume["secret"]["defaultMode"] == 0o444
    mounted_by = [
        c["name"]
        for c in pod["initContainers"] + pod["containers"]
        if any(m["name"] == mount["name"] for m in c.get("volumeMounts", []))
    ]
    assert mounted_by == ["cosyvoice-sidecar"]


def test_example_shares_the_quota_through_a_secret_file(tmp_path: Path) -> None:
    """The example: the URL file from a Secret directory, the settings it patched parse."""
    pod = pod_spec(kustomize_build(FLEET_EXAMPLE))
    _assert_url_from_a_secret_directory(pod, FLEET_SECRET, "redis-url")
    env = env_of(sidecar_container(pod))
    assert set(env) >= FLEET_ENV, FLEET_ENV - set(env)
    config = _config(env, tmp_path)
    assert config.fleet is not None
    fleet = config.fleet
    assert (fleet.quota, fleet.key, fleet.start_rate) == (30, "acct-main/cosyvoice-v3", 15.0)
    assert (fleet.lease_ttl_s, fleet.on_redis_down) == (15.0, "open")
    # A pod may burst past its share, never past the fleet's quota.
    assert config.pool.max_size <= fleet.quota


def test_component_values_alone_are_a_valid_fleet(tmp_path: Path) -> None:
    """The component's own values, unpatched, build a fleet configuration the sidecar accepts."""
    pod = pod_spec(_component_alone(tmp_path / "build"))
    _assert_url_from_a_secret_directory(pod, FLEET_SECRET, "redis-url")
    env = env_of(sidecar_container(pod))
    config = _config(env, tmp_path)
    assert config.fleet is not None
    assert config.fleet.quota == int(env["COSYVOICE_SIDECAR_FLEET_QUOTA"])
    # Everything the base had is still there: the component only adds.
    base = env_of(sidecar_container(pod_spec(kustomize_build(BASE))))
    assert base.items() <= env.items()


def test_no_redis_url_in_clear_anywhere_in_deploy() -> None:
    """No manifest, patch or values file holds a Redis URL, and no build renders one or a Secret."""
    for path in sorted(DEPLOY.rglob("*.yaml")) + sorted(HELM.rglob("values.yaml")):
        with path.open(encoding="utf-8") as stream:
            docs = [doc for doc in yaml.safe_load_all(stream) if doc]
        # Comments may show the URL's shape; data may not.
        assert _redis_urls(docs) == [], path
    docs = kustomize_build(FLEET_EXAMPLE)
    assert _redis_urls(docs) == []
    # The Secret is yours to create: none is rendered, not even a placeholder.
    assert not [d for d in docs if d["kind"] in ("Secret", "ConfigMap")]


def test_helm_renders_no_redis_url_and_the_check_would_see_one(helm: Helm) -> None:
    """helm template with the fleet on holds no URL; one passed as plain env would be found."""
    docs = helm.template(*HELM_FLEET)
    assert _redis_urls(docs) == []
    assert not [d for d in docs if d["kind"] in ("Secret", "ConfigMap")]
    leaked = helm.template(
        *HELM_FLEET,
        "cosyvoiceSidecar.extraEnv[0].name=COSYVOICE_SIDECAR_FLEET_REDIS_URL",
        "cosyvoiceSidecar.extraEnv[0].value=redis://:oops@redis:6379/0",
    )
    assert _redis_urls(leaked) == ["redis://:oops@redis:6379/0"]


def test_helm_fleet_is_off_by_default(helm: Helm) -> None:
    """Without fleet.enabled: no fleet variable, no Redis Secret volume."""
    pod = pod_spec(helm.template())
    sidecar = sidecar_container(pod)
    assert not [name for name in env_of(sidecar) if "FLEET" in name]
    secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert FLEET_SECRET not in secrets


def test_helm_renders_the_kustomize_fleet(helm: Helm) -> None:
    """The example chart's fleet values render the sidecar the kustomize example builds."""
    assert_same_sidecar(helm.template(*HELM_FLEET), kustomize_build(FLEET_EXAMPLE))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_helm_fleet_validates(helm: Helm, version: str, tmp_path: Path) -> None:
    """The example chart with the fleet on passes strict schema validation."""
    validate_docs(helm.template(*HELM_FLEET), version, tmp_path)


def test_helm_fleet_values_change_the_sidecar(helm: Helm, tmp_path: Path) -> None:
    """Secret name and key, no start rate, closed: rendered as set, and accepted by the sidecar."""
    pod = pod_spec(
        helm.template(
            "cosyvoiceSidecar.fleet.enabled=true",
            "cosyvoiceSidecar.fleet.redisUrlSecret.name=shared-redis",
            "cosyvoiceSidecar.fleet.redisUrlSecret.key=url",
            "cosyvoiceSidecar.fleet.startRate=null",
            "cosyvoiceSidecar.fleet.quota=7",
            "cosyvoiceSidecar.fleet.leaseTtlSeconds=6",
            "cosyvoiceSidecar.fleet.onRedisDown=closed",
        )
    )
    _assert_url_from_a_secret_directory(pod, "shared-redis", "url")
    env = env_of(sidecar_container(pod))
    assert "COSYVOICE_SIDECAR_FLEET_START_RATE" not in env  # the sidecar's "no limit"
    config = _config(env, tmp_path)
    assert config.fleet is not None
    fleet = config.fleet
    assert (fleet.quota, fleet.start_rate, fleet.lease_ttl_s) == (7, None, 6.0)
    assert fleet.on_redis_down == "closed"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["cosyvoiceSidecar.fleet.quota=null"], "fleet.quota is required"),
        (["cosyvoiceSidecar.fleet.onRedisDown=shut"], "onRedisDown must be open or closed"),
    ],
    ids=["no-quota", "bad-on-redis-down"],
)
def test_helm_fleet_refuses_incomplete_values(helm: Helm, values: list[str], message: str) -> None:
    """A fleet without a quota, or with an unknown Redis-down policy, does not render."""
    result = helm.render("cosyvoiceSidecar.fleet.enabled=true", *values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_documented_egress_policy_validates_and_selects_the_sidecars(
    version: str, tmp_path: Path
) -> None:
    """The NetworkPolicy of docs/fleet-quota.md is valid and selects the pods with a sidecar,
    admitting Redis, DashScope (443) and DNS by port."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", FLEET_DOC.read_text(encoding="utf-8"), re.M | re.S)
    docs = [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]
    (policy,) = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    validate_docs([policy], version, tmp_path)
    template = next(d for d in kustomize_build(FLEET_EXAMPLE) if d["kind"] == "Deployment")
    labels = template["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Egress"]
    ports = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {(6379, "TCP"), (443, "TCP"), (53, "UDP"), (53, "TCP")} <= ports
