"""The watchdog: one timer, a moving deadline, one call when it passes."""

from __future__ import annotations

import asyncio

from sidecar.call._watchdog import Watchdog


async def test_fires_once_after_the_last_deadline() -> None:
    """Moving the deadline later postpones the call; it comes once, after the last one."""
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    dog = Watchdog(lambda: fired.append(loop.time()))
    start = loop.time()
    dog.set(start + 0.05)
    await asyncio.sleep(0.03)
    dog.set(start + 0.12)  # moved before it passed
    await asyncio.sleep(0.2)
    assert len(fired) == 1
    assert fired[0] >= start + 0.12


async def test_cleared_or_cancelled_never_fires() -> None:
    """A cleared deadline (None) or a cancelled watchdog calls nothing."""
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    cleared = Watchdog(lambda: fired.append("cleared"))
    cleared.set(loop.time() + 0.02)
    cleared.set(None)
    cancelled = Watchdog(lambda: fired.append("cancelled"))
    cancelled.set(loop.time() + 0.02)
    cancelled.cancel()
    await asyncio.sleep(0.08)
    assert fired == []


async def test_a_deadline_moved_earlier_fires_at_the_earlier_time() -> None:
    """Moving the deadline earlier than the pending timer is not noticed late."""
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    dog = Watchdog(lambda: fired.append(loop.time()))
    start = loop.time()
    dog.set(start + 10.0)  # e.g. the first-audio bound
    dog.set(start + 0.05)  # then a much nearer one (a stall bound)
    await asyncio.sleep(0.3)
    assert len(fired) == 1
    assert start + 0.05 <= fired[0] < start + 0.3
    dog.cancel()
