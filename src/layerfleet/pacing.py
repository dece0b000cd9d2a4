"""Loops that run every so often, or sooner when woken, and still stop when cancelled."""

from __future__ import annotations

import asyncio


async def woken_within(wakeup: asyncio.Event, seconds: float) -> bool:
    """Wait until ``wakeup`` is set or ``seconds`` have passed; True if it was set.

    Not ``asyncio.wait_for(wakeup.wait(), seconds)``: on Python 3.11 a cancellation that lands as
    the event is set is swallowed (wait_for returns the result), and a loop around it never
    stops — a whole CI run hung on an agent's status pacer that way. ``asyncio.timeout`` awaits
    the event in the task itself and tells its own cancellation from anyone else's."""
    try:
        async with asyncio.timeout(seconds):
            await wakeup.wait()
    except TimeoutError:
        return False
    return True
