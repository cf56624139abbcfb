"""Each client's README, followed as written: install from this clone, then run its example.

The commands and the code come out of the READMEs themselves (only the
sidecar's address is swapped for a live one), so a README cannot drift from
what works. Each runs in a fresh project under a temporary directory: a Go
module, a Maven project, a virtual environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.conftest import RunningSidecar
from tests.clients.test_grpcurl import DEFAULT_ADDRESS
from tests.helpers import require_executable
from tests.timing import scaled

ROOT = Path(__file__).resolve().parents[2]
WAV_HEADER_BYTES = 44


def blocks(readme: Path, heading: str, language: str) -> list[str]:
    """Return the ```language blocks of the README section that starts at ``heading``."""
    text = readme.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    found = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    assert found, f"no {language} block in {readme.name}'s {heading!r}"
    return found


def named_blocks(readme: Path, heading: str, language: str) -> dict[str, str]:
    """Return the blocks of a section by the file name the README gives each (`name.ext`:)."""
    text = readme.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    pairs = re.findall(rf"`([\w.]+)`:[^`]*?```{language}\n(.*?)```", section, re.S)
    assert pairs, f"no named {language} block in {readme.name}'s {heading!r}"
    return dict(pairs)


def user_env(**extra: str) -> dict[str, str]:
    """The test's environment without what the Makefile and pytest add for the repo itself."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GOFLAGS", "GOBIN", "PYTHONPATH", "VIRTUAL_ENV")
        and not k.startswith("DASHSCOPE_")
    }
    env.update(extra)
    return env


def sh(script: str, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run a README's shell block with bash, stopping at the first failing line; return stdout."""
    result = subprocess.run(  # noqa: S603 - bash, on the README's own commands
        ["/bin/bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        check=False,
    )
    assert result.returncode == 0, (
        f"{script}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    return result.stdout


def assert_wav_from_upstream(wav_file: Path, sidecar: RunningSidecar) -> None:
    """The WAV file holds, after its header, exactly the audio of one finished upstream task."""
    wav = wav_file.read_bytes()
    assert wav[:4] == b"RIFF", wav[:16]
    assert wav[8:12] == b"WAVE", wav[:16]
    digest = hashlib.sha256(wav[WAV_HEADER_BYTES:]).hexdigest()
    finished = {t["audio_sha256"] for t in sidecar.stats()["tasks"] if t["outcome"] == "finished"}
    assert digest in finished, "the WAV's audio is not what the upstream sent"


def test_go_readme(sidecar_process: RunningSidecar, tmp_path: Path) -> None:
    """Go: `replace` to the clone and `go mod tidy` in a new module, then `go run .`."""
    go = require_executable("go")
    readme = ROOT / "clients/go/README.md"
    (install,) = blocks(readme, "## Install", "sh")
    (example,) = blocks(readme, "## Example", "go")
    (run,) = blocks(readme, "## Example", "sh")
    assert DEFAULT_ADDRESS in example
    # The layout the README assumes: the clone next to the user's module.
    (tmp_path / "cosyvoice-sidecar").symlink_to(ROOT, target_is_directory=True)
    module = tmp_path / "hello"
    module.mkdir()
    env = user_env(PATH=f"{Path(go).parent}{os.pathsep}{os.environ['PATH']}")
    sh("go mod init example.com/hello", module, env, 60)
    (module / "main.go").write_text(example.replace(DEFAULT_ADDRESS, sidecar_process.address))
    sh(install, module, env, 600)
    assert "v0.0.0-00010101000000-000000000000" in (module / "go.mod").read_text()
    out = sh(run, module, env, 600)
    assert re.fullmatch(r"hello\.wav: \d+ bytes of audio at 24000 Hz\n", out), out
    assert_wav_from_upstream(module / "hello.wav", sidecar_process)


# A fresh Maven project: the README's dependency and nothing of this repository's build.
_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>example</groupId>
  <artifactId>hello</artifactId>
  <version>1</version>
  <properties>
    <maven.compiler.release>17</maven.compiler.release>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencies>
DEPENDENCY
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-compiler-plugin</artifactId>
        <version>3.14.0</version>
      </plugin>
      <plugin>
        <groupId>org.codehaus.mojo</groupId>
        <artifactId>exec-maven-plugin</artifactId>
        <version>3.5.1</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def test_java_readme(sidecar_process: RunningSidecar, tmp_path: Path) -> None:
    """Java: `mvn install` in the clone; a new project with the coordinates runs Hello."""
    mvn = require_executable("mvn")
    require_executable("java")
    readme = ROOT / "clients/java/README.md"
    install = blocks(readme, "## Install", "sh")[0]
    (dependency,) = blocks(readme, "## Install", "xml")
    (example,) = blocks(readme, "## Example", "java")
    assert DEFAULT_ADDRESS in example
    env = user_env()
    sh(install, ROOT, env, 900)
    version = re.search(r"<version>(.*?)</version>", dependency)
    assert version is not None
    installed = Path.home() / ".m2/repository/dev/cosyvoice/sidecar/cosyvoice-sidecar-client"
    for classifier in ("", "-sources", "-javadoc"):
        jar = installed / version[1] / f"cosyvoice-sidecar-client-{version[1]}{classifier}.jar"
        assert jar.is_file(), f"mvn install did not install {jar.name}"

    project = tmp_path / "hello"
    (project / "src/main/java").mkdir(parents=True)
    (project / "pom.xml").write_text(_POM.replace("DEPENDENCY", dependency))
    (project / "src/main/java/Hello.java").write_text(
        example.replace(DEFAULT_ADDRESS, sidecar_process.address)
    )
    out = sh(f"{mvn} -B -q compile exec:java -Dexec.mainClass=Hello", project, env, 900)
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # Maven colours its output even with -B
    assert re.search(r"^hello\.wav: \d+ bytes of audio$", out, re.M), out
    assert_wav_from_upstream(project / "hello.wav", sidecar_process)


def test_python_readme(sidecar_process: RunningSidecar, tmp_path: Path) -> None:
    """Python: `pip install ./clients/python` in a new venv; both examples run."""
    readme = ROOT / "clients/python/README.md"
    (install,) = blocks(readme, "## Install", "sh")
    examples = named_blocks(readme, "## Examples", "python")
    (run,) = blocks(readme, "## Examples", "sh")
    assert set(examples) == {"hello.py", "stream.py"}, set(examples)
    # A copy of the client, where the README's relative path expects it, keeps the
    # clone free of pip's build files.
    shutil.copytree(
        ROOT / "clients/python",
        tmp_path / "clients/python",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    venv = tmp_path / "venv"
    subprocess.run(  # noqa: S603 - this interpreter
        [sys.executable, "-m", "venv", str(venv)], check=True, timeout=scaled(120)
    )
    env = user_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    sh(install, tmp_path, env, 600)
    for name, code in examples.items():
        assert DEFAULT_ADDRESS in code, name
        (tmp_path / name).write_text(code.replace(DEFAULT_ADDRESS, sidecar_process.address))
    out = sh(run, tmp_path, env, 120)
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert re.fullmatch(r"hello\.wav: \d+ bytes of audio at \d+ Hz", lines[0]), out
    assert re.fullmatch(r"[1-9]\d* bytes of audio", lines[1]), out
    assert_wav_from_upstream(tmp_path / "hello.wav", sidecar_process)
    # The installed client is the venv's own, not this repository's.
    where = subprocess.run(  # noqa: S603 - the venv's interpreter
        [str(venv / "bin/python"), "-c", "import cosyvoice_sidecar_client as c; print(c.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout


pytestmark = pytest.mark.timeout(1800)
