"""The sidecar's configuration: one frozen, validated object.

Flags and environment variables are read here and nowhere else. Every option
has a flag and a ``COSYVOICE_SIDECAR_*`` variable (the flag wins); the API key
comes only from ``DASHSCOPE_API_KEY`` or the file named by
``DASHSCOPE_API_KEY_FILE`` (the callers' bearer token likewise from
``COSYVOICE_SIDECAR_AUTH_TOKEN[_FILE]``), never from a flag, so it stays out of ``ps`` and
shell history. The key never appears in ``repr``, logs or errors.

The pool's settings are one nested :class:`~sidecar.pool.PoolPolicy`: its
fields carry their own help, type and default, and the options below are
derived from them, so a pool setting is defined once.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from sidecar.errors import ConfigError
from sidecar.fleet import FleetSettings
from sidecar.pool import PoolPolicy, option_name
from sidecar.telemetry import LOG_FORMATS

__all__ = [
    "FORMATS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MODEL_ID",
    "OPTIONS",
    "REGIONS",
    "SAMPLE_RATES",
    "VOICE_ID",
    "ApiKey",
    "Config",
    "ConfigError",
    "Option",
    "Secret",
    "add_serve_arguments",
    "config_from_args",
    "region_url",
]

_PATH: Final = "/api-ws/v1/inference"
# Each region's legacy host and its MaaS region id; with a workspace the
# workspace host of the region is used, as the official pages recommend
# (docs/dashscope-protocol.md §1).
REGIONS: Final = {
    "beijing": ("dashscope.aliyuncs.com", "cn-beijing"),
    "singapore": ("dashscope-intl.aliyuncs.com", "ap-southeast-1"),
}
FORMATS: Final = ("pcm", "wav", "mp3", "opus")
SAMPLE_RATES: Final = (8000, 16000, 22050, 24000, 44100, 48000)
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
# A workspace id goes into a host name: letters, digits and dashes only.
_WORKSPACE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")
# Model and voice ids go into JSON and DashScope's logs: a strict charset keeps
# paths, spaces and control characters out. The defaults here and each request's
# ids (sidecar.rpc) are held to the same patterns.
MODEL_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
VOICE_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Bounds what batching may add to a later chunk's latency (see sidecar.rpc._writer).
_MAX_AUDIO_BATCH_MS: Final = 1000.0
API_KEY_ENV: Final = "DASHSCOPE_API_KEY"
API_KEY_FILE_ENV: Final = "DASHSCOPE_API_KEY_FILE"
# A bearer token callers must present; like the API key, never a flag.
AUTH_TOKEN_ENV: Final = "COSYVOICE_SIDECAR_AUTH_TOKEN"  # noqa: S105 - a variable name
AUTH_TOKEN_FILE_ENV: Final = "COSYVOICE_SIDECAR_AUTH_TOKEN_FILE"  # noqa: S105
# The fleet's Redis URL may hold a password: a file keeps it out of the environment.
FLEET_URL_FILE_ENV: Final = "COSYVOICE_SIDECAR_FLEET_REDIS_URL_FILE"


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
        # Compared as bytes: compare_digest refuses str with non-ASCII characters (a key file
        # saved with a byte-order mark would otherwise raise TypeError here).
        return isinstance(other, Secret) and hmac.compare_digest(
            other._value.encode(), self._value.encode()
        )

    def __hash__(self) -> int:
        return hash(self._value)


ApiKey = Secret


def region_url(region: str, workspace: str | None = None) -> str:
    """The DashScope WebSocket URL of ``region``: its workspace host when ``workspace`` is set."""
    legacy, maas = REGIONS[region]
    host = f"{workspace}.{maas}.maas.aliyuncs.com" if workspace else legacy
    return f"wss://{host}{_PATH}"


@dataclass(frozen=True)
class Config:
    """Everything ``cosyvoice-sidecar serve`` needs; build it with :func:`config_from_args`."""

    listen: str = "127.0.0.1:50051"
    upstream_url: str = region_url("beijing")
    workspace: str | None = None
    api_key: Secret | None = field(default=None)
    api_key_file: str | None = None
    auth_token: Secret | None = field(default=None)
    emulator: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_streams: int = 256
    pool: PoolPolicy = field(default_factory=PoolPolicy)
    fleet: FleetSettings | None = None
    connect_timeout_s: float = 5.0
    start_timeout_s: float = 10.0
    finish_timeout_s: float = 60.0
    drain_grace_s: float = 10.0
    caller_idle_timeout_s: float = 20.0
    caller_read_timeout_s: float = 45.0
    first_audio_timeout_s: float = 15.0
    stall_timeout_s: float = 10.0
    audio_batch_ms: float = 100.0
    default_model: str = "cosyvoice-v3-flash"
    default_voice: str = "longanyang"
    default_format: str = "pcm"
    default_sample_rate: int = 22050
    readiness_follows_upstream: bool = False
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout_s",
            "start_timeout_s",
            "finish_timeout_s",
            "drain_grace_s",
            "caller_idle_timeout_s",
            "caller_read_timeout_s",
            "first_audio_timeout_s",
            "stall_timeout_s",
        ):
            if not getattr(self, name) > 0:  # also false for NaN
                raise ConfigError(f'"{name}" must be > 0')
        if not 0 <= self.audio_batch_ms <= _MAX_AUDIO_BATCH_MS:
            raise ConfigError(f'"audio_batch_ms" must be between 0 and {_MAX_AUDIO_BATCH_MS:g}')
        if not MODEL_ID.fullmatch(self.default_model):
            raise ConfigError('"default_model" must be 1 to 64 letters, digits, ".", "_" or "-"')
        if not VOICE_ID.fullmatch(self.default_voice):
            raise ConfigError('"default_voice" must be 1 to 128 letters, digits, ".", "_" or "-"')
        if self.default_format not in FORMATS:
            raise ConfigError(f'"default_format" must be one of {", ".join(FORMATS)}')
        if self.default_sample_rate not in SAMPLE_RATES:
            rates = ", ".join(map(str, SAMPLE_RATES))
            raise ConfigError(f'"default_sample_rate" must be one of {rates}')
        if not self.upstream_url.startswith(("ws://", "wss://")):
            raise ConfigError('"upstream_url" must start with ws:// or wss://')
        if self.workspace is not None and not _WORKSPACE.fullmatch(self.workspace):
            raise ConfigError('"workspace" must be a DashScope workspace id (letters, digits, -)')
        if self.max_streams < 1:
            raise ConfigError('"max_streams" must be >= 1')
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError('"tls_cert" and "tls_key" must be given together')
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError('"tls_client_ca" (mTLS) needs "tls_cert" and "tls_key"')
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f'"log_level" must be one of {", ".join(LOG_LEVELS)}')
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f'"log_format" must be one of {", ".join(LOG_FORMATS)}')
        # A paused caller must hit its own bound (a status that blames it)
        # before the pool's backstop reclaims the connection.
        if self.caller_read_timeout_s >= self.pool.lease_stall_s:
            raise ConfigError('"caller_read_timeout_s" must be below "pool_lease_stall_s"')


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


@dataclass(frozen=True)
class Option:
    """One configurable setting: its flag, environment variable, type, default and help."""

    name: str  # the Config field, or pool_* for a field of the nested PoolPolicy
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    policy_field: str | None = None  # the PoolPolicy field, for a pool setting
    fleet_field: str | None = None  # the FleetSettings field, for a fleet quota setting

    @property
    def flag(self) -> str:
        return "--" + self.name.removesuffix("_s").replace("_", "-")

    @property
    def env(self) -> str:
        return "COSYVOICE_SIDECAR_" + self.name.upper()

    @property
    def default(self) -> Any:
        if self.policy_field is not None:
            return getattr(_DEFAULT_POLICY, self.policy_field)
        if self.fleet_field is not None:
            default = _FLEET_FIELDS[self.fleet_field].default
            return None if default is dataclasses.MISSING else default
        return getattr(_DEFAULTS, self.name)


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_PARSERS: Final[dict[str, Callable[[str], Any]]] = {"int": int, "float": float, "bool": _bool}
_DEFAULT_POLICY: Final = PoolPolicy()
_FLEET_FIELDS: Final = {f.name: f for f in fields(FleetSettings)}
_DEFAULTS: Final = Config()


def _pool_options() -> tuple[Option, ...]:
    """One option per PoolPolicy field that carries help (see sidecar.pool._policy)."""
    return tuple(
        Option(option_name(f), f.metadata["help"], _PARSERS[str(f.type)], policy_field=f.name)
        for f in PoolPolicy.options()
    )


# The table behind --help and the README's configuration table.
OPTIONS: Final = (
    Option("listen", "address to serve gRPC on (host:port); loopback unless told otherwise"),
    Option(
        "upstream_url",
        "DashScope WebSocket URL; overrides --region and --workspace's host (the emulator is "
        "just another URL)",
    ),
    Option(
        "workspace",
        "DashScope workspace id: sent as X-DashScope-WorkSpace, and the region's workspace "
        "host becomes the default upstream",
    ),
    Option("tls_cert", "PEM certificate chain file: serve TLS instead of plaintext"),
    Option("tls_key", "PEM private key file of --tls-cert"),
    Option("tls_client_ca", "PEM CA bundle: require client certificates signed by it (mTLS)"),
    Option(
        "max_streams",
        "concurrent calls admitted, streams still waiting for their config included; past "
        "it RESOURCE_EXHAUSTED",
        int,
    ),
    *_pool_options(),
    Option(
        "connect_timeout_s",
        "seconds allowed for one upstream connect + handshake (cross-border connects to "
        "DashScope can take 10-30 s)",
        float,
    ),
    Option("start_timeout_s", "seconds to wait for task-started after run-task", float),
    Option(
        "finish_timeout_s",
        "seconds to wait for task-finished after finish, not counting time the caller "
        "keeps the audio waiting",
        float,
    ),
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
        "caller_read_timeout_s",
        "seconds a caller may leave its audio unread before the call fails (FAILED_PRECONDITION)",
        float,
    ),
    Option(
        "first_audio_timeout_s",
        "seconds from flush/finish to the first audio before the call fails",
        float,
    ),
    Option(
        "stall_timeout_s",
        "seconds between upstream frames after finish, while the caller reads",
        float,
    ),
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
    Option(
        "readiness_follows_upstream",
        'health service "" (the pod\'s readiness) turns NOT_SERVING while DashScope is '
        "unreachable or refuses the key (default: only the Synthesizer service does)",
        _bool,
    ),
    Option(
        "fleet_redis_url",
        "Redis URL (redis:// or rediss://) of the fleet quota, shared by every sidecar of the "
        "same --fleet-key: with it, at most --fleet-quota DashScope tasks run fleet-wide. A "
        "URL with a password belongs in the file named by COSYVOICE_SIDECAR_FLEET_REDIS_URL_FILE",
        fleet_field="redis_url",
    ),
    Option(
        "fleet_quota",
        "DashScope tasks that may run at once across the fleet (the account's concurrency "
        "quota for the model family)",
        int,
        fleet_field="quota",
    ),
    Option("fleet_key", "which quota: e.g. account and model family", fleet_field="key"),
    Option(
        "fleet_start_rate",
        "task starts per second across the fleet, against Throttling.BurstRate (unset: no limit)",
        float,
        fleet_field="start_rate",
    ),
    Option(
        "fleet_lease_ttl_s",
        "seconds after which the fleet slots of a sidecar that died or lost Redis come back",
        float,
        fleet_field="lease_ttl_s",
    ),
    Option(
        "fleet_on_redis_down",
        "Redis unreachable: open (calls go on with local limits only) or closed (calls fail "
        "UNAVAILABLE)",
        choices=("open", "closed"),
        fleet_field="on_redis_down",
    ),
    Option("log_level", "log level", choices=LOG_LEVELS),
    Option(
        "log_format",
        "log lines as text, or json (one object per line, with trace and span ids)",
        choices=LOG_FORMATS,
    ),
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare every ``serve`` flag; defaults are shown, environment values apply later."""
    parser.add_argument(
        "--region",
        choices=sorted(REGIONS),
        help="DashScope region of the default upstream URL (env COSYVOICE_SIDECAR_REGION; "
        "default beijing; keys are per region)",
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        default=None,
        help="start the embedded DashScope emulator and use it as upstream "
        "(env COSYVOICE_SIDECAR_EMULATOR=1); for development and tests only",
    )
    for option in OPTIONS:
        # A yes/no setting is a switch: the bare flag turns it on, and =false still
        # parses (the same words as its environment variable).
        switch = option.parse is _bool
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=option.parse,
            choices=option.choices,
            default=None,
            nargs="?" if switch else None,
            const=True if switch else None,
            metavar="true|false" if switch else None,
            help=f"{option.help} (env {option.env}; default {option.default})",
        )
    parser.epilog = (
        "Tracing and metrics follow the standard OTEL_* variables, e.g. "
        "OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER=otlp|console|none, "
        "OTEL_METRICS_EXPORTER=otlp|console|prometheus|none; off by default."
    )


def config_from_args(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the :class:`Config` from parsed flags and the environment.

    Raises :class:`ConfigError` with a message naming the setting at fault.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    fleet: dict[str, Any] = {}
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
        if value is None:
            continue
        if option.policy_field is not None:
            policy[option.policy_field] = value
        elif option.fleet_field is not None:
            fleet[option.fleet_field] = value
        else:
            values[option.name] = value

    emulator = args.emulator if args.emulator is not None else _env_flag(env, "EMULATOR")
    values["emulator"] = emulator
    if "upstream_url" not in values:
        region = args.region or env.get("COSYVOICE_SIDECAR_REGION", "beijing")
        if region not in REGIONS:
            raise ConfigError(f"region must be one of {', '.join(sorted(REGIONS))}")
        workspace = values.get("workspace")
        if workspace is not None and not _WORKSPACE.fullmatch(workspace):
            raise ConfigError('"workspace" must be a DashScope workspace id (letters, digits, -)')
        values["upstream_url"] = region_url(region, workspace)
    values["api_key"] = _read_secret(env, API_KEY_ENV, API_KEY_FILE_ENV)
    values["api_key_file"] = env.get(API_KEY_FILE_ENV) or None
    values["auth_token"] = _read_secret(env, AUTH_TOKEN_ENV, AUTH_TOKEN_FILE_ENV)
    if values["api_key"] is None and not emulator:
        raise ConfigError(
            f"no DashScope API key: set {API_KEY_ENV}, or {API_KEY_FILE_ENV} to a file "
            "holding it (or pass --emulator to try the sidecar without one)"
        )
    values["pool"] = PoolPolicy(**policy)
    values["fleet"] = _fleet(fleet, env)
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in values.items() if k in known})


def _fleet(values: dict[str, Any], env: Mapping[str, str]) -> FleetSettings | None:
    """The fleet quota's settings, or None when no Redis URL turns it on."""
    url = _read_secret(env, "", FLEET_URL_FILE_ENV)
    if url is not None and "redis_url" in values:
        raise ConfigError(
            f"give the fleet's Redis URL once: flag, variable or {FLEET_URL_FILE_ENV}"
        )
    if url is not None:
        values["redis_url"] = url.reveal()
    if "redis_url" not in values:
        if values:
            names = ", ".join(f"--fleet-{k.removesuffix('_s').replace('_', '-')}" for k in values)
            raise ConfigError(f"{names} need --fleet-redis-url (the fleet quota is off without it)")
        return None
    if "quota" not in values:
        raise ConfigError("--fleet-redis-url needs --fleet-quota (the fleet's concurrent tasks)")
    return FleetSettings(**values)


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    """A yes/no variable read like every other (a typo is an error naming it, not "no")."""
    variable = "COSYVOICE_SIDECAR_" + name
    raw = env.get(variable, "")
    if not raw.strip():
        return False
    try:
        return _bool(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{variable}={raw!r} is not a valid {name.lower()} (true or false)"
        ) from exc


def _read_secret(env: Mapping[str, str], variable: str, file_variable: str) -> Secret | None:
    """Return a secret from its file (preferred: it stays out of the environment) or its
    variable. Of these files only the API key's is read again when it changes."""
    path = env.get(file_variable)
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{file_variable}: cannot read {path}: {exc.strerror}") from exc
        if not value:
            raise ConfigError(f"{file_variable}: {path} is empty")
        return Secret(value)
    value = env.get(variable, "").strip() if variable else ""
    return Secret(value) if value else None
