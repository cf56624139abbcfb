"""Command line for the emulator: ``cosyvoice-sidecar emulate`` and ``python -m sidecar.emulator``.

:func:`add_arguments` adds ``--host``/``--port`` and one flag per commonly
used knob (plus ``--knob NAME=VALUE`` for any knob); :func:`run` starts the
emulator, prints ``emulator on <url>`` to stdout, and serves until SIGINT or
SIGTERM. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, Final

from sidecar.emulator.knobs import EmulatorKnobs, KnobError
from sidecar.emulator.server import Emulator

__all__ = ["add_arguments", "knobs_from_args", "main", "run"]

# flag, knob, type, help
_VALUE_FLAGS: Final[tuple[tuple[str, str, type, str], ...]] = (
    ("--handshake-delay", "handshake_delay_s", float, "seconds before answering a handshake"),
    ("--start-delay", "start_delay_s", float, "seconds before task-started"),
    ("--first-packet-delay", "first_packet_delay_s", float, "seconds before a task's first audio"),
    (
        "--realtime-factor",
        "realtime_factor",
        float,
        "audio pacing: 0 = as fast as possible, 1 = real time, 0.25 = 4x faster",
    ),
    ("--chunk-ms", "chunk_ms", int, "audio per binary frame, in ms (default 100)"),
    ("--ms-per-character", "ms_per_character", float, "audio per counted character, in ms"),
    ("--idle-timeout", "idle_timeout_s", float, "close idle connections after this (default 60)"),
    ("--input-timeout", "input_timeout_s", float, "fail a task without text for this (default 23)"),
    (
        "--max-concurrent-tasks",
        "max_concurrent_tasks",
        int,
        "beyond this many running tasks, task-failed Throttling.RateQuota",
    ),
    ("--fail-start-every", "fail_start_every", int, "fail every Nth task at start (0 = off)"),
    ("--fail-mid-every", "fail_mid_every", int, "fail every Nth task after its first audio"),
    ("--fail-code", "fail_code", str, "error_code of injected failures"),
    ("--fail-message", "fail_message", str, "error_message of injected failures"),
    ("--drop-mid-every", "drop_mid_every", int, "drop the TCP connection of every Nth task"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's flags to ``parser`` (every knob flag defaults to the knob's default)."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (loopback only)")
    parser.add_argument("--port", type=int, default=0, help="listen port (0 = any free port)")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accepted API key (repeatable); default: any non-empty Bearer key",
    )
    for flag, knob, type_, help_ in _VALUE_FLAGS:
        parser.add_argument(flag, dest=knob, type=type_, default=None, help=help_)
    parser.add_argument(
        "--reject-voice",
        action="append",
        dest="rejected_voices",
        metavar="VOICE",
        help="voice answered with 418 (repeatable; default: bad-voice)",
    )
    parser.add_argument(
        "--reject-model",
        action="append",
        dest="rejected_models",
        metavar="MODEL",
        help="model answered with 418 (repeatable)",
    )
    parser.add_argument(
        "--drop-idle-silently",
        action="store_const",
        const=True,
        default=None,
        help="abort idle connections without a close frame",
    )
    parser.add_argument(
        "--keep-open-after-failure",
        action="store_const",
        dest="close_after_failure",
        const=False,
        default=None,
        help="do not close the connection after task-failed",
    )
    parser.add_argument(
        "--no-cancel",
        action="store_const",
        dest="cancel_supported",
        const=False,
        default=None,
        help="ignore the cancel directive (the task finishes normally)",
    )
    parser.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set any knob by name, as GET /_emulator/knobs does (repeatable)",
    )


def knobs_from_args(args: argparse.Namespace) -> EmulatorKnobs:
    """Build the knobs from parsed flags; raise KnobError naming a bad one."""
    changes: dict[str, Any] = {}
    for _, knob, _, _ in _VALUE_FLAGS:
        if getattr(args, knob, None) is not None:
            changes[knob] = getattr(args, knob)
    for knob in (
        "api_keys",
        "rejected_voices",
        "rejected_models",
        "drop_idle_silently",
        "close_after_failure",
        "cancel_supported",
    ):
        value = getattr(args, knob, None)
        if value is not None:
            changes[knob] = frozenset(value) if isinstance(value, list) else value
    knobs = EmulatorKnobs()
    knobs.update(**changes)
    strings: dict[str, str] = {}
    for item in getattr(args, "knob", []):
        name, sep, value = item.partition("=")
        if not sep:
            raise KnobError(f"--knob expects NAME=VALUE, not {item!r}")
        strings[name.strip()] = value
    knobs.update_from_strings(strings)
    return knobs


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; return the exit code (0, or 2 for bad flags)."""
    try:
        knobs = knobs_from_args(args)
        emulator = Emulator(knobs, args.host, args.port)
    except ValueError as exc:  # KnobError is a ValueError
        sys.stderr.write(f"error: {exc}\n")
        return 2
    await emulator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        sys.stdout.write(f"emulator on {emulator.url}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await emulator.aclose()
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv``, serve until a signal; return the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the local DashScope CosyVoice emulator (for development and tests); "
        "prints 'emulator on URL' on stdout.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
