"""The pinned helm on a copy of deploy/helm: the library chart and the example app chart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import require_executable
from tests.timing import scaled

__all__ = ["EXAMPLE_CHART", "LIBRARY_CHART", "RELEASE", "Helm"]

LIBRARY_CHART = "cosyvoice-sidecar"
EXAMPLE_CHART = "example-app"
RELEASE = "tts"


class Helm:
    """The pinned helm, on a copy of deploy/helm, with its caches and config in that copy."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.binary = require_executable("helm")
        homes = ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")
        self.env = dict(os.environ) | {name: str(root / ".helm" / name) for name in homes}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - a pinned tool, no shell
            [self.binary, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=scaled(60),
            check=False,
        )

    def render(self, *sets: str) -> subprocess.CompletedProcess[str]:
        """``helm template`` of the example chart (release "tts") with ``--set`` values."""
        return self.run("template", RELEASE, EXAMPLE_CHART, *(f"--set={s}" for s in sets))

    def template(self, *sets: str) -> list[dict[str, Any]]:
        """The documents the example chart renders with ``--set`` values (it must render)."""
        result = self.render(*sets)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
