"""Jobs whose state is a table row (`layerfleet.jobs.durable`): a row is handed to the queue once
and claimed once however many callers try at the same moment, on SQLite and PostgreSQL; a
timelapse job that failed too often is given up rather than run again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from conftest import Farm
from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.jobs import InProcessJobQueue, durable
from layerfleet.prints.models import Print
from layerfleet.timelapses import service as timelapses
from layerfleet.timelapses.jobs import MAX_ATTEMPTS, TIMELAPSE_JOB_KIND, TimelapseJobs
from layerfleet.timelapses.models import TimelapseJob, TimelapseStatus

QUEUED = TimelapseJob.status == TimelapseStatus.QUEUED.value


class RecordingQueue(InProcessJobQueue):
    """Remembers what was enqueued; nothing runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.enqueued: list[tuple[str, str]] = []

    async def enqueue(self, kind: str, job_id: str) -> None:
        self.enqueued.append((kind, job_id))


async def queued_jobs(farm: Farm, count: int) -> list[TimelapseJob]:
    owner = await farm.member()
    printer = await farm.printer(owner, name="Durable")
    prints = [await farm.print(printer, finished_at=utcnow()) for _ in range(count)]

    async def ask(session: Any) -> list[TimelapseJob]:
        jobs = []
        for print_ in prints:
            job = await timelapses.print_ended(session, await session.get(Print, print_.id))
            assert job is not None
            jobs.append(job)
        await session.commit()
        return jobs

    jobs: list[TimelapseJob] = await farm.run(ask)
    return jobs


async def job_row(farm: Farm, job_id: int) -> TimelapseJob:
    async def look(session: Any) -> TimelapseJob:
        return (await session.execute(select(TimelapseJob).where(TimelapseJob.id == job_id))).scalar_one()

    row: TimelapseJob = await farm.run(look)
    return row


async def test_a_row_is_claimed_by_one_caller_of_many(farm: Farm) -> None:
    [job] = await queued_jobs(farm, 1)
    claims = await asyncio.gather(*(
        durable.claim(farm.sessionmaker, TimelapseJob, job.uuid, QUEUED,
                      {"status": TimelapseStatus.IN_PROGRESS.value, "attempts": TimelapseJob.attempts + 1})
        for _ in range(4)))
    assert sorted(claims, key=lambda found: found is None) == [job.id, None, None, None]
    row = await job_row(farm, job.id)
    assert (row.status, row.attempts) == (TimelapseStatus.IN_PROGRESS.value, 1)  # written once
    assert await durable.claim(farm.sessionmaker, TimelapseJob, "no-such-job", QUEUED,
                               {"status": TimelapseStatus.DONE.value}) is None


async def test_two_hand_overs_at_once_enqueue_each_waiting_row_once(farm: Farm) -> None:
    jobs = await queued_jobs(farm, 5)
    queue = RecordingQueue()
    waiting = QUEUED & TimelapseJob.enqueued_at.is_(None)

    async def hand_over(limit: int) -> int:
        return await durable.hand_over(farm.sessionmaker, queue, TIMELAPSE_JOB_KIND, TimelapseJob, waiting,
                                       {"enqueued_at": utcnow()}, limit=limit)

    counts = await asyncio.gather(hand_over(3), hand_over(100))
    assert sum(counts) == len(queue.enqueued) == 5
    assert sorted(queue.enqueued) == sorted((TIMELAPSE_JOB_KIND, job.uuid) for job in jobs)
    assert await hand_over(100) == 0 and len(queue.enqueued) == 5  # stamped: no longer waiting


async def test_a_timelapse_job_that_failed_too_often_is_given_up_not_run(farm: Farm, settings: Settings,
                                                                         tmp_path: Path) -> None:
    spent, last_try = await queued_jobs(farm, 2)

    async def set_attempts(session: Any) -> None:
        await session.execute(update(TimelapseJob).where(TimelapseJob.id == spent.id).values(attempts=MAX_ATTEMPTS))
        await session.execute(update(TimelapseJob).where(TimelapseJob.id == last_try.id)
                              .values(attempts=MAX_ATTEMPTS - 1))
        await session.commit()

    await farm.run(set_attempts)
    jobs = TimelapseJobs(farm.sessionmaker, RecordingQueue(), settings.model_copy(update={"data_dir": tmp_path}),
                         workers=1, sole_worker=True)
    await jobs.runner(spent.uuid)
    given_up = await job_row(farm, spent.id)
    assert given_up.status == TimelapseStatus.ERROR.value
    assert given_up.error == f"Stopped after {MAX_ATTEMPTS} attempts." and given_up.attempts == MAX_ATTEMPTS
    await jobs.runner(last_try.uuid)  # its last attempt runs (the print has no frames: it ends all the same)
    ran = await job_row(farm, last_try.id)
    assert ran.attempts == MAX_ATTEMPTS and ran.status != TimelapseStatus.QUEUED.value
    assert ran.error != f"Stopped after {MAX_ATTEMPTS} attempts."
