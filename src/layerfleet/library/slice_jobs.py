"""Slice jobs on the job queue: submitted after their row is committed, recovered from the
database at start (nothing requested before a crash or restart is lost), and run by
:class:`SliceRunner` in whichever process takes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.database import utcnow
from layerfleet.jobs import JobQueue, durable
from layerfleet.library import service as library
from layerfleet.library.models import Build, PartVersion, SettingsPreset, SliceJob, SliceStatus
from layerfleet.library.service import SLICE_TIMEOUT_SECONDS, STALE_MARGIN, gcode_dir, library_root
from layerfleet.notifications import outbox
from layerfleet.notifications.models import NotificationEvent
from layerfleet.slicer import (
    DEFAULT_PROFILE,
    SliceCanceled,
    SlicerError,
    slice_stl,
)

log = logging.getLogger(__name__)


# Names of what a slice or an upload writes aside until it is complete (see slicer.prusaslicer
# and library.service): the work folder, the profile, the spooled upload.
LEFTOVER_PATTERNS = (".slicing-*", ".profile-*.ini", ".upload-*.stl")


def remove_leftovers(data_dir: Path, older_than_seconds: float | None) -> int:
    """Remove work files of slices and uploads that a killed process left behind; with other
    workers about (``older_than_seconds``), only those older than any slice can run."""
    now = time.time()
    removed = 0
    for directory in (gcode_dir(data_dir), library.stl_dir(data_dir)):
        for pattern in LEFTOVER_PATTERNS:
            for path in directory.glob(pattern):
                with contextlib.suppress(OSError):
                    if older_than_seconds is not None and now - path.lstat().st_mtime < older_than_seconds:
                        continue
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                    removed += 1
    return removed


class SliceJobs:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], queue: JobQueue, data_dir: Path, *,
                 workers: int, sole_worker: bool, timeout: float = library.SLICE_TIMEOUT_SECONDS) -> None:
        """``workers``: slices this process runs at once (0: it only submits). ``sole_worker``:
        no other process runs slice jobs, so a job IN_PROGRESS at start was this process's own."""
        self._sessionmaker = sessionmaker
        self._queue = queue
        self.workers = workers
        self.sole_worker = sole_worker
        self.timeout = timeout
        self.data_dir = data_dir
        self.runner = SliceRunner(sessionmaker, data_dir, timeout=timeout)

    async def start(self) -> None:
        if self.workers == 0 and self.sole_worker:
            log.warning("LAYERFLEET_JOB_WORKERS=0 without LAYERFLEET_REDIS_URL: nothing will slice uploaded "
                        "parts (a `layerfleet worker` needs Redis to take jobs from)")
        if self.workers > 0:
            # Before this process slices anything: what a killed worker left is not in use.
            removed = await asyncio.to_thread(
                remove_leftovers, self.data_dir, None if self.sole_worker else self.timeout + STALE_MARGIN.seconds)
            if removed:
                log.info("removed %d file(s) a stopped slice left behind", removed)
            await self._queue.start({library.SLICE_JOB_KIND: self.runner}, concurrency=self.workers)
        async with self._sessionmaker() as session:
            if self.sole_worker:
                released = await release_in_progress(session)
                if released:
                    log.info("%d slice job(s) interrupted by the last stop will run again", released)
            waiting = await unfinished_jobs(session, self.timeout)
            await session.commit()
        if waiting:
            log.info("%d slice job(s) waiting from before the start", len(waiting))
            await self._queue.requeue(library.SLICE_JOB_KIND, waiting)

    async def submit(self, job_uuid: str) -> None:
        """Hand a committed REQUESTED job to the queue (and mark it QUEUED)."""
        async with self._sessionmaker() as session:
            job = await library.slice_job_by_uuid_any(session, job_uuid)
            if job is not None:
                await mark_queued(session, job)
                await session.commit()
        await self._queue.enqueue(library.SLICE_JOB_KIND, job_uuid)

    async def close(self) -> None:
        await self._queue.close()


async def mark_queued(session: AsyncSession, job: SliceJob) -> None:
    await session.execute(update(SliceJob).where(
        SliceJob.id == job.id, SliceJob.status == SliceStatus.REQUESTED.value,
    ).values(status=SliceStatus.QUEUED.value))


def _claimable(timeout: float) -> ColumnElement[bool]:
    """Jobs a worker may take: waiting, or IN_PROGRESS longer than any slice may run (their
    worker is gone). ``timeout`` is the slice timeout, so a running slice is never taken."""
    stale = utcnow() - timedelta(seconds=timeout) - STALE_MARGIN
    return or_(SliceJob.status.in_([SliceStatus.REQUESTED.value, SliceStatus.QUEUED.value]),
               (SliceJob.status == SliceStatus.IN_PROGRESS.value) & (SliceJob.started_at < stale))


async def unfinished_jobs(session: AsyncSession, slice_timeout: float) -> list[str]:
    """Slice jobs to hand to the queue at start: never requested, queued, or lost mid-slice."""
    query = select(SliceJob.uuid).where(_claimable(slice_timeout)).order_by(SliceJob.id)
    return list((await session.execute(query)).scalars())


async def release_in_progress(session: AsyncSession) -> int:
    """After a restart of the only worker: jobs it was running go back to QUEUED."""
    result = await session.execute(update(SliceJob).where(
        SliceJob.status == SliceStatus.IN_PROGRESS.value).values(status=SliceStatus.QUEUED.value))
    return int(getattr(result, "rowcount", 0) or 0)


class SliceRunner:
    """The job queue's handler for slice jobs. Idempotent: a job is claimed with a conditional
    UPDATE, so a duplicate delivery (a restart, a second worker) finds it taken and skips it."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], data_dir: Path,
                 *, timeout: float = SLICE_TIMEOUT_SECONDS) -> None:
        self._sessionmaker = sessionmaker
        self._data_dir = data_dir
        self._timeout = timeout

    async def __call__(self, job_uuid: str) -> None:
        job_id = await self._claim(job_uuid)
        if job_id is None:
            return
        try:
            await self._slice(job_id)
        except SliceCanceled:
            pass
        except SlicerError as exc:
            await self._finish(job_id, SliceStatus.ERROR, str(exc) or "The slicer failed.")
        except Exception:
            log.exception("slice job %s failed", job_uuid)
            await self._finish(job_id, SliceStatus.ERROR, "The slice failed on the server; see its log.")

    async def _claim(self, job_uuid: str) -> int | None:
        return await durable.claim(self._sessionmaker, SliceJob, job_uuid, _claimable(self._timeout),
                                   {"status": SliceStatus.IN_PROGRESS.value, "started_at": utcnow(),
                                    "attempts": SliceJob.attempts + 1})

    async def _slice(self, job_id: int) -> None:
        root = library_root(self._data_dir)
        async with self._sessionmaker() as session:
            job = await session.get(SliceJob, job_id)
            assert job is not None
            if job.part_version_id is not None:
                version = await session.get(PartVersion, job.part_version_id)
                assert version is not None
                stls, preset, name = [root / version.stl_path], version.settings_preset, f"{version.uuid}.gcode"
            else:
                build = await session.get(Build, job.build_id)
                assert build is not None
                stls = [root / item.part_version.stl_path for item in build.items]
                preset, name = build.settings_preset, f"build-{build.uuid}.gcode"
        output = gcode_dir(self._data_dir) / name
        await asyncio.to_thread(output.parent.mkdir, parents=True, exist_ok=True)
        profile = await asyncio.to_thread(_write_profile, preset, output.parent)
        cancel = asyncio.Event()
        watcher = asyncio.create_task(self._watch_cancel(job_id, cancel))
        try:
            result = await slice_stl(stls, profile.path, output, timeout=self._timeout, cancel=cancel)
        finally:
            watcher.cancel()
            if profile.temporary:
                profile.path.unlink(missing_ok=True)
        async with self._sessionmaker() as session:
            job = await session.get(SliceJob, job_id)
            assert job is not None
            if job.status != SliceStatus.IN_PROGRESS.value:
                output.unlink(missing_ok=True)  # canceled while slicing
                return
            target: PartVersion | Build | None = (
                await session.get(PartVersion, job.part_version_id) if job.part_version_id is not None
                else await session.get(Build, job.build_id))
            assert target is not None
            target.gcode_path = str(output.relative_to(root))
            target.estimated_print_seconds = float(result.estimated_print_seconds)
            target.filament_cm3 = result.filament_cm3
            target.filament_g = result.filament_g
            target.layer_count = result.layers
            job.status = SliceStatus.COMPLETED.value
            job.finished_at = utcnow()
            job.error = None
            await outbox.record(session, organization_id=job.organization_id, event=NotificationEvent.SLICE_FINISHED,
                                payload={"subject": "Slicing", "filename": name, "job_uuid": job.uuid,
                                         "text": f"Estimated print time {round(result.estimated_print_seconds / 60)}"
                                                 " min."})
            await session.commit()
        log.info("slice job %s done in %.1f s", job_id, result.slicing_seconds)

    async def _watch_cancel(self, job_id: int, cancel: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(1.0)
            async with self._sessionmaker() as session:
                status = (await session.execute(select(SliceJob.status).where(SliceJob.id == job_id))).scalar()
            if status == SliceStatus.CANCELED.value:
                cancel.set()
                return

    async def _finish(self, job_id: int, status: SliceStatus, error: str | None) -> None:
        async with self._sessionmaker() as session:
            result = await session.execute(update(SliceJob).where(
                SliceJob.id == job_id, SliceJob.status == SliceStatus.IN_PROGRESS.value,
            ).values(status=status.value, error=(error or "")[:2000] or None, finished_at=utcnow()))
            job = await session.get(SliceJob, job_id)
            if getattr(result, "rowcount", 0) == 1 and status is SliceStatus.ERROR and job is not None:
                await outbox.record(session, organization_id=job.organization_id, event=NotificationEvent.SLICE_FAILED,
                                    payload={"subject": "Slicing", "job_uuid": job.uuid, "text": error or ""})
            await session.commit()


@dataclass
class _Profile:
    path: Path
    temporary: bool


def _write_profile(preset: SettingsPreset, directory: Path) -> _Profile:
    if preset.ini_text is None:
        return _Profile(Path(str(DEFAULT_PROFILE)), temporary=False)
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".profile-", suffix=".ini", dir=directory)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(preset.ini_text)
    return _Profile(Path(name), temporary=True)


# --- uploads ------------------------------------------------------------------------------------
