"""The container image for real: built from the Dockerfile with podman, run with buildah.

No registry is reachable here, so ``scripts/build-image.sh`` builds on a Debian
base it makes with debootstrap (cached under ``.tools/``), passed in through the
Dockerfile's ``BUILD_IMAGE``/``RUNTIME_IMAGE`` arguments. Both podman and
buildah run the steps with chroot isolation, which needs no cgroups; the
container shares the host's network, so the test reaches it on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from grpc_health.v1 import health_pb2

from tests.deploy.conftest import REPO, require_executable
from tests.deploy.serving import health, serving_address
from tests.timing import scaled

# A cold cache runs debootstrap (about 3 minutes) and downloads the wheels.
pytestmark = pytest.mark.timeout(scaled(1200))

TAG = "localhost/cosyvoice-sidecar:test"
IMAGE_UID = 10001


@dataclass(frozen=True)
class BuiltImage:
    """The image's name and the config podman recorded for it."""

    tag: str
    config: dict[str, Any]


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own tools, no shell
        argv, capture_output=True, text=True, timeout=scaled(timeout), check=False
    )


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The image built by scripts/build-image.sh (make image), once per session."""
    for tool in ("podman", "buildah", "debootstrap"):
        require_executable(tool)
    if os.geteuid() != 0:
        message = "building the image needs root (debootstrap, rootful podman)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    log = tmp_path_factory.mktemp("image-build") / "build.log"
    with log.open("wb") as out:
        result = subprocess.run(  # noqa: S603 - the repository's own script
            [str(REPO / "scripts" / "build-image.sh"), TAG],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=scaled(1100),
            check=False,
        )
    if result.returncode != 0:
        raise AssertionError(f"build failed:\n{log.read_text(errors='replace')[-5000:]}")
    podman = require_executable("podman")
    inspected = _run([podman, "image", "inspect", TAG], 30)
    assert inspected.returncode == 0, inspected.stderr
    (image,) = json.loads(inspected.stdout)
    return BuiltImage(TAG, image["Config"])


@contextlib.contextmanager
def _working_container(image: BuiltImage) -> Any:
    buildah = require_executable("buildah")
    name = f"cosyvoice-test-{uuid.uuid4().hex[:12]}"
    created = _run([buildah, "from", "--name", name, image.tag], 60)
    assert created.returncode == 0, created.stderr
    try:
        yield name
    finally:
        _run([buildah, "rm", name], 60)


def _buildah_run(container: str, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """``buildah run`` as a container runtime would start the process: chroot, host network."""
    options = [f"--env={k}={v}" for k, v in (env or {}).items()]
    return [
        require_executable("buildah"),
        "run",
        "--isolation",
        "chroot",
        "--network",
        "host",
        *options,
        container,
        "--",
        *argv,
    ]


def _descendants(root: int) -> list[int]:
    """Every process below ``root``, from /proc (the container's processes are the host's)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and file-system UID of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(v) for v in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


@contextlib.asynccontextmanager
async def _serving(
    container: str, argv: list[str], env: dict[str, str], stderr: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start ``argv`` in the container; yield it and its address once it prints 'serving on'."""
    with stderr.open("wb") as errors:
        proc = await asyncio.create_subprocess_exec(
            *_buildah_run(container, argv, env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
    try:
        address = await serving_address(proc, stderr, within=60)
        yield proc, address
    finally:
        if proc.returncode is None:
            for pid in _descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            await proc.wait()


def test_image_config_runs_the_sidecar_as_10001(built_image: BuiltImage) -> None:
    """The built image's config: user 10001, `cosyvoice-sidecar serve`, SIGTERM, no listen env."""
    config = built_image.config
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["cosyvoice-sidecar", "serve"]
    assert config.get("StopSignal") == "SIGTERM"
    env = dict(item.partition("=")[::2] for item in config["Env"])
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert "COSYVOICE_SIDECAR_LISTEN" not in env  # loopback unless told
    assert not any(k.startswith("DASHSCOPE_API_KEY") for k in env)


def test_image_keeps_no_build_input(built_image: BuiltImage) -> None:
    """Neither the source tree nor the wheels reached the runtime image's layers."""
    with _working_container(built_image) as container:
        # podman leaves the empty mount point of a RUN --mount behind (/src);
        # what matters is that nothing was written below it.
        script = "find /src /wheels -mindepth 1 2>/dev/null; test -x /opt/venv/bin/python"
        result = _run(_buildah_run(container, ["sh", "-c", script]), 60)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "", result.stdout[:2000]
        result = _run(_buildah_run(container, ["id", "-u"]), 60)
        assert result.stdout.strip() == str(IMAGE_UID), result.stderr


async def test_image_serves_speech_and_metrics(built_image: BuiltImage, tmp_path: Path) -> None:
    """The image's entrypoint: SERVING, audio, /metrics, as UID 10001; SIGTERM exits 0."""
    argv = [*built_image.config["Entrypoint"], "--emulator", "--listen", "127.0.0.1:0"]
    env = {
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
    }
    stderr = tmp_path / "sidecar.stderr"
    with _working_container(built_image) as container:
        async with _serving(container, argv, env, stderr) as (proc, address):
            assert await health(address, "") == health_pb2.HealthCheckResponse.SERVING
            async with AsyncSynthesizerClient(address) as client:
                result = await client.synthesize("Hello from the container.", timeout=scaled(10))
            assert result.audio
            assert result.completed.audio_bytes == len(result.audio)

            log = _tail(stderr)
            match = re.search(r"metrics for Prometheus on (http://\S+/metrics)", log)
            assert match, log
            metrics = await asyncio.to_thread(_get, match.group(1))
            assert "cosyvoice_pool_connection_opened_total" in metrics, metrics[:2000]

            serving = _sidecar_processes(proc.pid)
            assert serving, "no sidecar process under buildah run"
            for pid in serving:
                assert _uids(pid) == [IMAGE_UID] * 4, pid
            # What a container runtime does on stop: SIGTERM to the process.
            # buildah's exec helper runs the interpreter: signal the innermost one.
            (python,) = [p for p in serving if not set(_descendants(p)) & set(serving)]
            os.kill(python, signal.SIGTERM)
            async with asyncio.timeout(scaled(30)):
                assert await proc.wait() == 0, _tail(stderr)


def _sidecar_processes(root: int) -> list[int]:
    """The processes below ``root`` that run cosyvoice-sidecar (not zombies)."""
    found = []
    for pid in _descendants(root):
        with contextlib.suppress(OSError):
            if b"cosyvoice-sidecar" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-5000:]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=scaled(5)) as response:  # noqa: S310 - loopback
        text: str = response.read().decode()
        return text
