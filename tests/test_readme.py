"""The README's snippets are the tested ones: same text, or executed here."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from sidecar.rpc._statuses import UNKNOWN_CODE, UPSTREAM_CODES
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


def test_dashscope_error_table_is_the_code_table() -> None:
    """Every DashScope code row of the code stands in the README with its status and retry."""
    start = README.index("| DashScope `error_code` | gRPC status | RetryInfo |")
    table = README[start : README.index("\n\n", start)].splitlines()[2:]
    rows: dict[tuple[str, str], list[str]] = {}
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        names = re.findall(r'`([^`]+)`(?: "([^"]+)")?', cells[0]) or [("any other code", "")]
        for code, message in names:
            rows[(code, message)] = cells[1:]
    for row in (*UPSTREAM_CODES, UNKNOWN_CODE):
        key = ("any other code", "") if row is UNKNOWN_CODE else (row.code, row.message)
        retry = "no" if row.retry_after_s is None else f"{row.retry_after_s:g} s"
        assert key in rows, f"{key} is missing from the README's error table"
        assert rows[key] == [f"`{row.status.name}`", retry], key
    assert len(table) <= len(UPSTREAM_CODES) + 1  # grouped rows, nothing else


async def test_python_snippet_runs(
    sidecar: SidecarServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python snippet, run as written against a live sidecar, writes a WAV file."""
    code = _block("### Go, Java, Python", "python").replace(DEFAULT_ADDRESS, sidecar.address)
    monkeypatch.chdir(tmp_path)
    await asyncio.to_thread(exec, compile(code, "README.md", "exec"), {})
    assert (tmp_path / "hello.wav").read_bytes()[:4] == b"RIFF"
