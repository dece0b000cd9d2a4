"""Jobs whose state is a table row (slices, timelapses, fine-tunings): the steps they take the
same way, so that a row is run once however many processes run such jobs.

- **Recorded**: the request that causes a job only adds its row, in its own transaction, so a
  crash between the commit and the queue loses nothing.
- **Handed over**: every process running those jobs calls its table's hand-over now and then
  (`HandOverLoop`; at once when woken by a request that just recorded one), which enqueues the
  rows it won with a conditional UPDATE (`hand_over`): two processes never enqueue one row.
- **Claimed**: the queue's handler wins the row with another conditional UPDATE (`claim`), so a
  duplicate delivery — a restart, Redis handing a job to a second worker — finds it taken."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Protocol

from sqlalchemy import ColumnElement, Result, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from layerfleet.jobs.queue import JobQueue
from layerfleet.pacing import woken_within

log = logging.getLogger(__name__)


class JobRow(Protocol):
    """A mapped class whose rows are jobs: the queue carries ``uuid``, updates go by ``id``."""

    # As seen on the class (the columns), which is all these functions use.
    id: ClassVar[InstrumentedAttribute[int]]
    uuid: ClassVar[InstrumentedAttribute[str]]


def won(result: Result[Any]) -> bool:
    """Whether a conditional UPDATE of one row changed it (the condition still held)."""
    return getattr(result, "rowcount", 0) == 1


async def claim(sessionmaker: async_sessionmaker[AsyncSession], table: type[JobRow], job_uuid: str,
                claimable: ColumnElement[bool], values: Mapping[str, Any]) -> int | None:
    """Write ``values`` to the job's row if it is still ``claimable``, in one conditional UPDATE;
    the row's id when this call won it, None when the row is gone or not claimable."""
    async with sessionmaker() as session:
        job_id = (await session.execute(select(table.id).where(table.uuid == job_uuid))).scalar_one_or_none()
        if job_id is None:
            return None
        result = await session.execute(update(table).where(table.id == job_id, claimable).values(**values)
                                       .execution_options(synchronize_session=False))
        await session.commit()
        return job_id if won(result) else None


async def hand_over(sessionmaker: async_sessionmaker[AsyncSession], queue: JobQueue, kind: str,
                    table: type[JobRow], waiting: ColumnElement[bool], stamp: Mapping[str, Any], *,
                    limit: int) -> int:
    """Enqueue up to ``limit`` rows that are ``waiting``, each one only if this call's ``stamp``
    (what makes it no longer waiting) won the row; how many were enqueued."""
    async with sessionmaker() as session:
        rows = list((await session.execute(select(table.id, table.uuid).where(waiting)
                                           .order_by(table.id).limit(limit))).all())
        mine = []
        for job_id, job_uuid in rows:
            result = await session.execute(update(table).where(table.id == job_id, waiting).values(**stamp)
                                           .execution_options(synchronize_session=False))
            if won(result):
                mine.append(job_uuid)
        await session.commit()
    # Only after the commit: a handler taking a job at once would otherwise meet this transaction's
    # uncommitted stamp (and, on SQLite, its write lock).
    for job_uuid in mine:
        await queue.enqueue(kind, job_uuid)
    return len(mine)


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
