"""The sidecar's configuration: one frozen, validated object.

Flags and environment variables are read here and nowhere else. Every option
has a flag and a ``COSYVOICE_SIDECAR_*`` variable (the flag wins); the API key
comes only from ``DASHSCOPE_API_KEY`` or the file named by
``DASHSCOPE_API_KEY_FILE`` (the callers' bearer token likewise from
``COSYVOICE_SIDECAR_AUTH_TOKEN[_FILE]``), never from a flag, so it stays out of ``ps`` and
shell history. The key never appears in ``repr``, logs or errors.
"""

from __future__ import annotations

import argparse
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

__all__ = [
    "FORMATS",
    "LOG_FORMATS",
    "OPTIONS",
    "REGIONS",
    "SAMPLE_RATES",
    "ApiKey",
    "Config",
    "ConfigError",
    "Option",
    "Secret",
    "add_serve_arguments",
    "config_from_args",
]

REGIONS: Final = {
    "beijing": "wss://dashscope.aliyuncs.com/api-ws/v1/inference",
    "singapore": "wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference",
}
FORMATS: Final = ("pcm", "wav", "mp3", "opus")
SAMPLE_RATES: Final = (8000, 16000, 22050, 24000, 44100, 48000)
LOG_FORMATS: Final = ("text", "json")
# Bounds what batching may add to a later chunk's latency (see Session._may_hold).
_MAX_AUDIO_BATCH_MS: Final = 1000.0
LOG_FORMAT_ENV: Final = "COSYVOICE_SIDECAR_LOG_FORMAT"
API_KEY_ENV: Final = "DASHSCOPE_API_KEY"
API_KEY_FILE_ENV: Final = "DASHSCOPE_API_KEY_FILE"
# A bearer token callers must present; like the API key, never a flag.
AUTH_TOKEN_ENV: Final = "COSYVOICE_SIDECAR_AUTH_TOKEN"  # noqa: S105 - a variable name
AUTH_TOKEN_FILE_ENV: Final = "COSYVOICE_SIDECAR_AUTH_TOKEN_FILE"  # noqa: S105


class ConfigError(ValueError):
    """Raised when the configuration is invalid; the message says what to change."""


class Secret:
    """A credential (API key, bearer token) that never shows itself in ``repr`` or ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the value, for an Authorization header or comparison, nothing else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(other._value, self._value)

    def __hash__(self) -> int:
        return hash(self._value)


ApiKey = Secret


@dataclass(frozen=True)
class Config:
    """Everything ``cosyvoice-sidecar serve`` needs; build it with :func:`config_from_args`."""

    listen: str = "127.0.0.1:50051"
    upstream_url: str = REGIONS["beijing"]
    api_key: Secret | None = field(default=None)
    api_key_file: str | None = None
    auth_token: Secret | None = field(default=None)
    emulator: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_streams: int = 256
    pool_min_idle: int = 2
    pool_max_size: int = 32
    acquire_timeout_s: float = 5.0
    pool_max_idle_age_s: float = 25.0
    pool_max_lifetime_s: float = 600.0
    pool_shrink_after_s: float = 15.0
    pool_connect_burst: int = 64
    pool_connect_rate: float = 64.0
    pool_auth_probe_interval_s: float = 30.0
    pool_lease_stall_s: float = 60.0
    connect_timeout_s: float = 5.0
    start_timeout_s: float = 10.0
    finish_timeout_s: float = 60.0
    cancel_timeout_s: float = 2.0
    drain_grace_s: float = 10.0
    caller_idle_timeout_s: float = 20.0
    first_audio_timeout_s: float = 15.0
    stall_timeout_s: float = 10.0
    audio_batch_ms: float = 100.0
    default_model: str = "cosyvoice-v3-flash"
    default_voice: str = "longanyang"
    default_format: str = "pcm"
    default_sample_rate: int = 22050
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        if self.pool_max_size < 1:
            raise ConfigError('"pool_max_size" must be >= 1')
        if not 0 <= self.pool_min_idle <= self.pool_max_size:
            raise ConfigError('"pool_min_idle" must be between 0 and "pool_max_size"')
        for name in (
            "acquire_timeout_s",
            "pool_max_idle_age_s",
            "pool_max_lifetime_s",
            "pool_shrink_after_s",
            "pool_connect_rate",
            "pool_auth_probe_interval_s",
            "pool_lease_stall_s",
            "connect_timeout_s",
            "start_timeout_s",
            "finish_timeout_s",
            "cancel_timeout_s",
            "drain_grace_s",
            "caller_idle_timeout_s",
            "first_audio_timeout_s",
            "stall_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f'"{name}" must be > 0')
        if not 0 <= self.audio_batch_ms <= _MAX_AUDIO_BATCH_MS:
            raise ConfigError(f'"audio_batch_ms" must be between 0 and {_MAX_AUDIO_BATCH_MS:g}')
        if self.default_format not in FORMATS:
            raise ConfigError(f'"default_format" must be one of {", ".join(FORMATS)}')
        if self.default_sample_rate not in SAMPLE_RATES:
            rates = ", ".join(map(str, SAMPLE_RATES))
            raise ConfigError(f'"default_sample_rate" must be one of {rates}')
        if not self.upstream_url.startswith(("ws://", "wss://")):
            raise ConfigError('"upstream_url" must start with ws:// or wss://')
        if self.pool_connect_burst < 1:
            raise ConfigError('"pool_connect_burst" must be >= 1')
        if self.max_streams < 1:
            raise ConfigError('"max_streams" must be >= 1')
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError('"tls_cert" and "tls_key" must be given together')
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError('"tls_client_ca" (mTLS) needs "tls_cert" and "tls_key"')
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError('"log_level" must be debug, info, warning or error')
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f'"log_format" ({LOG_FORMAT_ENV}) must be text or json')


@dataclass(frozen=True)
class Option:
    """One configurable setting: its flag, environment variable, type and help."""

    name: str  # the Config field
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return _flag(self.name)

    @property
    def env(self) -> str:
        return "COSYVOICE_SIDECAR_" + self.name.upper()


def _flag(name: str) -> str:
    return "--" + name.removesuffix("_s").replace("_", "-")


# The table behind --help and the README's configuration table.
OPTIONS: Final = (
    Option("listen", "address to serve gRPC on (host:port); loopback unless told otherwise"),
    Option(
        "upstream_url",
        "DashScope WebSocket URL; overrides --region (the emulator is just another URL)",
    ),
    Option("tls_cert", "PEM certificate chain file: serve TLS instead of plaintext"),
    Option("tls_key", "PEM private key file of --tls-cert"),
    Option("tls_client_ca", "PEM CA bundle: require client certificates signed by it (mTLS)"),
    Option("max_streams", "concurrent calls admitted; past it RESOURCE_EXHAUSTED", int),
    Option("pool_min_idle", "warm upstream connections kept open and idle", int),
    Option("pool_max_size", "hard cap on upstream connections (your DashScope quota)", int),
    Option("acquire_timeout_s", "seconds a call waits for a free connection", float),
    Option(
        "pool_max_idle_age_s",
        "renew an idle connection after this long unused (jittered 20%% earlier; "
        "below DashScope's idle limit)",
        float,
    ),
    Option("pool_max_lifetime_s", "renew a connection this long after it opened", float),
    Option("pool_shrink_after_s", "close spare idle connections beyond the target after", float),
    Option("pool_connect_burst", "connects allowed at once (token bucket burst)", int),
    Option("pool_connect_rate", "connects per second after the burst", float),
    Option(
        "pool_auth_probe_interval_s",
        "after a refused key, seconds between probes (the key file is watched too)",
        float,
    ),
    Option(
        "pool_lease_stall_s",
        "reclaim a borrowed connection whose call shows no activity for this long",
        float,
    ),
    Option("connect_timeout_s", "seconds allowed for one upstream connect + handshake", float),
    Option("start_timeout_s", "seconds to wait for task-started after run-task", float),
    Option("finish_timeout_s", "seconds to wait for task-finished after the last text", float),
    Option("cancel_timeout_s", "seconds to wait for task-finished after a cancel", float),
    Option(
        "drain_grace_s",
        "seconds running calls get to finish on SIGTERM (keep below the pod's "
        "terminationGracePeriodSeconds)",
        float,
    ),
    Option(
        "caller_idle_timeout_s",
        "seconds a stream may go without text or finish (DashScope fails a task after 23)",
        float,
    ),
    Option(
        "first_audio_timeout_s",
        "seconds from flush/finish to the first audio before the call fails",
        float,
    ),
    Option("stall_timeout_s", "seconds between upstream frames after finish", float),
    Option(
        "audio_batch_ms",
        "after a call's first audio chunk, merge frames arriving within this many ms into "
        "one chunk, only while the caller already holds twice that much audio beyond real "
        "time (pcm, wav); 0 sends each frame as it comes",
        float,
    ),
    Option("default_model", "model used when a request names none"),
    Option("default_voice", "voice used when a request names none"),
    Option("default_format", "audio format used when a request names none", choices=FORMATS),
    Option("default_sample_rate", "sample rate (Hz) used when a request names none", int),
    Option("log_level", "log level", choices=("debug", "info", "warning", "error")),
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare every ``serve`` flag; defaults are shown, environment values apply later."""
    defaults = Config()
    parser.add_argument(
        "--region",
        choices=sorted(REGIONS),
        help="DashScope region of the default upstream URL (env COSYVOICE_SIDECAR_REGION; "
        "default beijing)",
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        default=None,
        help="start the embedded DashScope emulator and use it as upstream "
        "(env COSYVOICE_SIDECAR_EMULATOR=1); for development and tests only",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log lines as text, or json (one object per line) for log collectors; both carry "
        f"trace and span ids when tracing is on (env {LOG_FORMAT_ENV}; default text). "
        "Tracing and metrics follow the standard OTEL_* variables, e.g. "
        "OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER=otlp|console|none, "
        "OTEL_METRICS_EXPORTER=otlp|console|prometheus|none; off by default",
    )
    for option in OPTIONS:
        default = getattr(defaults, option.name)
        parser.add_argument(
            _flag(option.name),
            dest=option.name,
            type=option.parse,
            choices=option.choices,
            default=None,
            help=f"{option.help} (env {option.env}; default {default})",
        )


def config_from_args(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the :class:`Config` from parsed flags and the environment.

    Raises
    :class:`ConfigError` with a message naming the setting at fault.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.name, None)
        if value is None and option.env in env:
            raw = env[option.env]
            try:
                value = option.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{option.env}={raw!r} is not a valid {option.name}") from exc
            if option.choices and value not in option.choices:
                raise ConfigError(f"{option.env} must be one of {', '.join(option.choices)}")
        if value is not None:
            values[option.name] = value

    emulator = args.emulator if args.emulator is not None else _env_flag(env, "EMULATOR")
    values["emulator"] = emulator
    if "upstream_url" not in values:
        region = args.region or env.get("COSYVOICE_SIDECAR_REGION", "beijing")
        if region not in REGIONS:
            raise ConfigError(f"region must be one of {', '.join(sorted(REGIONS))}")
        values["upstream_url"] = REGIONS[region]
    # Outside OPTIONS (like --region) until the README's table has its row.
    values["log_format"] = getattr(args, "log_format", None) or env.get(LOG_FORMAT_ENV, "text")
    values["api_key"] = _read_secret(env, API_KEY_ENV, API_KEY_FILE_ENV)
    values["api_key_file"] = env.get(API_KEY_FILE_ENV) or None
    values["auth_token"] = _read_secret(env, AUTH_TOKEN_ENV, AUTH_TOKEN_FILE_ENV)
    if values["api_key"] is None and not emulator:
        raise ConfigError(
            f"no DashScope API key: set {API_KEY_ENV}, or {API_KEY_FILE_ENV} to a file "
            "holding it (or pass --emulator to try the sidecar without one)"
        )
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in values.items() if k in known})


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get("COSYVOICE_SIDECAR_" + name, "").lower() in ("1", "true", "yes", "on")


def _read_secret(env: Mapping[str, str], variable: str, file_variable: str) -> Secret | None:
    """Return a secret from its file (preferred: it can rotate) or its variable."""
    path = env.get(file_variable)
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{file_variable}: cannot read {path}: {exc.strerror}") from exc
        if not value:
            raise ConfigError(f"{file_variable}: {path} is empty")
        return Secret(value)
    value = env.get(variable, "").strip()
    return Secret(value) if value else None
