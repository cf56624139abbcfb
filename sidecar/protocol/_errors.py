"""The protocol core's errors."""

from __future__ import annotations

__all__ = ["InvalidTaskState", "ProtocolError", "ProtocolViolation", "UnexpectedFrame"]


class ProtocolError(Exception):
    """Base of the errors raised by this module."""


class InvalidTaskState(ProtocolError):
    """Raised when an action does not fit the task's current state.

    A bug in the caller (the driver), not in the peer.
    """


class UnexpectedFrame(ProtocolError):
    """Raised when the server sends something the protocol does not allow.

    The peer's fault (or a protocol change): the connection must be discarded.
    """


class ProtocolViolation(ProtocolError):
    """Raised by :func:`parse_client_frame` when a client message is invalid.

    Carries the ``error_code`` / ``error_message`` a server answers with (§9).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
