"""The sidecar's exception tree.

Every error the sidecar raises on purpose during a call is a
:class:`SidecarError`; the gRPC edge turns each kind into one gRPC status code
in a single table (``sidecar.rpc._statuses``). Expected errors are the
caller's or the upstream's doing; anything else reaching the edge is a bug:
it becomes INTERNAL, and its traceback is logged once.

::

    ConfigError                 the configuration is invalid (start-up only, never a call's)
    SidecarError
    ├── InvalidRequest          caller's fault: bad config or text (INVALID_ARGUMENT)
    ├── Unauthenticated         no bearer token, or a wrong one, when one is configured
    │                           (UNAUTHENTICATED)
    ├── CallerIdle              no text and no finish for too long (FAILED_PRECONDITION)
    ├── CallerStalled           the caller stopped reading its audio for too long
    │                           (FAILED_PRECONDITION)
    ├── Overloaded              no capacity within the wait bound; says when to retry
    │   │                       (RESOURCE_EXHAUSTED + RetryInfo)
    │   ├── TooManyStreams      over the admitted number of concurrent calls
    │   ├── PoolExhausted       every connection busy past the wait bound
    │   └── FleetExhausted      no fleet quota slot in time (sidecar.fleet)
    ├── FleetUnavailable        Redis down and the fleet policy fails closed (UNAVAILABLE;
    │                           sidecar.fleet)
    ├── PoolClosed              the sidecar is shutting down (UNAVAILABLE)
    └── UpstreamError           DashScope could not serve the task
        ├── UpstreamUnavailable     connect/transport failure, dropped socket (UNAVAILABLE)
        ├── UpstreamAuthError       handshake refused with 401/403 (FAILED_PRECONDITION)
        ├── UpstreamTimeout         no task-started / audio / task-finished in time (UNAVAILABLE)
        └── UpstreamTaskFailed      a task-failed event; keeps DashScope's code (by code)
"""

from __future__ import annotations

__all__ = [
    "CallerIdle",
    "CallerStalled",
    "ConfigError",
    "InvalidRequest",
    "Overloaded",
    "PoolClosed",
    "PoolExhausted",
    "SidecarError",
    "TooManyStreams",
    "Unauthenticated",
    "UpstreamAuthError",
    "UpstreamError",
    "UpstreamTaskFailed",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class ConfigError(ValueError):
    """Raised when the configuration is invalid; the message names the setting to change."""


class SidecarError(Exception):
    """Base class of every error the sidecar raises on purpose."""


class InvalidRequest(SidecarError):
    """Raised when a caller's request is invalid. Expected; the caller must fix it.

    ``field`` names the offending request field (e.g. ``config.volume``).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Unauthenticated(SidecarError):
    """Raised when a call lacks the configured bearer token. Expected; the caller must fix it.

    The message never quotes what the caller sent, nor the token.
    """


class CallerIdle(SidecarError):
    """Raised when a stream sends neither text nor finish within the idle bound. Expected.

    DashScope itself fails a task after 23 s without text (docs/dashscope-protocol.md §7);
    ending the call first lets the status say what happened and keeps the connection clean.
    """


class CallerStalled(SidecarError):
    """Raised when the caller stops reading its audio for longer than its bound. Expected.

    While the caller does not read, the sidecar stops reading the upstream
    (backpressure), so the upstream is not at fault: the status must not invite
    a retry as if DashScope were down.
    """


class Overloaded(SidecarError):
    """Base of the errors of a call that found no capacity in time. Expected under load.

    ``retry_after_s`` says when trying again is likely to find some.
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyStreams(Overloaded):
    """Raised when a call arrives while the admitted number of calls are running."""


class PoolExhausted(Overloaded):
    """Raised when no upstream connection frees up within the wait bound."""


class PoolClosed(SidecarError):
    """Raised when a connection is requested from a pool that is shutting down. Expected."""


class UpstreamError(SidecarError):
    """Base of the errors that come from DashScope or the way to it."""


class UpstreamUnavailable(UpstreamError):
    """Raised when the upstream cannot be reached or drops the connection. Expected, transient."""


class UpstreamAuthError(UpstreamError):
    """Raised when the upstream refuses the API key at the handshake (HTTP 401/403).

    Expected, and not retryable until the key changes (§2).
    """

    def __init__(self, status: int) -> None:
        super().__init__(
            f"upstream refused the API key (HTTP {status}); check DASHSCOPE_API_KEY or "
            "DASHSCOPE_API_KEY_FILE and the region of the upstream URL"
        )
        self.status = status


class UpstreamTimeout(UpstreamError):
    """Raised when the upstream does not answer within a bound. Expected, transient."""


class UpstreamTaskFailed(UpstreamError):
    """Raised for a ``task-failed`` event (§9); ``code`` is DashScope's ``error_code``.

    ``task_id`` names the DashScope task and ``request_uuid`` DashScope's
    request (when it sent one), for logs, traces and support requests.
    """

    def __init__(self, code: str, message: str, task_id: str = "", request_uuid: str = "") -> None:
        super().__init__(f"DashScope task failed: {code}: {message}")
        self.code = code
        self.message = message
        self.task_id = task_id
        self.request_uuid = request_uuid
