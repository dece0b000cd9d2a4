"""layerfleet.pacing: a loop that waits for a wakeup or its interval stops when cancelled, even
when the wakeup and the cancellation land at the same moment (on Python 3.11 asyncio.wait_for
swallows that cancellation, and CI hung a whole run on an agent loop built on it)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

from layerfleet.pacing import woken_within

Wait = Callable[[asyncio.Event, float], Awaitable[object]]


async def _wait_for(wakeup: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wakeup.wait(), seconds)


async def stuck_loops(wait: Wait) -> int:
    """How many of six pacing loops outlive their cancellation, woken as they are cancelled and
    then left waiting for a connection that has gone (as the agent's status pacer is)."""
    stuck = 0
    for steps_between in range(6):
        wakeup, connected = asyncio.Event(), asyncio.Event()
        connected.set()

        async def pacer(wakeup: asyncio.Event = wakeup, connected: asyncio.Event = connected) -> None:
            while True:
                await connected.wait()
                wakeup.clear()
                await wait(wakeup, 5.0)

        task = asyncio.create_task(pacer())
        await asyncio.sleep(0.01)
        wakeup.set()
        for _ in range(steps_between):
            await asyncio.sleep(0)
        connected.clear()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done:
            stuck += 1
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
    return stuck


async def test_a_loop_woken_as_it_is_cancelled_stops() -> None:
    assert await stuck_loops(woken_within) == 0
    if sys.version_info < (3, 12):  # the reason the helper exists
        assert await stuck_loops(_wait_for) > 0


async def test_it_says_whether_it_was_woken_or_the_time_ran_out() -> None:
    wakeup = asyncio.Event()
    assert await woken_within(wakeup, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, wakeup.set)
    assert await woken_within(wakeup, 5.0) is True
    assert await woken_within(wakeup, 0.0) is True  # already set: at once
