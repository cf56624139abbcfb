"""The sidecar's exception tree.

Every error the sidecar raises on purpose is a :class:`SidecarError`; the
servicer turns each kind into one gRPC status code in a single table
(``sidecar.servicer``). Expected errors are the caller's or the upstream's
doing; anything else reaching the servicer is a bug and becomes INTERNAL.

::

    SidecarError
    ├── InvalidRequest          caller's fault: bad config or text (INVALID_ARGUMENT)
    ├── CallerIdle              no text and no finish for too long (FAILED_PRECONDITION)
    ├── CallerCancelled         the caller hung up mid-stream (CANCELLED)
    ├── TooManyStreams          over the admitted number of concurrent calls (RESOURCE_EXHAUSTED)
    ├── PoolExhausted           every connection busy past the wait bound (RESOURCE_EXHAUSTED)
    ├── PoolClosed              the sidecar is shutting down (UNAVAILABLE)
    └── UpstreamError           DashScope could not serve the task
        ├── UpstreamUnavailable     connect/transport failure, dropped socket (UNAVAILABLE)
        ├── UpstreamAuthError       handshake refused with 401/403 (FAILED_PRECONDITION)
        ├── UpstreamTimeout         no task-started / audio / task-finished in time (UNAVAILABLE)
        └── UpstreamTaskFailed      a task-failed event; keeps DashScope's code (by code)
"""

from __future__ import annotations

__all__ = [
    "CallerCancelled",
    "CallerIdle",
    "InvalidRequest",
    "PoolClosed",
    "PoolExhausted",
    "SidecarError",
    "TooManyStreams",
    "UpstreamAuthError",
    "UpstreamError",
    "UpstreamTaskFailed",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


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


class CallerIdle(SidecarError):
    """Raised when a stream sends neither text nor finish within the idle bound. Expected.

    DashScope itself fails a task after 23 s without text (§7); ending the call
    first lets the status say what happened and keeps the connection clean.
    """


class CallerCancelled(SidecarError):
    """Raised when the request stream ends because the caller cancelled. Expected.

    Distinguishes a hang-up from a half-close, which means finish: a cancelled
    call's text must not be synthesized to the end.
    """


class TooManyStreams(SidecarError):
    """Raised when a call arrives while the admitted number of calls are running. Expected."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PoolExhausted(SidecarError):
    """Raised when no upstream connection frees up within the wait bound. Expected under load."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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

    ``task_id`` names the DashScope task, for logs, traces and support requests.
    """

    def __init__(self, code: str, message: str, task_id: str = "") -> None:
        super().__init__(f"DashScope task failed: {code}: {message}")
        self.code = code
        self.message = message
        self.task_id = task_id
