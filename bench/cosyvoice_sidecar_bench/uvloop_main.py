"""``python -m cosyvoice_sidecar_bench.uvloop_main serve ...``: the sidecar on uvloop.

The bench's ``sidecar-uvloop`` mode runs the unchanged sidecar this way, to
measure whether uvloop wins. Python 3.11's ``asyncio.run`` takes no loop
factory, so the event loop policy is set before the CLI calls it.
"""

from __future__ import annotations

import asyncio
import importlib
import sys

from sidecar.cli import main as sidecar_main


def main() -> int:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        sys.stderr.write(
            "sidecar-uvloop needs uvloop: pip install 'uvloop==0.23.0' (an optional dependency)\n"
        )
        return 2
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return sidecar_main()


if __name__ == "__main__":
    sys.exit(main())
