"""Slice jobs on the job queue: submitted after their row is committed, recovered from the
database at start (nothing requested before a crash or restart is lost)."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.jobs import JobQueue
from layerfleet.library import service as library

log = logging.getLogger(__name__)


class SlicingService:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], queue: JobQueue, data_dir: Path, *,
                 workers: int, sole_worker: bool, timeout: float = library.SLICE_TIMEOUT_SECONDS) -> None:
        """``workers``: slices this process runs at once (0: it only submits). ``sole_worker``:
        no other process runs slice jobs, so a job IN_PROGRESS at start was this process's own."""
        self._sessionmaker = sessionmaker
        self._queue = queue
        self.workers = workers
        self.sole_worker = sole_worker
        self.timeout = timeout
        self.runner = library.SliceRunner(sessionmaker, data_dir, timeout=timeout)

    async def start(self) -> None:
        if self.workers == 0 and self.sole_worker:
            log.warning("LAYERFLEET_JOB_WORKERS=0 without LAYERFLEET_REDIS_URL: nothing will slice uploaded "
                        "parts (a `layerfleet worker` needs Redis to take jobs from)")
        if self.workers > 0:
            await self._queue.start({library.SLICE_JOB_KIND: self.runner}, concurrency=self.workers)
        async with self._sessionmaker() as session:
            if self.sole_worker:
                released = await library.release_in_progress(session)
                if released:
                    log.info("%d slice job(s) interrupted by the last stop will run again", released)
            waiting = await library.unfinished_jobs(session, self.timeout)
            await session.commit()
        if waiting:
            log.info("%d slice job(s) waiting from before the start", len(waiting))
            await self._queue.requeue(library.SLICE_JOB_KIND, waiting)

    async def submit(self, job_uuid: str) -> None:
        """Hand a committed REQUESTED job to the queue (and mark it QUEUED)."""
        async with self._sessionmaker() as session:
            job = await library.slice_job_by_uuid_any(session, job_uuid)
            if job is not None:
                await library.mark_queued(session, job)
                await session.commit()
        await self._queue.enqueue(library.SLICE_JOB_KIND, job_uuid)

    async def close(self) -> None:
        await self._queue.close()
