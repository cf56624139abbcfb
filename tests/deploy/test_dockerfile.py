"""The Dockerfile: hadolint-clean, and the runtime contract the manifests rely on."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib

from tests.deploy.conftest import (
    BASE,
    COMPONENT,
    DOCKERFILE,
    REPO,
    load_yaml,
    require_executable,
    sidecar_container,
    stage,
)
from tests.deploy.dockerfile import parse
from tests.timing import scaled


def test_hadolint_clean() -> None:
    """hadolint reports nothing at all, inline ignore pragmas disabled."""
    hadolint = require_executable("hadolint")
    result = subprocess.run(  # noqa: S603 - a pinned linter, no shell
        [hadolint, "--no-color", "--disable-ignore-pragma", "--failure-threshold", "info",
         str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_two_stages_build_then_slim_runtime() -> None:
    """Wheels are built in one stage; the final stage is a slim image that only installs them."""
    global_args, stages = parse(DOCKERFILE)
    assert [s.name for s in stages] == ["build", "runtime"]
    assert "slim" in stages[-1].base, stages[-1].base
    runtime = stages[-1]
    assert not runtime.all("COPY"), "the runtime stage gets wheels by bind mount, no source"
    for instruction in (i for s in stages for i in s.all("RUN")):
        # Installing is the shared script's job alone; no second copy of its commands.
        assert "pip" not in instruction.args, f"line {instruction.line}: {instruction.args}"
        assert "apt-get" not in instruction.args, f"line {instruction.line}: no compilers"
    assert global_args["RUNTIME_IMAGE"].startswith("python:3.11")


def test_base_images_are_pinned_by_digest() -> None:
    """Both base images are a tag pinned to a sha256 digest, of the same Python minor version."""
    global_args, stages = parse(DOCKERFILE)
    refs = {name: global_args[name] for name in ("BUILD_IMAGE", "RUNTIME_IMAGE")}
    for name, ref in refs.items():
        assert re.fullmatch(r"python:3\.11-[a-z0-9.-]+@sha256:[0-9a-f]{64}", ref), (name, ref)
    # Wheels built in one are installed in the other.
    assert {ref.split("-")[0] for ref in refs.values()} == {"python:3.11"}
    assert [s.base for s in stages] == [refs["BUILD_IMAGE"], refs["RUNTIME_IMAGE"]]


def test_runtime_contract() -> None:
    """Non-root numeric user, SIGTERM, `cosyvoice-sidecar serve`, loopback unless told."""
    runtime = stage("runtime")
    (user,) = [i.args for i in runtime.all("USER")]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), user  # numeric, so runAsNonRoot can verify it
    assert gid.isdigit(), user
    assert int(uid) > 0, user
    assert [i.args for i in runtime.all("STOPSIGNAL")] == ["SIGTERM"]
    assert runtime.exec_form("ENTRYPOINT") == ["cosyvoice-sidecar", "serve"]
    assert not runtime.all("CMD")
    env = runtime.pairs("ENV")
    # The listen address stays the sidecar's loopback default unless the pod says otherwise.
    assert "COSYVOICE_SIDECAR_LISTEN" not in env
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root file system
    (deployment,) = [d for d in load_yaml(BASE / "deployment.yaml") if d["kind"] == "Deployment"]
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(uid), int(gid))
    # The component sets the image's user on the sidecar's container itself.
    (patch,) = load_yaml(COMPONENT / "sidecar.yaml")
    sidecar = sidecar_container(patch["spec"]["template"]["spec"])
    container_security = sidecar["securityContext"]
    assert (container_security["runAsUser"], container_security["runAsGroup"]) == (
        int(uid),
        int(gid),
    )


def test_no_secret_in_the_image() -> None:
    """No ENV or ARG carries a key or token; they arrive at run time only."""
    global_args, stages = parse(DOCKERFILE)
    names = set(global_args)
    for s in stages:
        names |= set(s.pairs("ENV")) | set(s.arg_defaults())
    for name in names:
        assert not any(word in name for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")), name


def test_oci_labels() -> None:
    """The OCI labels are set, and the version label defaults to the project's version."""
    runtime = stage("runtime")
    labels = runtime.pairs("LABEL")
    for name in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{name}"), name
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert runtime.arg_defaults()["VERSION"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]


def test_dockerignore_lets_in_every_copy_source() -> None:
    """The allow-list .dockerignore re-includes every path a COPY names, and starts from '*'."""
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for copy in stage("build").all("COPY"):
        *sources, _ = shlex.split(copy.args)
        for source in sources:
            assert source.rstrip("/") in allowed, f"line {copy.line}: {source} is ignored"
            assert (REPO / source).exists(), source
