"""Summaries of py-spy's collapsed stacks (``--format raw``): where the sidecar spends its time.

``python -m cosyvoice_sidecar_bench.profile FILE [--top N]`` prints the functions with
the most samples on top of the stack (self) and anywhere in it (total); a
``.gz`` file (as the reports keep them) is read as such. ``--parts`` sorts
every sample into one part of the sidecar's work instead (:func:`parts`).
The same files load in speedscope or flamegraph.pl for a picture.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["Hotspots", "main", "part_of", "parts", "summarize"]

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


# grpc.aio's Cython calls have no Python frame of their own: their time is the
# self time of the Python frame that awaits them (a write, a read, the poller
# thread's run loop).
_GRPC_AWAITERS: Final = frozenset(
    {
        "ResponseWriter._write",
        "ResponseWriter.started",
        "_checked",
        "_commands",
        "Thread.run",
        "SynthesizerServicer.StreamingSynthesize",
        "FloorServicer._audio",
        "FloorServicer._started",
        "FloorServicer.StreamingSynthesize",
    }
)
_EXPORT_THREADS: Final = ("BatchProcessor.worker", "PeriodicExportingMetricReader._ticker")
# py-spy names OpenTelemetry's files by their path inside the package.
_OTEL_FILES: Final = (
    "_shared_internal/",
    "trace/",
    "metrics/",
    "common/_internal",
    "grpc/exporter.py",
    "grpc/trace_exporter",
    "grpc/metric_exporter",
    "resources/",
    "attributes/",
    "context/",
    "propagate/",
    "propagators/",
    "baggage/",
    "util/",
)
# The first rule matching a frame, from the stack's top down, names the part.
_PART_RULES: Final = (
    ("sidecar/telemetry/_logs", "logging"),
    ("logging/", "logging"),
    ("sidecar/telemetry/_interceptor", "telemetry: spans, metrics"),
    ("sidecar/telemetry", "telemetry: spans, metrics"),
    ("websockets/", "websockets"),
    ("sidecar/protocol", "protocol core"),
    ("json/", "protocol core"),
    ("sidecar/upstream", "upstream connection"),
    ("sidecar/call/", "call (reader, feeder, deadlines)"),
    ("sidecar/rpc/_writer", "writer (Python)"),
    ("sidecar/pool", "pool"),
    ("sidecar/fleet", "fleet quota"),
    ("redis/", "fleet quota"),
    ("sidecar/rpc", "rpc edge (Python)"),
    ("cosyvoice_sidecar_bench/grpc_floor", "grpc floor (Python)"),
    ("grpc/", "grpc (Python)"),
    ("selectors", "event loop: epoll"),
    ("asyncio/", "event loop: asyncio"),
)


def part_of(frames: list[str]) -> str:
    """Name the part of the work one sample's stack (root first) was doing."""
    names = [
        (m.group("func"), m.group("file")) if (m := _FRAME.match(f.strip())) else (f, "")
        for f in frames
    ]
    if any(func in _EXPORT_THREADS for func, _ in names):
        return "telemetry: export thread"
    if names[-1][0] in _GRPC_AWAITERS:
        return "grpc C core (awaited from Python)"
    for func, file in reversed(names):
        if file.startswith(_OTEL_FILES):
            return "telemetry: spans, metrics"
        if "_interceptor" in file and func.endswith("<locals>.wrapped"):
            continue  # the span around the whole handler: every sample has it
        for key, part in _PART_RULES:
            if key in file:
                return part
    return "other"


def parts(text: str) -> Counter[str]:
    """Count samples per part of the work (:func:`part_of`) in collapsed stacks."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if frames and count_text.isdigit():
            counts[part_of(frames)] += int(count_text)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosyvoice_sidecar_bench.profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("files", nargs="+", type=Path, help="py-spy raw output files")
    parser.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    parser.add_argument(
        "--parts", action="store_true", help="share of samples per part of the work instead"
    )
    args = parser.parse_args(argv)
    text = "\n".join(
        gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for path in args.files
    )
    hotspots = summarize(text)
    if not hotspots.samples:
        sys.stderr.write("no samples in the given files\n")
        return 1
    if args.parts:
        counts = parts(text)
        total = sum(counts.values())
        lines = [f"{total} samples", "", "share  part"]
        lines += [f"{100 * n / total:5.1f}  {part}" for part, n in counts.most_common()]
        sys.stdout.write("\n".join(lines) + "\n")
        return 0
    sys.stdout.write(hotspots.table(args.top) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
