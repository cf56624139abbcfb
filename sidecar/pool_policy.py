"""The pool's policy (what it may do) and status (what it is doing): plain data.

Kept apart from :mod:`sidecar.pool` so the configuration, the status RPC and
telemetry read them without the pool's machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PoolPolicy", "PoolStatus"]


@dataclass(frozen=True)
class PoolPolicy:
    """How the pool sizes, renews and protects its connections (times in seconds)."""

    min_idle: int = 2
    max_size: int = 32
    acquire_timeout: float = 5.0
    # DashScope closes idle sockets after an unconfirmed delay (§7; the SDK
    # renews after 25-35 s): renew well before, jittered so renewals spread.
    max_idle_age: float = 25.0
    max_lifetime: float = 600.0
    age_jitter: float = 0.2
    shrink_after: float = 15.0
    connect_burst: int = 64
    connect_rate: float = 64.0
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    auth_probe_interval: float = 30.0
    lease_stall: float = 60.0
    tick: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.min_idle <= self.max_size or self.max_size < 1:
            raise ValueError("need 0 <= min_idle <= max_size and max_size >= 1")


@dataclass(frozen=True)
class PoolStatus:
    """A read-only snapshot of the pool's counts (operators, telemetry, tests)."""

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
