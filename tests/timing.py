"""Test time bounds, scaled by one environment variable for slow machines.

Every bound a test waits on goes through :func:`scaled`, so a slow CI machine
sets ``COSYVOICE_TEST_TIME_SCALE=3`` instead of tests growing sleeps.
"""

from __future__ import annotations

import os

__all__ = ["TIME_SCALE", "scaled"]

TIME_SCALE = float(os.environ.get("COSYVOICE_TEST_TIME_SCALE", "1.0"))


def scaled(seconds: float) -> float:
    """Return ``seconds`` times the machine's time scale."""
    return seconds * TIME_SCALE
