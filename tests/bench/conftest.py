"""The Go toolchain the default load generator needs: skipped without it, failed under CI."""

from __future__ import annotations

from pathlib import Path

import pytest
from cosyvoice_sidecar_bench.loadgen import GO_SOURCE

from tests.helpers import require_executable


@pytest.fixture(scope="session")
def go() -> str:
    """The ``go`` on PATH, which the bench uses to build clients/go/cmd/loadgen.

    Without it the test skips, unless ``$CI`` is set: then it fails, as every
    client test does (CI must never turn them into silent skips).
    """
    found = require_executable("go")
    assert (Path(GO_SOURCE) / "cmd" / "loadgen").is_dir(), GO_SOURCE
    return found
