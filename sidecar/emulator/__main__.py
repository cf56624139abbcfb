"""``python -m sidecar.emulator``: run the DashScope emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import sys

from sidecar.emulator.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m sidecar.emulator"))
