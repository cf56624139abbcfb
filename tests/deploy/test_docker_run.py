"""The ``docker run`` lines of the docs work with the image as built.

No container engine that can publish ports runs here, so each documented
``docker run`` is read the way Docker would read it: its published ports must be
ones the sidecar listens on (on every interface of the container: ``-p`` never
reaches the container's loopback), every variable one the sidecar reads, every
``*_FILE`` inside a read-only mounted directory that the same snippet fills,
and its environment and arguments a configuration ``cosyvoice-sidecar serve``
accepts.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.config import (
    API_KEY_FILE_ENV,
    AUTH_TOKEN_FILE_ENV,
    FLEET_URL_FILE_ENV,
    Config,
    add_serve_arguments,
    config_from_args,
)
from tests.deploy.conftest import BASE, REPO, load_yaml, stage
from tests.deploy.test_manifests import KNOWN_ENV

DOCS = (REPO / "README.md", REPO / "docs" / "deployment.md", REPO / "docs" / "fleet-quota.md")
FILE_ENV = (API_KEY_FILE_ENV, FLEET_URL_FILE_ENV, AUTH_TOKEN_FILE_ENV)
# The docker run options the docs may use; any other fails the test, so that
# this reader never silently misreads a line.
VALUED = {"-p", "--publish", "-v", "--volume", "-e", "--env", "--tmpfs", "--stop-timeout"}
FLAGS = {"--rm", "--read-only"}
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)
DEFAULT_METRICS_PORT = "9464"  # OTEL_EXPORTER_PROMETHEUS_PORT's default


@dataclass
class DockerRun:
    """One ``docker run`` command of a doc, and the shell lines around it."""

    where: str
    block: list[list[str]]  # every command of its code block, as words
    options: list[tuple[str, str]] = field(default_factory=list)
    image: str = ""
    args: list[str] = field(default_factory=list)

    def values(self, *names: str) -> list[str]:
        return [value for option, value in self.options if option in names]

    @property
    def env(self) -> dict[str, str]:
        return dict(v.partition("=")[::2] for v in self.values("-e", "--env"))


def _commands(block: str) -> list[list[str]]:
    """The block's commands as words: continuations joined, comments dropped, split at &&."""
    commands: list[list[str]] = [[]]
    for line in block.replace("\\\n", " ").splitlines():
        for word in shlex.split(line, comments=True):
            if word == "&&":
                commands.append([])
            else:
                commands[-1].append(word)
        commands.append([])
    return [words for words in commands if words]


def _docker_runs() -> list[DockerRun]:
    found: list[DockerRun] = []
    for doc in DOCS:
        for block in BLOCK.findall(doc.read_text(encoding="utf-8")):
            commands = [c for c in _commands(block) if c]
            for words in commands:
                if words[:2] != ["docker", "run"]:
                    continue
                run = DockerRun(f"{doc.name}#{len(found) + 1}", commands)
                rest = words[2:]
                while rest and rest[0].startswith("-"):
                    option = rest.pop(0)
                    if option in FLAGS:
                        run.options.append((option, ""))
                    else:
                        assert option in VALUED, f"{run.where}: unknown option {option}"
                        run.options.append((option, rest.pop(0)))
                run.image, run.args = rest[0], rest[1:]
                found.append(run)
    return found


RUNS = _docker_runs()


def _host_path(path: str) -> str:
    return path.replace("$HOME", "~").replace("${HOME}", "~")


def _made(run: DockerRun, directory: str) -> list[str]:
    """The modes of the snippet's ``mkdir -p -m MODE directory`` commands."""
    return [
        c[3]
        for c in run.block
        if c[:3] == ["mkdir", "-p", "-m"] and len(c) == 5 and _host_path(c[4]) == directory
    ]


def test_the_docs_have_the_docker_run_lines() -> None:
    """A try on the emulator (the README quotes it), a run with a key file, one with the fleet."""
    assert len(RUNS) == 4, [r.where for r in RUNS]
    assert any("--emulator" in r.args and API_KEY_FILE_ENV not in r.env for r in RUNS)
    assert any(API_KEY_FILE_ENV in r.env for r in RUNS)
    assert any(FLEET_URL_FILE_ENV in r.env for r in RUNS)


def test_the_image_listens_on_loopback_unless_told() -> None:
    """What the docs explain: the default is loopback, and the image does not change it."""
    host, _, _ = Config().listen.rpartition(":")
    assert host == "127.0.0.1"
    assert "COSYVOICE_SIDECAR_LISTEN" not in stage("runtime").pairs("ENV")


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.where)
def test_published_ports_are_the_ones_it_listens_on(run: DockerRun) -> None:
    """-p targets the listen port on 0.0.0.0 (and metrics on 0.0.0.0), on the host's loopback."""
    env = run.env
    host, _, port = env["COSYVOICE_SIDECAR_LISTEN"].rpartition(":")
    assert host == "0.0.0.0", f"{run.where}: -p cannot reach the container's loopback"
    metrics = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", DEFAULT_METRICS_PORT)
    published = []
    for spec in run.values("-p", "--publish"):
        host_ip, host_port, container_port = spec.split(":")
        # The docs publish on the host's loopback; -p PORT:PORT is explained, not shown.
        assert host_ip == "127.0.0.1", spec
        assert host_port == container_port, spec
        published.append(container_port)
    assert port in published, run.where
    for container_port in published:
        if container_port == port:
            continue
        assert container_port == metrics, f"{run.where}: {container_port} serves nothing"
        assert env.get("OTEL_METRICS_EXPORTER") == "prometheus", run.where
        assert env.get("OTEL_EXPORTER_PROMETHEUS_HOST") == "0.0.0.0", run.where


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.where)
def test_variables_are_ones_the_sidecar_reads(run: DockerRun) -> None:
    """Every -e names a variable the sidecar reads (a typo would be ignored silently)."""
    assert set(run.env) <= KNOWN_ENV, set(run.env) - KNOWN_ENV


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.where)
def test_secret_files_are_in_read_only_mounted_directories(run: DockerRun) -> None:
    """Each *_FILE is a file of a directory mounted :ro, filled by the same snippet, readable."""
    mounts = {}
    for spec in run.values("-v", "--volume"):
        source, target, mode = spec.split(":")
        assert mode == "ro", spec
        mounts[target] = _host_path(source)
    for name in FILE_ENV:
        if name not in run.env:
            continue
        path = Path(run.env[name])
        # The directory, not the file: a replaced file then reaches the container.
        assert str(path.parent) in mounts, f"{run.where}: {name} is not in a mounted directory"
        source = mounts[str(path.parent)]
        # The image's user (10001, no group of yours) enters the directory and reads the file...
        assert _made(run, source) == ["0755"], f"{run.where}: {source}"
        file = f"{source}/{path.name}"
        installed = [c for c in run.block if c[:1] == ["install"] and _host_path(c[-1]) == file]
        assert [c[1:3] for c in installed] == [["-m", "0444"]], f"{run.where}: {file}"
        # ... while the directory above keeps every other user of the host out.
        parent = str(Path(source).parent)
        assert _made(run, parent) == ["0700"], f"{run.where}: {parent}"


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.where)
def test_the_configuration_is_accepted(run: DockerRun, tmp_path: Path) -> None:
    """The line's arguments and environment (its files made here) make a valid configuration."""
    env = run.env
    for name in FILE_ENV:
        if name in env:
            local = tmp_path / name
            content = "redis://:secret@redis:6379/0" if name == FLEET_URL_FILE_ENV else "sk-x"
            local.write_text(content + "\n", encoding="utf-8")
            env[name] = str(local)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args(run.args), env)
    assert config.listen == run.env["COSYVOICE_SIDECAR_LISTEN"]
    assert (config.fleet is not None) == (FLEET_URL_FILE_ENV in env)
    for stop in run.values("--stop-timeout"):
        # The drain grace, then ending calls (2 s) and closing the pool (5 s), before SIGKILL.
        assert int(stop) >= config.drain_grace_s + 2 + 5, run.where


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.where)
def test_the_image_is_the_one_the_manifests_name(run: DockerRun) -> None:
    """The same image reference as the kustomize base's images: entry."""
    (kustomization,) = load_yaml(BASE / "kustomization.yaml")
    (entry,) = [i for i in kustomization["images"] if i["name"] == "cosyvoice-sidecar"]
    assert run.image == f"{entry['newName']}:{entry['newTag']}"
