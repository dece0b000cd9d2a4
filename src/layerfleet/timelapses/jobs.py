"""Timelapse jobs on the job queue: a print's videos compiled at its end, an uploaded timelapse
scored and compiled; and the retention of frames and videos.

The durable state is the ``timelapse_jobs`` row. A print's end only adds the row (in the
agent's transaction); a poller in every process running jobs hands QUEUED rows to the queue
(a conditional UPDATE of ``enqueued_at`` makes one process the one that does), and hands
again rows whose worker stopped beating (``heartbeat_at`` older than the stale window: a
killed worker). The handler claims a row with a conditional UPDATE, so a duplicate delivery
finds it taken; the CPU work runs in a thread. A job that failed this many times is left
as ERROR rather than crash its workers forever."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import shutil
from collections.abc import Callable, Generator
from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image
from sqlalchemy import ColumnElement, and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.detection.imaging import BadImage
from layerfleet.detection.models import Alert, PredictionFrame
from layerfleet.detection.runtime import Detector
from layerfleet.fleet.models import Printer
from layerfleet.jobs import JobQueue, durable
from layerfleet.media import KEPT_FRAMES, media_root, print_folder, remove_media
from layerfleet.prints import service as prints
from layerfleet.prints.models import Print
from layerfleet.timelapses import service
from layerfleet.timelapses.analysis import UploadScoring, score_frame
from layerfleet.timelapses.models import TimelapseJob, TimelapsePurpose, TimelapseStatus
from layerfleet.timelapses.video import NoFrames, Tag, compile_videos, sample_frames
from layerfleet.watching.frames import create_feedback_shots
from layerfleet.watching.retention import apply_scored_frame_retention

log = logging.getLogger(__name__)

TIMELAPSE_JOB_KIND = "timelapse"
MAX_ATTEMPTS = 3
SCORING_BATCH = 8
POLL_SECONDS = 2.0
# A kept frame shows the boxes of the detector's frame at most this long before it.
TAG_WINDOW = timedelta(seconds=30)


class TimelapseJobs:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], queue: JobQueue, settings: Settings, *,
                 workers: int, sole_worker: bool, detector: Callable[[], Detector | None] = lambda: None,
                 stale_seconds: float = 60.0) -> None:
        """``workers``: jobs this process runs at once (0: it only records them). ``sole_worker``:
        no other process runs them, so a job IN_PROGRESS at start was this process's own."""
        self.sessionmaker = sessionmaker
        self.queue = queue
        self.settings = settings
        self.workers = workers
        self.sole_worker = sole_worker
        self.stale = timedelta(seconds=stale_seconds)
        self.runner = TimelapseRunner(sessionmaker, settings, detector=detector, stale=self.stale)
        self._hand_over = durable.HandOverLoop(self.hand_over, what="timelapse", interval=POLL_SECONDS)
        self._retention: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.workers == 0:
            return
        await self.queue.start({TIMELAPSE_JOB_KIND: self.runner}, concurrency=self.workers)
        if self.sole_worker:
            # Before this process compiles anything: what a killed one was writing is not in use.
            await asyncio.to_thread(remove_leftovers, self.settings.data_dir)
            async with self.sessionmaker() as session:
                released = await session.execute(update(TimelapseJob).where(
                    TimelapseJob.status.in_([TimelapseStatus.IN_PROGRESS.value, TimelapseStatus.QUEUED.value]))
                    .values(status=TimelapseStatus.QUEUED.value, enqueued_at=None))
                await session.commit()
                if getattr(released, "rowcount", 0):
                    log.info("%d timelapse job(s) from before the start will run", released.rowcount)  # type: ignore[attr-defined]
        self._hand_over.start()
        self._retention = asyncio.create_task(self._retain(), name="timelapse-retention")

    async def close(self) -> None:
        await self._hand_over.close()
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
            self._retention = None
        await self.queue.close()

    def wake(self) -> None:
        """Look for new jobs now (a request just added one) rather than at the next poll."""
        self._hand_over.wake()

    async def hand_over(self) -> int:
        """Enqueue the jobs nobody has taken: new ones, and those whose worker died."""
        now = utcnow()
        return await durable.hand_over(self.sessionmaker, self.queue, TIMELAPSE_JOB_KIND, TimelapseJob,
                                       _waiting(now, self.stale), {"enqueued_at": now}, limit=100)

    async def _retain(self) -> None:
        while True:
            try:
                await apply_retention(self.sessionmaker, self.settings)
            except Exception:
                log.exception("timelapse retention failed; trying again later")
            try:
                await apply_scored_frame_retention(self.sessionmaker, self.settings)
            except Exception:
                log.exception("scored-frame retention failed; trying again later")
            await asyncio.sleep(self.settings.timelapse_retention_interval_seconds)


def _remove_matching(folder: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for path in folder.glob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()


def remove_leftovers(data_dir: Path) -> None:
    """Videos and posters a killed compilation was writing aside, and uploads being received."""
    orgs = media_root(data_dir) / "orgs"
    for pattern in ("*/prints/*/.video-*.mp4", "*/prints/*/.poster-*.jpg", "*/uploads/.upload-*.part"):
        for path in orgs.glob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()


def _waiting(now: datetime, stale: timedelta) -> ColumnElement[bool]:
    """Rows to hand to the queue: queued and not yet handed over, or running without a
    heartbeat lately (once per stale window). A handed-over row stays in Redis's queue; the
    in-process queue's are handed over again at start (``enqueued_at`` cleared)."""
    return or_(
        and_(TimelapseJob.status == TimelapseStatus.QUEUED.value, TimelapseJob.enqueued_at.is_(None)),
        and_(TimelapseJob.status == TimelapseStatus.IN_PROGRESS.value, TimelapseJob.heartbeat_at < now - stale,
             or_(TimelapseJob.enqueued_at.is_(None), TimelapseJob.enqueued_at < now - stale)),
    )


def _claimable(now: datetime, stale: timedelta) -> ColumnElement[bool]:
    return or_(TimelapseJob.status == TimelapseStatus.QUEUED.value,
               and_(TimelapseJob.status == TimelapseStatus.IN_PROGRESS.value, TimelapseJob.heartbeat_at < now - stale))


class TimelapseRunner:
    """The queue's handler for timelapse jobs; idempotent (see the module's docstring)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *,
                 detector: Callable[[], Detector | None], stale: timedelta) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.data_dir = settings.data_dir
        self._detector_of_pipeline = detector
        self._detector: Detector | None = None
        self.stale = stale

    async def __call__(self, job_uuid: str) -> None:
        job_id = await self._claim(job_uuid)
        if job_id is None:
            return
        beating = asyncio.create_task(self._heartbeat(job_id))
        try:
            status, error = await self._run(job_id)
        except Exception as exc:
            log.exception("timelapse job %s failed", job_uuid)
            status, error = TimelapseStatus.ERROR, f"The video could not be made: {exc}"
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
        await self._finish(job_id, status, error)

    async def _claim(self, job_uuid: str) -> int | None:
        now = utcnow()
        claimable = _claimable(now, self.stale)
        job_id = await durable.claim(self.sessionmaker, TimelapseJob, job_uuid,
                                     claimable & (TimelapseJob.attempts < MAX_ATTEMPTS),
                                     {"status": TimelapseStatus.IN_PROGRESS.value, "started_at": now,
                                      "heartbeat_at": now, "attempts": TimelapseJob.attempts + 1})
        if job_id is None:
            # Not won: taken by another worker, gone, or spent — only a spent one is still claimable.
            async with self.sessionmaker() as session:
                await session.execute(update(TimelapseJob).where(
                    TimelapseJob.uuid == job_uuid, TimelapseJob.attempts >= MAX_ATTEMPTS, claimable)
                    .values(status=TimelapseStatus.ERROR.value, finished_at=now,
                            error=f"Stopped after {MAX_ATTEMPTS} attempts."))
                await session.commit()
        return job_id

    async def _heartbeat(self, job_id: int) -> None:
        while True:
            await asyncio.sleep(max(0.2, self.stale.total_seconds() / 4))
            try:
                async with self.sessionmaker() as session:
                    await session.execute(update(TimelapseJob).where(
                        TimelapseJob.id == job_id, TimelapseJob.status == TimelapseStatus.IN_PROGRESS.value)
                        .values(heartbeat_at=utcnow()))
                    await session.commit()
            except Exception:
                # One missed beat is harmless; the next one tries again.
                log.warning("timelapse job %s: heartbeat failed", job_id, exc_info=True)

    async def _finish(self, job_id: int, status: TimelapseStatus, error: str | None) -> None:
        async with self.sessionmaker() as session:
            await session.execute(update(TimelapseJob).where(
                TimelapseJob.id == job_id, TimelapseJob.status == TimelapseStatus.IN_PROGRESS.value,
            ).values(status=status.value, error=(error or "")[:2000] or None, finished_at=utcnow()))
            await session.commit()
        log.info("timelapse job %s: %s%s", job_id, status.value, f" ({error})" if error else "")

    async def _run(self, job_id: int) -> tuple[TimelapseStatus, str | None]:
        async with self.sessionmaker() as session:
            job = await session.get(TimelapseJob, job_id)
            print_ = await session.get(Print, job.print_id) if job is not None else None
            if job is None or print_ is None:
                return TimelapseStatus.SKIPPED, "The print is gone."
            purpose, source, speed = job.purpose, job.source_path, job.speed or 1.0
        if purpose == TimelapsePurpose.ANALYSE.value:
            if source is None:
                return TimelapseStatus.ERROR, "The upload is missing."
            await self._analyse(job_id, source, speed)
        elif not self.settings.timelapse_enabled:
            return TimelapseStatus.SKIPPED, "Timelapses are turned off (LAYERFLEET_TIMELAPSE_ENABLED)."
        else:
            too_short = await self._too_short(job_id)
            if too_short:
                return TimelapseStatus.SKIPPED, too_short
        return await self._compile(job_id)

    async def _too_short(self, job_id: int) -> str | None:
        async with self.sessionmaker() as session:
            job = await session.get(TimelapseJob, job_id)
            assert job is not None
            print_ = await session.get(Print, job.print_id)
            assert print_ is not None
            ended = print_.finished_at or print_.cancelled_at
            if ended is None:
                return None
            minimum = (self.settings.timelapse_min_finished_seconds if print_.finished_at is not None
                       else self.settings.timelapse_min_cancelled_seconds)
            if (ended - print_.started_at).total_seconds() >= minimum:
                return None
        await asyncio.to_thread(_remove_folder, self.data_dir, print_.organization_id, print_.id, KEPT_FRAMES)
        return f"The print ran shorter than {minimum:.0f} s."

    # -- compiling ---------------------------------------------------------------------------------

    async def _compile(self, job_id: int) -> tuple[TimelapseStatus, str | None]:
        async with self.sessionmaker() as session:
            job = await session.get(TimelapseJob, job_id)
            assert job is not None
            print_ = await session.get(Print, job.print_id)
            if print_ is None:
                return TimelapseStatus.SKIPPED, "The print is gone."
            organization_id, print_id = print_.organization_id, print_.id
            failed = print_.alerted_at is not None or print_.paused_at is not None
            # The video is the primary camera's; the other cameras' frames would interleave other views.
            scored = list((await session.execute(select(PredictionFrame).where(
                PredictionFrame.print_id == print_id, PredictionFrame.camera.is_(None))
                .order_by(PredictionFrame.taken_at))).scalars())
            records = await prints.prediction_records(session, print_)
        root = media_root(self.data_dir)
        folder = root / print_folder(organization_id, print_id)
        # The claim makes this run the print's only one: what a dead run wrote aside is garbage.
        await asyncio.to_thread(_remove_matching, folder, (".video-*.mp4", ".poster-*.jpg"))
        kept = await asyncio.to_thread(service.kept_frames, self.data_dir, organization_id, print_id)
        if kept:
            frames = [frame.path for frame in kept]
            times = [frame.taken_at for frame in kept]
            tags = _tags_for(times, scored)
        else:  # nothing kept (an upload, or recording off): the detector's own frames, those still stored
            pictured = [(frame, frame.image_path) for frame in scored if frame.image_path is not None]
            frames = [root / image for _, image in pictured]
            times = [frame.taken_at for frame, _ in pictured]
            tags = [Tag(frame.boxes, frame.normalized_p) for frame, _ in pictured]
        if not frames:
            return TimelapseStatus.SKIPPED, "No frames of this print were kept."
        poster_index = None
        if failed and scored:
            worst = max(scored, key=lambda frame: (frame.p, -frame.frame_number))
            poster_index = min(range(len(times)), key=lambda i: abs((times[i] - worst.taken_at).total_seconds()))
        try:
            await asyncio.to_thread(
                compile_videos, frames, tags, video=folder / service.VIDEO, tagged_video=folder / service.TAGGED_VIDEO,
                poster=folder / service.POSTER, poster_index=poster_index, fps=self.settings.timelapse_fps)
        except NoFrames:
            return TimelapseStatus.SKIPPED, "None of the print's frames could be read."
        await asyncio.to_thread(service.write_json, folder / service.PREDICTION_JSON, records)
        await asyncio.to_thread(service.write_json, folder / service.FRAME_TIMES, [t.timestamp() for t in times])
        async with self.sessionmaker() as session:
            print_ = await session.get(Print, print_id)
            if print_ is None:  # deleted while compiling: its files go too
                await service.remove_print_media(self.data_dir, organization_id, print_id)
                return TimelapseStatus.SKIPPED, "The print was deleted."
            print_.video_path = service.media_of(print_, service.VIDEO)
            print_.tagged_video_path = service.media_of(print_, service.TAGGED_VIDEO)
            print_.poster_path = service.media_of(print_, service.POSTER)
            print_.prediction_json_path = service.media_of(print_, service.PREDICTION_JSON)
            await session.commit()
        if self.settings.timelapse_keep_frames_days == 0:
            await _remove_kept_frames(self.sessionmaker, self.data_dir, job_id)
        return TimelapseStatus.DONE, None

    # -- uploaded timelapses -------------------------------------------------------------------------

    async def _analyse(self, job_id: int, source: str, speed: float) -> None:
        """Score the upload's frames (from scratch: a retry forgets an interrupted run's frames)."""
        detector = self._detector_of_pipeline() or self._detector
        if detector is None:
            detector = self._detector = await asyncio.to_thread(Detector)
        async with self.sessionmaker() as session:
            job = await session.get(TimelapseJob, job_id)
            assert job is not None
            print_ = await session.get(Print, job.print_id)
            assert print_ is not None
            await session.execute(delete(Alert).where(Alert.print_id == print_.id))
            await session.execute(delete(PredictionFrame).where(PredictionFrame.print_id == print_.id))
            printer = await session.get(Printer, print_.printer_id) if print_.printer_id is not None else None
            state = UploadScoring.for_printer(printer)
            print_.alerted_at = None
            started = print_.started_at
            every = self.settings.timelapse_upload_print_seconds_per_frame / speed
            samples = sample_frames(media_root(self.data_dir) / source, every)
            try:
                while batch := await asyncio.to_thread(_next_jpegs, samples, SCORING_BATCH):
                    results = await asyncio.to_thread(detector.detect, [jpeg for _, jpeg in batch])
                    for (at, jpeg), result in zip(batch, results, strict=True):
                        if isinstance(result, BadImage):
                            continue
                        await score_frame(session, print_, state, jpeg, result,
                                          started + timedelta(seconds=at * speed), data_dir=self.data_dir)
                    # Per batch: a long transaction would hold SQLite's write lock from the
                    # heartbeat; a retry starts over anyway (the frames and alerts above go).
                    await session.commit()
            finally:
                await asyncio.to_thread(samples.close)
            await create_feedback_shots(session, print_)
            await session.commit()
        await remove_media(self.data_dir, source)


def _next_jpegs(samples: Generator[tuple[float, Image.Image]], count: int) -> list[tuple[float, bytes]]:
    out = []
    for at, image in itertools.islice(samples, count):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=90)
        out.append((at, buffer.getvalue()))
    return out


def _tags_for(times: list[datetime], scored: list[PredictionFrame]) -> list[Tag | None]:
    """For each kept frame, the detector's verdict on the latest scored frame up to it."""
    tags: list[Tag | None] = []
    index = -1
    for moment in times:
        while index + 1 < len(scored) and scored[index + 1].taken_at <= moment + timedelta(milliseconds=1):
            index += 1
        if index >= 0 and moment - scored[index].taken_at <= TAG_WINDOW:
            tags.append(Tag(scored[index].boxes, scored[index].normalized_p))
        else:
            tags.append(None)
    return tags


def _remove_folder(data_dir: Path, organization_id: int, print_id: int, name: str) -> None:
    shutil.rmtree(media_root(data_dir) / print_folder(organization_id, print_id) / name, ignore_errors=True)


async def _remove_kept_frames(sessionmaker: async_sessionmaker[AsyncSession], data_dir: Path, job_id: int) -> None:
    async with sessionmaker() as session:
        job = await session.get(TimelapseJob, job_id)
        if job is None:
            return
        await asyncio.to_thread(_remove_folder, data_dir, job.organization_id, job.print_id, KEPT_FRAMES)
        job.frames_removed_at = utcnow()
        await session.commit()


async def apply_retention(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> tuple[int, int]:
    """Remove kept frames of prints whose videos exist for ``timelapse_keep_frames_days``, and
    videos older than ``timelapse_keep_videos_days`` (0: kept forever). How many of each."""
    now = utcnow()
    frames_removed = videos_removed = 0
    async with sessionmaker() as session:
        done = TimelapseJob.status == TimelapseStatus.DONE.value
        due = list((await session.execute(select(TimelapseJob.id).where(
            done, TimelapseJob.frames_removed_at.is_(None),
            TimelapseJob.finished_at <= now - timedelta(days=settings.timelapse_keep_frames_days)))).scalars())
    for job_id in due:
        await _remove_kept_frames(sessionmaker, settings.data_dir, job_id)
        frames_removed += 1
    if settings.timelapse_keep_videos_days > 0:
        async with sessionmaker() as session:
            old = list((await session.execute(select(TimelapseJob).where(
                done, TimelapseJob.videos_removed_at.is_(None),
                TimelapseJob.finished_at <= now - timedelta(days=settings.timelapse_keep_videos_days)))).scalars())
            for job in old:
                print_ = await session.get(Print, job.print_id)
                if print_ is not None:
                    for name in (service.VIDEO, service.TAGGED_VIDEO, service.FRAME_TIMES):
                        await remove_media(settings.data_dir, service.media_of(print_, name))
                    print_.video_path = print_.tagged_video_path = None
                job.videos_removed_at = now
                videos_removed += 1
            await session.commit()
    if frames_removed or videos_removed:
        log.info("timelapse retention: frames of %d print(s), videos of %d removed", frames_removed, videos_removed)
    return frames_removed, videos_removed
