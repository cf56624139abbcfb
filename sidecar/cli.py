"""The ``cosyvoice-sidecar`` command: serve, say, emulate, bench.

``main(argv=None)`` returns the exit code, so tests call it directly. ``serve``
imports neither the emulator nor the benchmark: ``emulate`` (and ``serve
--emulator``) import the emulator when asked for, and ``bench`` is the
separate ``cosyvoice-sidecar-bench`` distribution, run when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar import __version__
from sidecar.config import ApiKey, Config, ConfigError, add_serve_arguments, config_from_args

if TYPE_CHECKING:
    from sidecar.credentials import ApiKeySource
    from sidecar.server import SidecarServer

__all__ = ["main"]

log = logging.getLogger("sidecar")

# Key for the embedded emulator, which accepts any key; never a real one.
_EMULATOR_KEY = "sk-emulator-local"
_DEMO_TEXT = (
    "Hello from cosyvoice-sidecar. Every call borrows a warm connection, "
    "so the first audio arrives without a new handshake."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    # The sidecar never forks; grpc's fork support costs CPU on every call.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    words = list(sys.argv[1:] if argv is None else argv)
    # These parse their own flags, so their modules load only when run.
    if words[:1] == ["emulate"]:
        return _emulate(words[1:])
    if words[:1] in (["bench"], ["soak"]):
        return _bench(words)
    parser = _parser()
    args = parser.parse_args(words)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"serve": _serve, "say": _say}[args.command]
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosyvoice-sidecar",
        description="Streaming DashScope CosyVoice speech over gRPC from a pool of warm "
        "WebSocket connections.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gRPC sidecar",
        description="Run the gRPC sidecar. The API key comes from DASHSCOPE_API_KEY or the "
        "file named by DASHSCOPE_API_KEY_FILE (never from a flag). When ready it prints "
        "'serving on HOST:PORT' on stdout.",
    )
    add_serve_arguments(serve)

    commands.add_parser(
        "emulate",
        help="run the DashScope emulator alone (see 'emulate --help')",
        add_help=False,
    )
    commands.add_parser(
        "bench",
        help="benchmark the sidecar (needs the cosyvoice-sidecar-bench package; "
        "see 'bench --help')",
        add_help=False,
    )
    commands.add_parser(
        "soak",
        help="many calls under injected faults, every byte checked, leaks measured (needs "
        "the cosyvoice-sidecar-bench package; see 'soak --help')",
        add_help=False,
    )

    say = commands.add_parser(
        "say",
        help="synthesize text through a running sidecar into an audio file",
        description="Stream text (arguments, or stdin) to a running sidecar in fragments and "
        "write the audio to a file (a playable WAV for pcm).",
    )
    say.add_argument("text", nargs="*", help="text to speak (default: read stdin)")
    say.add_argument("--addr", default="127.0.0.1:50051", help="sidecar address (host:port)")
    say.add_argument("-o", "--output", default="out/say.wav", help="audio file to write")
    say.add_argument("--voice", default="", help="voice (default: the sidecar's)")
    say.add_argument("--model", default="", help="model (default: the sidecar's)")
    say.add_argument(
        "--format",
        choices=("pcm", "wav", "mp3", "opus"),
        help="audio format (default: the sidecar's)",
    )
    say.add_argument("--sample-rate", type=int, default=0, help="Hz (default: the sidecar's)")
    say.add_argument("--timeout", type=float, default=60.0, help="call deadline in seconds")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    from sidecar.server import SidecarServer

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"cosyvoice-sidecar serve: {exc}", file=sys.stderr)
        return 2
    from sidecar.telemetry import configure_logging, telemetry_from_env

    keys: list[ApiKeySource] = []  # the server's, once it exists: a rotated key is masked too
    configure_logging(
        config.log_level, config.log_format, sys.stderr, secrets=lambda: _secrets(config, keys)
    )

    try:
        telemetry = telemetry_from_env()  # the standard OTEL_* variables; off by default
    except ConfigError as exc:
        print(f"cosyvoice-sidecar serve: {exc}", file=sys.stderr)
        return 2
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(telemetry.aclose)  # last: flushes the shutdown's spans too
        if config.emulator:
            from sidecar.emulator import Emulator

            emulator = Emulator()
            await emulator.start()
            stack.push_async_callback(emulator.aclose)
            config = dataclasses.replace(
                config, upstream_url=emulator.url, api_key=config.api_key or ApiKey(_EMULATOR_KEY)
            )
            log.warning(
                "USING THE EMBEDDED DASHSCOPE EMULATOR at %s: no real speech is produced",
                emulator.url,
            )
            print(f"emulator on {emulator.url}", flush=True)
        server = SidecarServer(config, telemetry=telemetry)
        keys.append(server.api_key)
        stop = _stop_event(server)
        try:
            address = await server.start()
        except OSError as exc:
            print(f"cosyvoice-sidecar serve: {exc}", file=sys.stderr)
            return 1
        stack.push_async_callback(server.stop, config.drain_grace_s)
        waiter = asyncio.ensure_future(stop.wait())
        ready = asyncio.ensure_future(server.wait_ready(timeout=float("inf")))
        await asyncio.wait({waiter, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not stop.is_set():
            print(f"serving on {address}", flush=True)
            await waiter
        log.info("signal received: shutting down (grace %.1fs)", config.drain_grace_s)
    return 0


def _stop_event(server: SidecarServer) -> asyncio.Event:
    """Set on SIGTERM or SIGINT; a second signal makes the shutdown hurry."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled() -> None:
        if stop.is_set():
            log.warning("second signal: ending running calls now")
            server.hurry()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled)
    return stop


def _secrets(config: Config, keys: Iterable[ApiKeySource] = ()) -> list[str]:
    """The values logs must never show (bearer credentials are masked anyway): the key
    and token as configured, the key as rotated since, the fleet's Redis passwords."""
    found = [s.reveal() for s in (config.api_key, config.auth_token) if s is not None]
    found += [key.current() for key in keys if key.current()]
    if config.fleet is not None:
        found += config.fleet.secrets
    return found


def _emulate(argv: list[str]) -> int:
    from sidecar.emulator import cli as emulator_cli

    return emulator_cli.main(argv, prog="cosyvoice-sidecar emulate")


def _bench(words: list[str]) -> int:
    """``bench ...`` or ``soak ...``: both live in the bench distribution."""
    command = words[0]
    try:
        from cosyvoice_sidecar_bench import cli as bench_cli
    except ImportError:
        print(
            f"cosyvoice-sidecar {command}: the benchmark is a separate package; install it "
            "with 'pip install ./bench' from a clone (make bench does)",
            file=sys.stderr,
        )
        return 2
    if command == "soak":
        return bench_cli.main(words, prog="cosyvoice-sidecar")
    return bench_cli.main(words[1:], prog="cosyvoice-sidecar bench")


async def _say(args: argparse.Namespace) -> int:
    import grpc
    from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
    from cosyvoice_sidecar_client import AsyncSynthesizerClient

    text = " ".join(args.text) if args.text else sys.stdin.read()
    if not text.strip():
        text = _DEMO_TEXT
    formats = {"pcm": 1, "wav": 2, "mp3": 3, "opus": 4}
    config = pb.SynthesisConfig(
        model=args.model,
        voice=args.voice,
        format=formats.get(args.format or "", 0),  # type: ignore[arg-type]
        sample_rate_hz=args.sample_rate,
    )
    started = time.monotonic()
    try:
        async with AsyncSynthesizerClient(args.addr) as client:
            result = await client.stream_texts(_fragments(text), config, timeout=args.timeout)
    except grpc.aio.AioRpcError as exc:
        print(f"cosyvoice-sidecar say: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(result.wav())
    seconds = result.completed.audio_duration_ms / 1000
    print(
        f"wrote {output} ({len(result.audio)} audio bytes, {seconds:.2f} s of audio); "
        f"first audio after {result.completed.first_audio_ms:.0f} ms, "
        f"total {1000 * (time.monotonic() - started):.0f} ms, "
        f"task {result.started.task_id}, warm connection: {result.started.warm_connection}"
    )
    return 0


def _fragments(text: str) -> list[str]:
    """Cut text into a few word-sized fragments, as an LLM token stream would arrive."""
    words = re.findall(r"\S+\s*", text)
    size = max(1, len(words) // 4)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)] or [text]


if __name__ == "__main__":
    sys.exit(main())
