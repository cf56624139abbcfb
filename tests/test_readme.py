"""The README's snippets are the tested ones: same text, or executed here."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import pytest

from sidecar.server import SidecarServer
from tests.clients.test_grpcurl import DEFAULT_ADDRESS, GRPCURL_COMMANDS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(heading: str, language: str) -> str:
    """Return the first ```language block after ``heading``."""
    start = README.index(heading)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no {language} block after {heading!r}"
    return match.group(1).strip("\n")


def test_grpcurl_lines_are_the_tested_commands() -> None:
    """Every grpcurl line in the README's grpcurl block is run by the grpcurl tests, and back."""
    lines = _block("### grpcurl", "sh").splitlines()
    assert lines == GRPCURL_COMMANDS


def test_go_snippet_is_the_tested_example() -> None:
    """The Go snippet is the body of Example() in clients/go/cosyvoice/example_test.go."""
    source = (ROOT / "clients/go/cosyvoice/example_test.go").read_text()
    body = source[source.index("func Example() {") + len("func Example() {\n") :]
    body = body[: body.index("\t// Output:")]
    expected = textwrap.dedent(body.replace("\t", "    ")).strip("\n")
    assert _block("### Go", "go") == expected


def test_java_snippet_is_the_tested_quickstart() -> None:
    """The Java snippet is the marked part of the Quickstart example its tests run."""
    source = (
        ROOT / "clients/java/src/main/java/dev/cosyvoice/sidecar/examples/Quickstart.java"
    ).read_text()
    marked = source[source.index("// README:java:start\n") + len("// README:java:start\n") :]
    marked = marked[: marked.index("// README:java:end")]
    assert _block("### Java", "java") == textwrap.dedent(marked).strip("\n")


async def test_python_snippet_runs(
    sidecar: SidecarServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python snippet, run as written against a live sidecar, writes a WAV file."""
    code = _block("### Python", "python").replace(DEFAULT_ADDRESS, sidecar.address)
    monkeypatch.chdir(tmp_path)
    await asyncio.to_thread(exec, compile(code, "README.md", "exec"), {})
    assert (tmp_path / "hello.wav").read_bytes()[:4] == b"RIFF"
