"""The Go toolchain the default load generator needs: skipped without it, failed under CI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sidecar.bench.loadgen import GO_SOURCE


@pytest.fixture(scope="session")
def go() -> str:
    """The ``go`` on PATH, which the bench uses to build clients/go/cmd/loadgen.

    Without it the test skips, unless ``$CI`` is set: then it fails, as every
    client test does (CI must never turn them into silent skips).
    """
    found = shutil.which("go")
    if found is None:
        reason = "go is not on PATH: the Go load generator cannot be built"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the Go load generator's tests must run)")
        pytest.skip(reason)
    assert (Path(GO_SOURCE) / "cmd" / "loadgen").is_dir(), GO_SOURCE
    return found
