"""The image's install steps and entrypoint, run outside Docker from the Dockerfile itself."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import tomllib
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from cosyvoice.sidecar.v1 import status_pb2, status_pb2_grpc
from cosyvoice_sidecar_client import AsyncSynthesizerClient
from grpc_health.v1 import health_pb2
from redis.asyncio import Redis

from sidecar.config import FLEET_URL_FILE_ENV
from sidecar.emulator import Emulator, EmulatorKnobs
from sidecar.server import SERVICE_NAME
from tests.deploy.conftest import (
    BASE,
    FLEET_EXAMPLE,
    OVERLAY,
    REPO,
    Image,
    env_of,
    kustomize_build,
    pod_spec,
    sidecar_container,
)
from tests.deploy.serving import health, serving_address
from tests.fleet.redis_server import RedisServer
from tests.fleet.tls import make_server_tls
from tests.helpers import eventually, eventually_async, require_executable, sha256, task_record
from tests.timing import scaled

# The first test pays for the install (seconds with a warm pip cache).
pytestmark = pytest.mark.timeout(scaled(300))

KEY = "sk-deploy-test-key-from-file"
SECRET_MOUNT = "/var/run/secrets/dashscope"


# Tests bind loopback only: the manifests' metrics address, moved to a free loopback port.
LOOPBACK_METRICS = {
    "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
    "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
}


def _sidecar(target: Path) -> dict[str, Any]:
    """The sidecar container as `kustomize build` renders it for ``target``."""
    return sidecar_container(pod_spec(kustomize_build(target)))


def _manifest_env(sidecar: Mapping[str, Any]) -> dict[str, str]:
    return env_of(sidecar) | LOOPBACK_METRICS


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _key_file(tmp_path: Path, manifest_path: str) -> Path:
    """Write the key as `kubectl create secret --from-file` would (trailing newline)."""
    assert manifest_path.startswith(SECRET_MOUNT + "/"), manifest_path
    path = tmp_path / "secrets" / Path(manifest_path).name
    path.parent.mkdir()
    path.write_text(KEY + "\n", encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def _entrypoint(
    image: Image, env: Mapping[str, str], cwd: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Run the image's ENTRYPOINT; yield it and its address once it prints 'serving on'."""
    stderr = cwd.parent / f"{cwd.name}.stderr"
    with stderr.open("wb") as errors:
        proc = await asyncio.create_subprocess_exec(
            *image.entrypoint(env),
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
    try:
        address = await serving_address(proc, stderr, within=30)
        yield proc, address
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _terminate(proc: asyncio.subprocess.Process, within: float) -> int:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(scaled(within)):
        return await proc.wait()


def test_install_puts_the_wheel_in_a_clean_virtualenv(image: Image) -> None:
    """The install steps leave the project's wheel, and no dev tool, in the new venv."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    wheels = sorted(p.name for p in Path(image.local("/wheels")).iterdir())
    assert f"cosyvoice_sidecar-{version}-py3-none-any.whl" in wheels
    site = Path(image.local("/opt/venv")) / "lib"
    for package in ("sidecar", "cosyvoice_sidecar_client", "grpc_health"):
        assert list(site.glob(f"python3.*/site-packages/{package}/__init__.py")), package
    # Installed from the wheel, not linked to the work tree; runtime deps only.
    assert not list(site.glob("python3.*/site-packages/__editable__*"))
    for dev_only in ("pytest", "mypy", "grpc_tools"):
        assert not list(site.glob(f"python3.*/site-packages/{dev_only}")), dev_only


async def test_entrypoint_serves_with_environment_only(image: Image, tmp_path: Path) -> None:
    """The ENTRYPOINT with the manifest's env and a key file warms, answers SERVING, speaks."""
    sidecar = _sidecar(BASE)
    manifest_env = _manifest_env(sidecar)
    key_file = _key_file(tmp_path, manifest_env["DASHSCOPE_API_KEY_FILE"])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    venv = Path(image.local("/opt/venv"))
    before = _snapshot(venv)
    # Only this key opens a connection: a sidecar that used any other warms nothing.
    async with Emulator(EmulatorKnobs(api_keys=frozenset({KEY}))) as emulator:
        env = image.environment(
            {
                **manifest_env,
                "COSYVOICE_SIDECAR_LISTEN": "127.0.0.1:0",  # tests bind loopback only
                "COSYVOICE_SIDECAR_UPSTREAM_URL": emulator.url,
                "DASHSCOPE_API_KEY_FILE": str(key_file),
            }
        )
        assert not any(name.startswith("DASHSCOPE_API_KEY=") for name in env)
        async with _entrypoint(image, env, cwd) as (proc, address):
            readiness = sidecar["readinessProbe"]["grpc"].get("service", "")
            liveness = sidecar["livenessProbe"]["grpc"]["service"]
            for service in ("", SERVICE_NAME, readiness, liveness):
                assert await health(address, service) == health_pb2.HealthCheckResponse.SERVING

            async with AsyncSynthesizerClient(address) as client:
                result = await client.synthesize(
                    "Hello from the image entrypoint.", timeout=scaled(10)
                )
            assert result.audio
            task_id = result.started.task_id
            await eventually(
                lambda: task_record(emulator, task_id).outcome == "finished", what=task_id
            )
            record = task_record(emulator, task_id)
            assert (record.audio_bytes, record.audio_sha256) == (
                len(result.audio),
                sha256(result.audio),
            )

            grace = float(manifest_env["COSYVOICE_SIDECAR_DRAIN_GRACE_S"])
            assert await _terminate(proc, within=grace + 10) == 0
    # Read-only root file system: nothing written to the working directory or the code.
    assert list(cwd.iterdir()) == []
    assert _snapshot(venv) == before


def _kubelet_write(secret_dir: Path, files: Mapping[str, str], generation: int) -> None:
    """Write a Secret volume's files the way the kubelet does, rotation included.

    Each version lives in a timestamped directory; ``..data`` points at the
    current one and is swapped by an atomic rename; each visible file is a
    symlink through ``..data`` (so a mount without subPath sees new content).
    """
    version = secret_dir / f"..2026_01_01_00_00_0{generation}.000000000"
    version.mkdir(parents=True)
    for name, content in files.items():
        (version / name).write_text(content + "\n", encoding="utf-8")
    staging = secret_dir / "..data_tmp"
    staging.symlink_to(version.name)
    staging.rename(secret_dir / "..data")
    for name in files:
        link = secret_dir / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)


async def test_entrypoint_follows_a_rotated_secret(image: Image, tmp_path: Path) -> None:
    """A key rotated in the Secret volume reaches new upstream connections without a restart."""
    sidecar = _sidecar(BASE)
    manifest_env = _manifest_env(sidecar)
    key_name = Path(manifest_env["DASHSCOPE_API_KEY_FILE"]).name
    secret_dir = tmp_path / "secret"
    _kubelet_write(secret_dir, {key_name: KEY}, generation=1)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    async with Emulator(EmulatorKnobs(api_keys=frozenset({KEY}))) as emulator:
        env = image.environment(
            {
                **manifest_env,
                "COSYVOICE_SIDECAR_LISTEN": "127.0.0.1:0",
                "COSYVOICE_SIDECAR_UPSTREAM_URL": emulator.url,
                "DASHSCOPE_API_KEY_FILE": str(secret_dir / key_name),
            }
        )
        async with _entrypoint(image, env, cwd) as (proc, address):
            new_key = KEY + "-rotated"
            _kubelet_write(secret_dir, {key_name: new_key}, generation=2)
            # From now on only the new key opens a connection; the warm ones are
            # dropped (idle timeout), so every connection after this uses the file.
            emulator.update_knobs(api_keys=frozenset({new_key}), idle_timeout_s=0.2)
            opened = emulator.stats.connections_opened
            await eventually(
                lambda: emulator.stats.connections_open == 0, what="old connections closed"
            )
            emulator.update_knobs(idle_timeout_s=60.0)
            deadline = asyncio.get_running_loop().time() + scaled(20)
            async with AsyncSynthesizerClient(address) as client:
                while True:
                    try:
                        result = await client.synthesize("Rotated.", timeout=scaled(5))
                        break
                    except grpc.aio.AioRpcError as exc:
                        if asyncio.get_running_loop().time() > deadline:
                            raise AssertionError(f"no synthesis after rotation: {exc}") from exc
                        await asyncio.sleep(0.2)
            record = task_record(emulator, result.started.task_id)
            assert record.connection_id > opened  # a connection opened with the new key
            assert await _terminate(proc, within=20) == 0


async def _probe(command: list[str], env: Mapping[str, str], timeout: float) -> int:
    """Run an exec probe's command as the kubelet would; return its exit code."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(scaled(timeout)):
        return await proc.wait()


async def test_unix_socket_overlay_probes(
    image: Image, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The overlay's exec probes pass against the entrypoint on its socket, fail once it stops."""
    overlay = _sidecar(OVERLAY)
    (mount,) = [m for m in overlay["volumeMounts"] if m["name"] == "sidecar-socket"]
    socket_dir = str(tmp_path_factory.mktemp("sock"))  # short: socket paths max ~107 bytes

    def local(text: str) -> str:
        return text.replace(mount["mountPath"], socket_dir)

    base_env = _manifest_env(overlay)
    listen = local(base_env["COSYVOICE_SIDECAR_LISTEN"])
    assert listen.startswith("unix://"), listen
    key_file = _key_file(tmp_path, base_env["DASHSCOPE_API_KEY_FILE"])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    probes = {
        name: [local(word) for word in overlay[name]["exec"]["command"]]
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    python = Path(image.local("/opt/venv")) / "bin" / "python"
    for command in probes.values():
        assert command[0] == "python", command
        command[0] = str(python)  # what "python" is on the image's PATH
    async with Emulator() as emulator:
        env = image.environment(
            {
                **base_env,
                "COSYVOICE_SIDECAR_LISTEN": listen,
                "COSYVOICE_SIDECAR_UPSTREAM_URL": emulator.url,
                "DASHSCOPE_API_KEY_FILE": str(key_file),
            }
        )
        async with _entrypoint(image, env, cwd) as (proc, address):
            assert address == listen
            for name, command in probes.items():
                code = await _probe(command, image.environment(), 10)
                assert code == 0, f"{name} failed against a serving sidecar"
            assert await _terminate(proc, within=20) == 0
        for name, command in probes.items():
            code = await _probe(command, image.environment(), 10)
            assert code != 0, f"{name} passed with the sidecar stopped"


@pytest.mark.parametrize("follows", [False, True], ids=["default", "readiness-follows-upstream"])
async def test_a_dashscope_outage_keeps_the_pod_ready_unless_told_otherwise(
    image: Image, tmp_path: Path, follows: bool
) -> None:
    """Configured as the manifests say, the upstream killed: the readiness probe's service
    stays SERVING (the app's other routes stay in the Service), the Synthesizer health says
    NOT_SERVING and the metrics show the outage; with the option, readiness follows."""
    sidecar = _sidecar(BASE)
    manifest_env = _manifest_env(sidecar)
    if follows:
        manifest_env["COSYVOICE_SIDECAR_READINESS_FOLLOWS_UPSTREAM"] = "true"
    key_file = _key_file(tmp_path, manifest_env["DASHSCOPE_API_KEY_FILE"])
    readiness = sidecar["readinessProbe"]["grpc"].get("service", "")
    liveness = sidecar["livenessProbe"]["grpc"]["service"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    emulator = Emulator()
    await emulator.start()
    try:
        env = image.environment(
            {
                **manifest_env,
                "COSYVOICE_SIDECAR_LISTEN": "127.0.0.1:0",
                "COSYVOICE_SIDECAR_UPSTREAM_URL": emulator.url,
                "DASHSCOPE_API_KEY_FILE": str(key_file),
            }
        )
        async with _entrypoint(image, env, cwd) as (proc, address):
            assert await health(address, readiness) == health_pb2.HealthCheckResponse.SERVING
            await emulator.aclose()  # DashScope goes away

            async def outage_seen() -> bool:
                status = await health(address, SERVICE_NAME)
                return status == health_pb2.HealthCheckResponse.NOT_SERVING

            await eventually_async(outage_seen, timeout=15, what="the Synthesizer health")
            expected = (
                health_pb2.HealthCheckResponse.NOT_SERVING
                if follows
                else health_pb2.HealthCheckResponse.SERVING
            )
            assert await health(address, readiness) == expected
            assert await health(address, liveness) == health_pb2.HealthCheckResponse.SERVING
            stderr = cwd.parent / f"{cwd.name}.stderr"
            match = re.search(r"metrics for Prometheus on (http://\S+/metrics)", stderr.read_text())
            assert match, stderr.read_text()[-2000:]
            scrape = await asyncio.to_thread(_get, match.group(1))
            assert re.search(r"^cosyvoice_pool_ready\S* 0(\.0)?$", scrape, re.M), scrape[-2000:]
            assert await _terminate(proc, within=20) == 0
    finally:
        await emulator.aclose()


async def _status(address: str) -> status_pb2.GetStatusResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = status_pb2_grpc.SidecarStatusStub(channel)
        request = status_pb2.GetStatusRequest()
        reply: status_pb2.GetStatusResponse = await stub.GetStatus(request, timeout=scaled(5))
    return reply


@pytest.mark.parametrize("transport", ["password", "tls"])
async def test_entrypoint_with_the_fleet_manifest_enforces_the_quota_on_redis(
    image: Image, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, transport: str
) -> None:
    """The fleet example's env, the Redis URL (with its password) in a Secret volume: the
    sidecar reaches a real redis-server, GetStatus shows the quota enforced, calls take
    their slots there under the manifest's key, and the password shows nowhere.

    "tls": rediss://, the CA a second key of the same Secret, beside the URL file."""
    sidecar = _sidecar(FLEET_EXAMPLE)
    manifest_env = _manifest_env(sidecar)
    url_file = Path(manifest_env[FLEET_URL_FILE_ENV])
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == str(url_file.parent)]
    password = f"fleet-canary-{uuid.uuid4().hex}"
    tls = make_server_tls(tmp_path_factory.mktemp("tls")) if transport == "tls" else None
    redis_server = RedisServer(require_executable("redis-server"), password=password, tls=tls)
    secret_dir = tmp_path / "fleet-secret"  # the kubelet's view of mount["mountPath"]
    files = {}
    if tls is not None:
        files["ca.pem"] = tls.ca.read_text(encoding="utf-8").strip()
    key_file = _key_file(tmp_path, manifest_env["DASHSCOPE_API_KEY_FILE"])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    await redis_server.start()
    try:
        # The URL as an operator would write it: the CA named at its path in the pod.
        url = redis_server.url
        if tls is not None:
            url = url.replace(str(tls.ca), f"{mount['mountPath']}/ca.pem")
        assert password in url
        files[url_file.name] = url.replace(mount["mountPath"], str(secret_dir))
        _kubelet_write(secret_dir, files, generation=1)
        async with Emulator() as emulator:
            env = image.environment(
                {
                    **manifest_env,
                    "COSYVOICE_SIDECAR_LISTEN": "127.0.0.1:0",
                    "COSYVOICE_SIDECAR_UPSTREAM_URL": emulator.url,
                    "DASHSCOPE_API_KEY_FILE": str(key_file),
                    FLEET_URL_FILE_ENV: str(secret_dir / url_file.name),
                }
            )
            async with _entrypoint(image, env, cwd) as (proc, address):
                fleet = (await _status(address)).pool.fleet
                assert fleet.enforced, fleet
                assert fleet.quota == int(manifest_env["COSYVOICE_SIDECAR_FLEET_QUOTA"])
                assert fleet.key == manifest_env["COSYVOICE_SIDECAR_FLEET_KEY"]
                async with AsyncSynthesizerClient(address) as client:
                    for _ in range(2):
                        result = await client.synthesize("Within the quota.", timeout=scaled(10))
                        assert result.audio
                status = await _status(address)
                assert status.pool.fleet.enforced
                assert status.pool.fleet.round_trips > 0
                assert status.pool.fleet.redis_errors == 0, status.pool.fleet.last_error
                assert password not in str(status)

                # The slots were taken in that Redis, under the manifest's key.
                local_url = files[url_file.name]
                looker = Redis.from_url(local_url, socket_timeout=scaled(5), decode_responses=True)
                async with looker as redis:
                    metas = [str(k) for k in await redis.keys("*:meta")]
                    assert len(metas) == 1, metas
                    fleet_key = manifest_env["COSYVOICE_SIDECAR_FLEET_KEY"]
                    assert f"{{{fleet_key}}}" in metas[0], metas  # the key, as a hash tag
                    quota = await redis.hget(metas[0], "quota")
                    assert quota == manifest_env["COSYVOICE_SIDECAR_FLEET_QUOTA"]

                # The metric an alert on "Redis unreachable" reads.
                stderr = cwd.parent / f"{cwd.name}.stderr"
                log = stderr.read_text(errors="replace")
                match = re.search(r"metrics for Prometheus on (http://\S+/metrics)", log)
                assert match, log[-2000:]
                scrape = await asyncio.to_thread(_get, match.group(1))
                assert re.search(r"^cosyvoice_fleet_enforced\S* 1(\.0)?$", scrape, re.M), [
                    line for line in scrape.splitlines() if "fleet" in line
                ]
                assert await _terminate(proc, within=20) == 0
        log = (cwd.parent / f"{cwd.name}.stderr").read_text(errors="replace")
        assert password not in log
    finally:
        await redis_server.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=scaled(5)) as response:  # noqa: S310 - loopback
        text: str = response.read().decode()
        return text
