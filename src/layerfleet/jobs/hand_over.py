"""The loop that hands durable job rows to the job queue.

A job whose state lives in a table (timelapses, fine-tuning) is only recorded by the request
that causes it; every process running those jobs calls the table's ``hand_over`` now and then
(and at once when woken by a request that just recorded one). ``hand_over`` enqueues the rows
it won with a conditional UPDATE, so two processes never enqueue one row."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from layerfleet.pacing import woken_within

log = logging.getLogger(__name__)


class HandOverLoop:
    def __init__(self, hand_over: Callable[[], Awaitable[int]], *, what: str, interval: float) -> None:
        """``what`` names the jobs in the task's name and the log (``"timelapse"``)."""
        self.hand_over = hand_over
        self.what = what
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.what}-hand-over")

    def wake(self) -> None:
        """Look for new rows now rather than at the next interval."""
        self._wakeup.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.hand_over()
            except Exception:
                # The database may be away for a moment; the rows wait for the next round.
                log.exception("handing %s jobs to the queue failed; trying again", self.what)
            await woken_within(self._wakeup, self.interval)
            self._wakeup.clear()
