"""``python -m cosyvoice_sidecar_bench``: the same as ``cosyvoice-sidecar bench``."""

from __future__ import annotations

import sys

from cosyvoice_sidecar_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m cosyvoice_sidecar_bench"))
