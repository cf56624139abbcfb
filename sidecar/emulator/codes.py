"""The task-failed codes the emulator sends on its own, and their messages (§9, §13).

Injected failures (``fail_code``) get the message the error-code page gives
their code when the ``fail_message`` knob is empty, so a test can set
``fail_code=Throttling.AllocationQuota`` alone and see what the real service
sends. Messages not known from an official source are marked [EMU].
"""

from __future__ import annotations

from typing import Final

__all__ = ["BURST_RATE", "RATE_QUOTA", "message_for"]

RATE_QUOTA: Final = (
    "Throttling.RateQuota",
    "Requests rate limit exceeded, please try again later.",
)
# [EMU] wording: the code is on the error-code page, this message is ours.
BURST_RATE: Final = (
    "Throttling.BurstRate",
    "Request rate increased too quickly; ramp up requests more smoothly.",
)

_MESSAGES: Final = {
    RATE_QUOTA[0]: RATE_QUOTA[1],
    BURST_RATE[0]: BURST_RATE[1],
    "Throttling": "Requests throttling triggered.",  # [EMU]
    "Throttling.AllocationQuota": "Free allocated quota exceeded.",
    # A transient server fault, as the error-code page words it. (A voice that
    # does not exist can surface as InternalError "Remote cancelled grpc
    # stream." too: inject that with fail_message; the sidecar tells them apart.)
    "InternalError": "An internal error occurred; try again later.",  # [EMU] wording
}


def message_for(code: str) -> str:
    """Return the message the service sends with ``code``, or a generic one naming it."""
    return _MESSAGES.get(code, f"{code} (injected by the emulator).")
