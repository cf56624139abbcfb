"""The pool's policy (what it may do) and status (what it is doing): plain data.

:class:`PoolPolicy` is the one definition of every pool setting. A field that
carries ``help`` metadata is a ``serve`` option: the configuration derives its
flag, environment variable, type, default and ``--help`` text from the field,
and the policy validates itself, so a new pool setting is a new field here
(and a row in the README's table), nothing else.

:class:`PoolStatus` is the pool's counts as one immutable snapshot, read by
``repr``, the ``SidecarStatus`` RPC and the metrics alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.errors import ConfigError
from sidecar.fleet import FleetStatus

__all__ = ["PoolPolicy", "PoolStatus", "option_name"]

# The option of the field ``name`` is ``pool_<name>`` unless its metadata says otherwise.
_OPTION_PREFIX: Final = "pool_"


def _setting(default: Any, help: str, *, option: str | None = None) -> Any:
    """A policy field that is also a ``serve`` option (``help`` is its --help text)."""
    metadata = {"help": help} if option is None else {"help": help, "option": option}
    return field(default=default, metadata=metadata)


def option_name(policy_field: dataclasses.Field[Any]) -> str:
    """The configuration name of a policy field (``min_idle`` -> ``pool_min_idle``)."""
    return str(policy_field.metadata.get("option") or _OPTION_PREFIX + policy_field.name)


@dataclass(frozen=True)
class PoolPolicy:
    """How the pool sizes, renews and protects its connections (times in seconds)."""

    min_idle: int = _setting(2, "warm upstream connections kept open and idle")
    max_size: int = _setting(32, "hard cap on upstream connections (your DashScope quota)")
    acquire_timeout_s: float = _setting(
        5.0, "seconds a call waits for a free connection", option="acquire_timeout_s"
    )
    # DashScope closes a connection 60 s after its last task (docs/dashscope-protocol.md
    # §7): renew well before, jittered so renewals of a pool warmed at once spread out.
    max_idle_age_s: float = _setting(
        25.0,
        "renew an idle connection after this long unused (jittered 20%% earlier; "
        "below DashScope's 60 s idle limit)",
    )
    max_lifetime_s: float = _setting(600.0, "renew a connection this long after it opened")
    shrink_after_s: float = _setting(
        15.0, "close spare idle connections beyond the target after this long"
    )
    connect_burst: int = _setting(64, "connects allowed at once (token bucket burst)")
    connect_rate: float = _setting(64.0, "connects per second after the burst")
    auth_probe_interval_s: float = _setting(
        30.0, "after a refused key, seconds between probes (the key file is watched too)"
    )
    lease_stall_s: float = _setting(
        60.0, "reclaim a borrowed connection whose call shows no activity for this long"
    )
    backoff_max_s: float = _setting(
        10.0,
        "longest pause between failed upstream connects (the first is 0.1-0.2 s, the bound "
        "doubles after each failure, and each pause is drawn between half the bound and it)",
    )
    # Not options: the shape of the backoff and of the maintenance loop.
    age_jitter: float = 0.2
    backoff_initial_s: float = 0.2
    tick_s: float = 0.1

    def __post_init__(self) -> None:
        """Raise :class:`ConfigError` naming the option at fault."""
        if self.max_size < 1:
            raise ConfigError(f'"{_name("max_size")}" must be >= 1')
        if not 0 <= self.min_idle <= self.max_size:
            raise ConfigError(f'"{_name("min_idle")}" must be between 0 and "{_name("max_size")}"')
        if self.connect_burst < 1:
            raise ConfigError(f'"{_name("connect_burst")}" must be >= 1')
        for name in _POSITIVE:
            if not getattr(self, name) > 0:  # also false for NaN
                raise ConfigError(f'"{_name(name)}" must be > 0')
        if not 0 <= self.age_jitter < 1:
            raise ConfigError('"age_jitter" must be in [0, 1)')

    @classmethod
    def options(cls) -> tuple[dataclasses.Field[Any], ...]:
        """The fields that are ``serve`` options, in declaration order."""
        return tuple(f for f in dataclasses.fields(cls) if "help" in f.metadata)


_POSITIVE: Final = (
    "acquire_timeout_s",
    "max_idle_age_s",
    "max_lifetime_s",
    "shrink_after_s",
    "connect_rate",
    "auth_probe_interval_s",
    "lease_stall_s",
    "backoff_initial_s",
    "backoff_max_s",
    "tick_s",
)
_FIELDS: Final = {f.name: f for f in dataclasses.fields(PoolPolicy)}


def _name(policy_field: str) -> str:
    f = _FIELDS[policy_field]
    return option_name(f) if "help" in f.metadata else policy_field


@dataclass(frozen=True)
class PoolStatus:
    """A read-only snapshot of the pool's counts (operators, telemetry, tests).

    Its fields are exactly those of ``cosyvoice.sidecar.v1.PoolStatus`` (a test
    keeps them equal), so the status RPC converts it without a field list.
    """

    idle: int
    busy: int
    opening: int
    closing: int
    waiters: int
    max_size: int
    min_idle: int
    ready: bool
    breaker_open: bool
    last_error: str
    opened_total: int
    closed_total: dict[str, int] = field(default_factory=dict)
    stale_retries: int = 0
    fleet: FleetStatus | None = None  # the fleet quota as this process sees it, when on

    def __repr__(self) -> str:
        return (
            f"<Pool idle={self.idle} busy={self.busy} opening={self.opening} "
            f"closing={self.closing} waiters={self.waiters} max={self.max_size}>"
        )
