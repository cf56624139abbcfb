"""Summaries of py-spy's collapsed stacks (``--format raw``): where the sidecar spends its time.

``python -m cosyvoice_sidecar_bench.profile FILE [--top N]`` prints the functions with
the most samples on top of the stack (self) and anywhere in it (total). The
same files load in speedscope or flamegraph.pl for a picture.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["Hotspots", "main", "summarize"]

_FRAME: Final = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")
# Frames every sample of an asyncio program has in common: noise in "total".
_PLUMBING: Final = (
    "<module>",
    "_run_module_as_main",
    "_run_code",
    "main",
    "run",
    "Runner.run",
    "BaseEventLoop.run_until_complete",
    "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once",
    "Handle._run",
)


@dataclass(frozen=True)
class Hotspots:
    """Sample counts per function (``func (file)``), on top of the stack and anywhere."""

    samples: int
    self_counts: Counter[str]
    total_counts: Counter[str]

    def table(self, top: int) -> str:
        lines = [f"{self.samples} samples", "", "self %  total %  function"]
        for name, count in self.self_counts.most_common(top):
            share, total = 100 * count / self.samples, 100 * self.total_counts[name] / self.samples
            lines.append(f"{share:6.1f}  {total:7.1f}  {name}")
        lines += ["", "total %  function (inclusive, without the event loop's own frames)"]
        shown = 0
        for name, count in self.total_counts.most_common():
            if name.split(" (")[0] in _PLUMBING:
                continue
            lines.append(f"{100 * count / self.samples:7.1f}  {name}")
            shown += 1
            if shown >= top:
                break
        return "\n".join(lines)


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match.group('func')} ({match.group('file')})"


def summarize(text: str) -> Hotspots:
    """Count samples per function in collapsed stacks ``frame;frame;... count``."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            total_counts[name] += count
    return Hotspots(samples, self_counts, total_counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosyvoice_sidecar_bench.profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("files", nargs="+", type=Path, help="py-spy raw output files")
    parser.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    args = parser.parse_args(argv)
    text = "\n".join(path.read_text() for path in args.files)
    hotspots = summarize(text)
    if not hotspots.samples:
        sys.stderr.write("no samples in the given files\n")
        return 1
    sys.stdout.write(hotspots.table(args.top) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
