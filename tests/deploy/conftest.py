"""The container image without a Docker engine: its install steps in a clean virtualenv.

:func:`image` copies the build context the Dockerfile's ``COPY`` lines name
into a temporary "image root", runs the Dockerfile's own ``RUN`` lines that
call ``scripts/install-runtime.sh`` (build stage, then runtime stage, into a
virtualenv made with ``python -m venv``), and hands back how to start the
entrypoint with the runtime stage's environment. Image paths (``/src``,
``/wheels``, ``/opt/venv``) map to the same paths under that root.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.charts import EXAMPLE_CHART, LIBRARY_CHART, Helm
from tests.deploy.dockerfile import Stage, parse
from tests.helpers import require_executable
from tests.timing import scaled

__all__ = [
    "BASE",
    "COMPONENT",
    "DEPLOY",
    "DOCKERFILE",
    "EXAMPLE",
    "FLEET_COMPONENT",
    "FLEET_EXAMPLE",
    "HELM",
    "OVERLAY",
    "PODMONITOR",
    "REPO",
    "Image",
    "env_of",
    "kustomize_build",
    "load_yaml",
    "pod_spec",
    "require_executable",
    "sidecar_container",
    "stage",
]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy" / "kubernetes"
BASE = DEPLOY / "base"
OVERLAY = DEPLOY / "overlays" / "unix-socket"
COMPONENT = DEPLOY / "components" / "sidecar"
PODMONITOR = DEPLOY / "components" / "podmonitor"
EXAMPLE = DEPLOY / "examples" / "existing-app"
FLEET_COMPONENT = DEPLOY / "components" / "fleet-quota"
FLEET_EXAMPLE = DEPLOY / "examples" / "fleet-quota"
HELM = REPO / "deploy" / "helm"
SCRIPT = "install-runtime.sh"
# Where the image keeps what the test rebuilds; any other absolute path in a
# RUN line of the install would mean the test no longer mirrors the image.
IMAGE_DIRS = ("/src", "/wheels", "/opt/venv")
# The PATH of the python base image, before the Dockerfile prepends to it.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
# Unset for the install steps: the image keeps no pip cache, the test reuses
# the machine's cache so the install takes seconds; the rest would leak the
# developer's virtualenv into the "clean" one.
_DROPPED_ENV = ("PIP_NO_CACHE_DIR", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")


def stage(name: str) -> Stage:
    """Return the Dockerfile stage called ``name``."""
    _, stages = parse(DOCKERFILE)
    for candidate in stages:
        if candidate.name == name:
            return candidate
    raise AssertionError(f"the Dockerfile has no stage {name!r}")


def load_yaml(path: Path) -> list[dict[str, Any]]:
    """Return the YAML documents of ``path`` (empty documents dropped)."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def kustomize_build(target: Path) -> list[dict[str, Any]]:
    """Return the documents ``kustomize build target`` renders (the pinned kustomize)."""
    kustomize = require_executable("kustomize")
    result = subprocess.run(  # noqa: S603 - a pinned tool, no shell
        [kustomize, "build", str(target)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the pod spec of the one Deployment among ``docs``."""
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    """Return a container's literal environment as a dict."""
    return {e["name"]: e["value"] for e in container.get("env", [])}


def sidecar_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ``cosyvoice-sidecar`` entry of a pod spec's initContainers."""
    for container in pod.get("initContainers", []):
        if container["name"] == "cosyvoice-sidecar":
            result: dict[str, Any] = container
            return result
    raise AssertionError("no initContainers entry named cosyvoice-sidecar")


@dataclass(frozen=True)
class Image:
    """The image's file system, rebuilt under ``root`` by the image's own install steps."""

    root: Path

    def local(self, path: str) -> str:
        """Map an absolute path of the image to this machine."""
        if path.startswith(IMAGE_DIRS):
            return str(self.root / path.lstrip("/"))
        return path

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The runtime stage's ENV (paths mapped), plus ``extra``: nothing inherited."""
        env = {"HOME": "/nonexistent"}  # the image user's home, which does not exist
        for key, value in stage("runtime").pairs("ENV").items():
            value = value.replace("$PATH", BASE_IMAGE_PATH).replace("${PATH}", BASE_IMAGE_PATH)
            env[key] = ":".join(self.local(part) for part in value.split(":"))
        env.update(extra or {})
        return env

    def entrypoint(self, env: Mapping[str, str]) -> list[str]:
        """The runtime stage's ENTRYPOINT, its program resolved on ``env``'s PATH."""
        argv = stage("runtime").exec_form("ENTRYPOINT")
        program = shutil.which(argv[0], path=env["PATH"])
        assert program is not None, f"{argv[0]} is not on the image's PATH {env['PATH']}"
        return [program, *argv[1:]]


def _copy_context(root: Path) -> Path:
    """Copy what the build stage's COPY lines name, as Docker would; return its WORKDIR."""
    build = stage("build")
    (workdir,) = [i.args for i in build.all("WORKDIR")]
    # What .dockerignore leaves out of the directories it lets in.
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info")
    target = Path(Image(root).local(workdir))
    for copy in build.all("COPY"):
        assert not copy.options, f"line {copy.line}: the test copies only from the context"
        *sources, dest = shlex.split(copy.args)
        into = target / dest
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, into, ignore=ignore, dirs_exist_ok=True)
            else:
                into.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into / origin.name)
    return target


def _install_runs(stage_name: str) -> list[str]:
    runs = [i for i in stage(stage_name).all("RUN") if SCRIPT in i.args]
    assert len(runs) == 1, f"stage {stage_name} should run {SCRIPT} exactly once"
    (run,) = runs
    for option in run.options:
        # A bind mount from the build stage must keep its path, or this
        # test's one shared root would not be the image's layout.
        fields = dict(kv.partition("=")[::2] for kv in option.removeprefix("--mount=").split(","))
        assert fields.get("source") == fields.get("target"), f"line {run.line}: {option}"
    words = shlex.split(run.args)
    for word in words:
        if word.startswith("/"):
            assert word.startswith(IMAGE_DIRS), f"line {run.line}: unknown image path {word}"
    return words


def _run_step(image: Image, stage_name: str, cwd: Path, log: Path) -> None:
    words = [image.local(word) for word in _install_runs(stage_name)]
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    for key, value in stage(stage_name).pairs("ENV").items():
        if key in _DROPPED_ENV:
            continue
        value = value.replace("$PATH", os.environ.get("PATH", BASE_IMAGE_PATH))
        env[key] = ":".join(image.local(part) for part in value.split(":"))
    env["PYTHON"] = sys.executable  # the image's python3, the same minor version
    bash = shutil.which("bash")
    assert bash is not None, "bash is required (the image's RUN lines are shell)"
    with log.open("ab") as out:
        result = subprocess.run(  # noqa: S603 - the Dockerfile's own command
            [bash, "-euo", "pipefail", "-c", shlex.join(words)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=scaled(300),
            check=False,
        )
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{stage_name} stage install failed ({result.returncode}):\n{tail}")


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The image's install steps, run once per session into a clean virtualenv."""
    root = tmp_path_factory.mktemp("image")
    built = Image(root)
    log = root / "install.log"
    workdir = _copy_context(root)
    _run_step(built, "build", workdir, log)
    venv = Path(built.local("/opt/venv"))
    subprocess.run(  # noqa: S603 - this interpreter, no shell
        [sys.executable, "-m", "venv", str(venv)], check=True, timeout=scaled(120)
    )
    _run_step(built, "runtime", root, log)
    return built


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """deploy/helm copied aside, the example's dependency on the library resolved there."""
    root = tmp_path_factory.mktemp("helm")
    for chart in (LIBRARY_CHART, EXAMPLE_CHART):
        shutil.copytree(HELM / chart, root / chart)
    tool = Helm(root)
    # file://../cosyvoice-sidecar: packaged into example-app/charts, no network.
    result = tool.run("dependency", "update", "--skip-refresh", EXAMPLE_CHART)
    assert result.returncode == 0, result.stderr
    return tool
