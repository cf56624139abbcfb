"""``python -m sidecar.bench``: the same as ``cosyvoice-sidecar bench``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from sidecar.bench import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.bench",
        description="Benchmark the sidecar against the vendor SDK pool and the physical floor.",
    )
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(cli.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
