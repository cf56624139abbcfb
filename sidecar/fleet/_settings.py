"""The fleet quota's settings: one frozen, validated object, and the URL redaction.

The Redis URL may carry a password (``redis://:secret@host:6379/0``); it
appears nowhere but in the connection itself: not in ``repr``, logs, errors
or the status (:func:`redact_url`, :func:`redact_text`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from sidecar.errors import ConfigError

__all__ = ["REDIS_SCHEMES", "FleetSettings", "redact_text", "redact_url"]

REDIS_SCHEMES: Final = ("redis", "rediss")
# The key names a quota inside Redis key names and a cluster hash tag ``{key}``: braces
# would break the tag, and spaces or control characters make keys unreadable in redis-cli.
_KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9._:/-]{1,100}")


@dataclass(frozen=True, repr=False)
class FleetSettings:
    """How this sidecar shares one DashScope quota with the rest of its fleet.

    Every sidecar that shares ``key`` must use the same ``redis_url`` and ``quota``
    (a mismatch is logged; the scripts enforce the quota of whoever runs them).
    """

    redis_url: str
    """``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS); TLS options
    (``ssl_ca_certs``, ``ssl_cert_reqs``, ...) go in the query string, as redis-py reads them."""
    quota: int
    """Concurrent DashScope tasks the whole fleet may run for this key."""
    key: str = "default"
    """Which quota: e.g. the account and model family; namespaces the Redis keys."""
    start_rate: float | None = None
    """Task starts per second, fleet-wide (None: no limit). Counted over a window of one
    second, or the fewest whole seconds that make the count a whole number (0.5 -> 1 per 2 s)."""
    lease_ttl_s: float = 15.0
    """A slot not renewed for this long is taken back: the bound on what a crashed or
    partitioned sidecar keeps from the others. Renewed every third of it."""
    on_redis_down: Literal["open", "closed"] = "open"
    """``open``: calls go on with local limits only (the quota is not enforced);
    ``closed``: calls fail with :class:`~sidecar.fleet.FleetUnavailable`."""
    redis_timeout_s: float = 1.0
    """Bound on connecting to Redis and on each command: past it, Redis counts as down.
    Capped at a twelfth of the lease TTL (:attr:`command_timeout_s`)."""
    redis_max_connections: int = 8
    """Connections to Redis from this process (one more is the wake-up subscription)."""
    key_prefix: str = "cosyvoice:fleet"
    """The first part of every Redis key and channel name."""

    def __post_init__(self) -> None:
        scheme = urlsplit(self.redis_url).scheme
        if scheme not in REDIS_SCHEMES:
            raise ConfigError('"fleet.redis_url" must start with redis:// or rediss://')
        if self.quota < 1:
            raise ConfigError('"fleet.quota" must be >= 1')
        if not _KEY_PATTERN.fullmatch(self.key):
            raise ConfigError('"fleet.key" must be 1-100 characters of letters, digits and ._:/-')
        if not _KEY_PATTERN.fullmatch(self.key_prefix):
            raise ConfigError(
                '"fleet.key_prefix" must be 1-100 characters of letters, digits and ._:/-'
            )
        if self.start_rate is not None and not 0.0 < self.start_rate <= 10_000.0:
            raise ConfigError('"fleet.start_rate" must be > 0 and <= 10000 (or unset)')
        if not self.lease_ttl_s >= 1.0:
            # Renewals run every third of the TTL; below a second the renewer would be
            # most of the Redis traffic, and a GC pause would lose slots.
            raise ConfigError('"fleet.lease_ttl_s" must be >= 1')
        if not self.redis_timeout_s > 0.0:
            raise ConfigError('"fleet.redis_timeout_s" must be > 0')
        if self.on_redis_down not in ("open", "closed"):
            raise ConfigError('"fleet.on_redis_down" must be "open" or "closed"')
        if self.redis_max_connections < 1:
            raise ConfigError('"fleet.redis_max_connections" must be >= 1')

    def __repr__(self) -> str:
        return (
            f"FleetSettings(redis_url={redact_url(self.redis_url)!r}, quota={self.quota}, "
            f"key={self.key!r}, start_rate={self.start_rate}, lease_ttl_s={self.lease_ttl_s}, "
            f"on_redis_down={self.on_redis_down!r})"
        )

    @property
    def command_timeout_s(self) -> float:
        """The bound actually used per connect and command: ``redis_timeout_s``, but at most
        a twelfth of the TTL. One operation may take three of them (connect, command and
        redis-py's one retry), so a renewal (due a third of the TTL after the last) that fails
        ends within a quarter of the TTL, leaving the rest for the probes that follow it to
        renew the slots before they expire. A short
        ``--fleet-lease-ttl`` therefore shortens it rather than being refused over a setting
        with no flag (at the default 15 s TTL the cap, 1.25 s, is above the 1 s default)."""
        return min(self.redis_timeout_s, self.lease_ttl_s / 12)

    @property
    def renew_interval_s(self) -> float:
        """How often held slots are renewed: three renewals fit in one TTL, so two may fail."""
        return self.lease_ttl_s / 3

    @property
    def secrets(self) -> tuple[str, ...]:
        """The URL's passwords (in the user info or a ``password`` query argument), only
        to scrub them from error messages (:func:`redact_text`)."""
        parts = urlsplit(self.redis_url)
        found = [unquote(parts.password)] if parts.password else []
        found += [value for name, value in parse_qsl(parts.query) if name == "password"]
        return tuple(secret for secret in found if secret)


def redact_url(url: str) -> str:
    """Return ``url`` with its passwords replaced by ``***`` (user, host and query kept)."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:  # IPv6: urlsplit took the brackets off
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if parts.query:
        query = [
            (name, "***" if name == "password" else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*/"))
    return urlunsplit(parts)


def redact_text(text: str, secrets: tuple[str, ...]) -> str:
    """Return ``text`` with every occurrence of each of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
