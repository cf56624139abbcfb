"""The fleet quota's errors.

::

    SidecarError
    └── FleetError
        ├── FleetExhausted     no fleet slot (or start) within the caller's deadline; also an
        │                      Overloaded (RESOURCE_EXHAUSTED + RetryInfo(retry_after_s))
        └── FleetUnavailable   Redis unreachable and the policy is "closed", or the quota
                               is closed (UNAVAILABLE)

The sidecar's tree (sidecar/errors.py) shows where they stand among the others.
"""

from __future__ import annotations

from sidecar.errors import Overloaded, SidecarError

__all__ = ["FleetError", "FleetExhausted", "FleetUnavailable"]


class FleetError(SidecarError):
    """Base of the fleet quota's errors."""


class FleetExhausted(FleetError, Overloaded):
    """Raised when the fleet's slots stay taken (or the start rate is spent) until the
    caller's deadline. Expected under load; ``retry_after_s`` estimates when to try again.
    """


class FleetUnavailable(FleetError):
    """Raised when the quota cannot be enforced and the policy says to fail closed
    (Redis unreachable), or when the quota is closed. Expected, transient."""
