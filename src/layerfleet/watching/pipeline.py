"""The live pipeline: agents' pictures in, scored frames applied, off the event loop.

`WatchingPipeline` is the server's frame sink. A picture is taken for scoring only when its
printer is watched and printing, and at most one per printer per interval (10 s): the claim
is a conditional UPDATE of ``printers.last_scored_at``, so it holds across server processes.
Claimed frames wait in a bounded in-process queue; one task takes whatever has gathered
(frames of many printers) and scores them in one batch in a thread, while another applies the
previous batch's results in one transaction (each in its own if that fails): the detector and
the database work at once, and a printer's frames are still applied in the order they came.

Scaled out (``stream``, :mod:`layerfleet.watching.frame_stream`), a server only claims: its
frames go to Redis, and `layerfleet worker` processes score and apply them with the same code
(:class:`layerfleet.watching.scoring_worker.FrameScorer`).

Pictures arrive through :meth:`WatchingPipeline.claim`, inside the uploader's transaction and
from the printer it already read (``watching.sink``); :meth:`WatchingPipeline.submit` is the
same on its own.

A full queue drops the frame, never silently: the drop is counted (``layerfleet.metrics``),
logged (at most one line per ``DROP_LOG_SECONDS``) and :meth:`WatchingPipeline.health` says the
pipeline is behind, which the fleet page shows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, Update, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet import metrics
from layerfleet.commands.bus import AgentMessage, CommandBus
from layerfleet.database import utcnow
from layerfleet.detection.imaging import BadImage
from layerfleet.detection.model_choice import ModelChoice
from layerfleet.detection.models import PredictionFrame
from layerfleet.detection.runtime import Detector, FrameResult
from layerfleet.fleet.events import FleetEvents
from layerfleet.fleet.models import Printer, PrinterCamera
from layerfleet.fleet.service import HOT_PATH_LOAD
from layerfleet.prints.models import Print
from layerfleet.watching.frames import FrameOutcome, HoursLedger, apply_frame, is_watched_now
from layerfleet.watching.sink import AfterCommit

if TYPE_CHECKING:
    from layerfleet.watching.frame_stream import FrameStream

log = logging.getLogger(__name__)

MAX_WAITING_FRAMES = 256
# Watching is "behind" while frames were dropped within this window, or one has waited longer
# than the scoring interval (and at least this floor: a frame waiting a few seconds is normal).
BEHIND_WINDOW_SECONDS = 60.0
BEHIND_WAIT_FLOOR_SECONDS = 10.0
# At most one log line per this many seconds about drops, however many there are.
DROP_LOG_SECONDS = 30.0
# How stale a server's view of the scoring workers' backlog may be (every upload consults it).
STREAM_STATS_SECONDS = 2.0


@dataclass(frozen=True)
class WatchingHealth:
    """Whether the pipeline keeps up: what the fleet page's warning and the metrics say."""

    behind: bool
    dropped_last_minute: int
    oldest_waiting_seconds: float
    queue_depth: int
    queue_capacity: int


@dataclass(frozen=True)
class StreamBacklog:
    """Frames waiting in the scoring workers' stream or being scored there."""

    depth: int
    oldest_seconds: float  # age of the oldest of them; 0 when none


@dataclass(frozen=True)
class PendingFrame:
    printer_id: int
    organization_id: int
    jpeg: bytes
    received_at: datetime
    camera: str | None = None  # a camera other than the primary, by its agent's name
    # Taken over from a scoring worker that died before acknowledging it: it may have been applied.
    taken_over: bool = False


class WatchingPipeline:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: CommandBus,
        *,
        data_dir: Path,
        interval_seconds: float = 10.0,
        batch_size: int = 8,
        unlimited_hours: bool = False,
        detector: Detector | None = None,
        events: FleetEvents | None = None,
        queue_size: int = MAX_WAITING_FRAMES,
        stream: FrameStream | None = None,
    ) -> None:
        """``stream``: claimed frames go there for `layerfleet worker`s to score, and this process
        scores none (nor loads the detector for it)."""
        self.sessionmaker = sessionmaker
        self.events = events or FleetEvents()
        self.bus = bus
        self.data_dir = data_dir
        self.interval = timedelta(seconds=interval_seconds)
        self.batch_size = batch_size
        self.unlimited_hours = unlimited_hours
        self.detector = detector
        # Each organization's frames are scored with its own model (fine-tuned, or the shipped one).
        self.models = ModelChoice(sessionmaker, data_dir / "media")
        self.queue: asyncio.Queue[PendingFrame] = asyncio.Queue(queue_size)
        self.queue_size = queue_size
        self.stream = stream
        self._last_backlog = StreamBacklog(0, 0.0)
        self.outcomes: asyncio.Queue[FrameOutcome] | None = None  # tests listen here
        self.scored = 0
        self.dropped = 0
        self._tasks: list[asyncio.Task[None]] = []
        # One scored batch waits here while the next is scored: more would only age in memory.
        self._scored_batches: asyncio.Queue[tuple[list[PendingFrame], list[tuple[PendingFrame, FrameResult]]]] = \
            asyncio.Queue(1)
        # Arrival times of the frames in the queue, then of the batch being scored, oldest
        # first: the queue itself cannot be looked into.
        self._waiting: deque[datetime] = deque()
        self._in_flight: deque[datetime] = deque()
        self._drops: deque[float] = deque()  # monotonic times of drops within BEHIND_WINDOW_SECONDS
        self._drops_unlogged: dict[int, int] = {}  # printer id → drops since the last log line
        self._drop_logged_at = -DROP_LOG_SECONDS
        metrics.track_waiting_frames(self)

    async def start(self) -> None:
        if self.stream is not None:
            await self.stream.start()
            self._tasks = [asyncio.create_task(self._watch_stream(), name="watching-stream")]
            metrics.WATCHING_QUEUE_CAPACITY.inc(self.stream.backlog_limit)
            return
        await self.load_detector()
        self._tasks = [asyncio.create_task(self._detect_stage(), name="watching-detect"),
                       asyncio.create_task(self._apply_stage(), name="watching-apply")]
        metrics.WATCHING_QUEUE_CAPACITY.inc(self.queue_size)

    async def load_detector(self) -> Detector:
        if self.detector is None:
            # Loading the model takes a moment; not on the event loop.
            self.detector = await asyncio.to_thread(Detector)
        return self.detector

    async def close(self) -> None:
        if self._tasks:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
            if self.stream is not None:
                metrics.WATCHING_QUEUE_CAPACITY.dec(self.stream.backlog_limit)
                await self.stream.close()
                return
            metrics.WATCHING_QUEUE_CAPACITY.dec(self.queue_size)
            # Frames left behind are no longer waiting for anything.
            metrics.WATCHING_QUEUE_DEPTH.dec(self.queue.qsize())
            self._waiting.clear()
            self._in_flight.clear()

    async def submit(self, printer_id: int, organization_id: int, jpeg_bytes: bytes, received_at: datetime,
                     *, camera: str | None = None) -> None:
        async with self.sessionmaker() as session:
            printer = await session.get(Printer, printer_id, options=HOT_PATH_LOAD)
            if printer is None:
                metrics.PICTURES_RECEIVED.inc()
                return
            then = await self.claim(session, printer, jpeg_bytes, received_at, camera=camera)
            if then is None:
                return
            await session.commit()
        await then()

    async def claim(self, session: AsyncSession, printer: Printer, jpeg_bytes: bytes,
                    received_at: datetime, *, camera: str | None = None) -> AfterCommit | None:
        """Claim the picture for scoring in the caller's transaction (``watching.sink``); what is
        returned queues it once the claim is committed. Each camera has its own claim: the
        primary's on the printer, another's on its ``printer_cameras`` row (which the uploader
        made), so every camera is scored once per interval."""
        metrics.PICTURES_RECEIVED.inc()
        if not is_watched_now(printer):
            return None
        if camera is None and printer.last_scored_at is not None \
                and printer.last_scored_at > received_at - self.interval:
            return None  # scored one recently (the claim below would say so too, with a write)
        if self.stream.full() if self.stream is not None else self.queue.full():
            # Not claimed: the printer's next picture is due at once, when there may be room.
            self._drop(printer.id)
            return None
        if camera is None:
            claimed = await session.execute(_primary_claim(), {
                "claimed_printer": printer.id, "claimed_at": received_at, "scored_before": received_at - self.interval})
        else:
            claimed = await session.execute(_camera_claim(), {
                "claimed_printer": printer.id, "claimed_camera": camera, "claimed_at": received_at,
                "scored_before": received_at - self.interval})
        if getattr(claimed, "rowcount", 0) != 1:
            return None  # scored one recently: this picture only updates the camera's picture
        frame = PendingFrame(printer.id, printer.organization_id, jpeg_bytes, received_at, camera)

        async def enqueue() -> None:
            if self.stream is None:
                self._enqueue(frame)
                return
            try:
                pushed = await self.stream.push(frame)
            except Exception:
                # Redis unreachable: the frame is lost like a dropped one, and counted as one.
                log.warning("printer %s: could not hand a frame to the scoring workers", frame.printer_id,
                            exc_info=True)
                pushed = False
            if pushed:
                metrics.FRAMES_QUEUED.inc()
            else:
                self._drop(frame.printer_id)

        return enqueue

    def _enqueue(self, frame: PendingFrame) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            # Filled up during the claim. Skipping a frame costs one sample of ten seconds;
            # blocking would cost the agents their uploads.
            self._drop(frame.printer_id)
            return
        self._waiting.append(frame.received_at)
        metrics.FRAMES_QUEUED.inc()
        metrics.WATCHING_QUEUE_DEPTH.inc()

    def _drop(self, printer_id: int) -> None:
        self.dropped += 1
        metrics.FRAMES_DROPPED.inc()
        now = time.monotonic()
        self._drops.append(now)
        self._forget_old_drops(now)
        self._drops_unlogged[printer_id] = self._drops_unlogged.get(printer_id, 0) + 1
        if now - self._drop_logged_at >= DROP_LOG_SECONDS:
            frames, printers = sum(self._drops_unlogged.values()), len(self._drops_unlogged)
            log.warning("watching is behind: the detector's queue is full (%d frames, the oldest waiting %.0f s); "
                        "dropped %d frame(s) of %d printer(s) since the last report", self.queue.qsize(),
                        self.oldest_waiting_seconds(), frames, printers)
            self._drops_unlogged.clear()
            self._drop_logged_at = now

    def _forget_old_drops(self, now: float) -> None:
        while self._drops and now - self._drops[0] > BEHIND_WINDOW_SECONDS:
            self._drops.popleft()

    def oldest_waiting_seconds(self) -> float:
        """Age of the oldest frame waiting for its score or being scored; 0 when none."""
        if self.stream is not None:
            return self._last_backlog.oldest_seconds
        oldest = self._in_flight[0] if self._in_flight else self._waiting[0] if self._waiting else None
        return max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0

    def health(self) -> WatchingHealth:
        self._forget_old_drops(time.monotonic())
        oldest = self.oldest_waiting_seconds()
        limit = max(self.interval.total_seconds(), BEHIND_WAIT_FLOOR_SECONDS)
        if self.stream is not None:
            depth, capacity = self._last_backlog.depth, self.stream.backlog_limit
        else:
            depth, capacity = self.queue.qsize(), self.queue_size
        return WatchingHealth(behind=bool(self._drops) or oldest > limit, dropped_last_minute=len(self._drops),
                              oldest_waiting_seconds=oldest, queue_depth=depth, queue_capacity=capacity)

    async def _watch_stream(self) -> None:
        """Keeps what health() and the metrics say of the workers' backlog current."""
        assert self.stream is not None
        while True:
            try:
                self._last_backlog = await self.stream.backlog()
                metrics.WATCHING_QUEUE_DEPTH.set(self._last_backlog.depth)
            except Exception:
                log.warning("could not read the scoring workers' backlog from Redis", exc_info=True)
            await asyncio.sleep(STREAM_STATS_SECONDS)

    def _taken(self, frame: PendingFrame) -> PendingFrame:
        # The queue is first in, first out, like _waiting: its head is this frame's arrival.
        self._in_flight.append(self._waiting.popleft())
        metrics.WATCHING_QUEUE_DEPTH.dec()
        return frame

    async def _next_batch(self) -> list[PendingFrame]:
        batch = [self._taken(await self.queue.get())]
        while len(batch) < self.batch_size and not self.queue.empty():
            batch.append(self._taken(self.queue.get_nowait()))
        return batch

    async def _detect_stage(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                scored = await self.score(batch)
            except Exception:
                log.exception("the detector failed on a batch of %d frames", len(batch))
                metrics.FRAMES_FAILED.labels(stage="detector").inc(len(batch))
                # This batch's are the newest in flight: the one being applied is older.
                for _ in batch:
                    self._in_flight.pop()
                continue
            await self._scored_batches.put((batch, scored))

    async def _apply_stage(self) -> None:
        while True:
            batch, scored = await self._scored_batches.get()
            try:
                if scored:
                    await self.apply_scored(scored)
            finally:
                for _ in batch:
                    self._in_flight.popleft()

    async def score(self, batch: list[PendingFrame]) -> list[tuple[PendingFrame, FrameResult]]:
        """The batch's frames with their results, in a thread; pictures that are not images are left out."""
        detector = self.detector
        assert detector is not None
        results = await self.models.detect(detector, [(frame.organization_id, frame.jpeg) for frame in batch])
        scored: list[tuple[PendingFrame, FrameResult]] = []
        for frame, result in zip(batch, results, strict=True):
            if isinstance(result, BadImage):
                log.warning("printer %s: picture not scored: %s", frame.printer_id, result)
                metrics.FRAMES_FAILED.labels(stage="picture").inc()
            else:
                scored.append((frame, result))
        return scored

    async def apply_scored(self, scored: list[tuple[PendingFrame, FrameResult]]) -> None:
        """The batch's frames in one transaction (one commit, one fsync on SQLite, for up to
        ``batch_size`` printers). If it fails, each frame is applied again in its own, so one
        printer's trouble (a deleted print, a picture that cannot be stored) loses no other
        printer's frame; each outcome is the same either way."""
        bus = _SendsOnce(self.bus)
        try:
            outcomes = await self._apply_together(scored, bus)
        except Exception:
            if len(scored) == 1:
                log.exception("printer %s: applying a scored frame failed", scored[0][0].printer_id)
                metrics.FRAMES_FAILED.labels(stage="apply").inc()
                return
            log.warning("applying %d scored frames together failed; applying them one by one", len(scored),
                        exc_info=True)
            bus.replaying = True
            for frame, result in scored:
                await self._apply(frame, result, bus)
            return
        for (frame, _), outcome in zip(scored, outcomes, strict=True):
            self._applied(frame, outcome)

    async def _apply_together(self, scored: list[tuple[PendingFrame, FrameResult]], bus: CommandBus
                              ) -> list[FrameOutcome | None]:
        async with self.sessionmaker() as session:
            # One read for the batch's printers; apply_frame finds them in the session. Held
            # here: the session only keeps unchanged objects while someone refers to them.
            _held = list((await session.execute(
                select(Printer).where(Printer.id.in_({frame.printer_id for frame, _ in scored}))
                .options(*HOT_PATH_LOAD).order_by(Printer.id).with_for_update(of=Printer))).scalars())
            await _lock_prints_in_order(session, _held)
            hours = HoursLedger()
            outcomes: list[FrameOutcome | None] = [None] * len(scored)
            # In printer order, as the status writer locks them: the same rows taken in different
            # orders by two transactions deadlock on PostgreSQL (seen at 1,000 printers).
            for index in sorted(range(len(scored)), key=lambda i: scored[i][0].printer_id):
                frame, result = scored[index]
                if await _already_applied(session, frame):
                    continue
                outcomes[index] = await apply_frame(session, bus, frame.printer_id, frame.jpeg, result,
                                                    frame.received_at, camera=frame.camera, data_dir=self.data_dir,
                                                    unlimited_hours=self.unlimited_hours, hours=hours)
            await hours.write(session)
            await session.commit()
        return outcomes

    async def _apply(self, frame: PendingFrame, result: FrameResult, bus: CommandBus) -> None:
        try:
            async with self.sessionmaker() as session:
                # The row only: FOR UPDATE may not reach the outer joins of a whole Printer's load.
                await session.execute(select(Printer.id).where(Printer.id == frame.printer_id).with_for_update())
                printer = await session.get(Printer, frame.printer_id)
                if printer is not None:
                    await _lock_prints_in_order(session, [printer])
                if await _already_applied(session, frame):
                    return
                outcome = await apply_frame(session, bus, frame.printer_id, frame.jpeg, result,
                                            frame.received_at, camera=frame.camera, data_dir=self.data_dir,
                                            unlimited_hours=self.unlimited_hours)
                await session.commit()
        except Exception:
            # One printer's trouble (a deleted print, a database hiccup) must not stop the others.
            log.exception("printer %s: applying a scored frame failed", frame.printer_id)
            metrics.FRAMES_FAILED.labels(stage="apply").inc()
            return
        self._applied(frame, outcome)

    def _applied(self, frame: PendingFrame, outcome: FrameOutcome | None) -> None:
        if outcome is None:
            return
        self.scored += 1
        metrics.FRAMES_SCORED.inc()
        metrics.SCORING_LAG.observe(max(0.0, (utcnow() - frame.received_at).total_seconds()))
        self.events.publish(frame.organization_id, [frame.printer_id])
        if self.outcomes is not None:
            self.outcomes.put_nowait(outcome)


class _SendsOnce(CommandBus):
    """The bus as one batch's frames see it. What a batch sent before it failed as a whole is
    remembered; when its frames are applied again one by one (``replaying``), the same message
    to the same printer counts as sent without going out again: an agent told to pause twice
    would retract and lift twice."""

    def __init__(self, bus: CommandBus) -> None:
        self.bus = bus
        self.sent: list[tuple[int, AgentMessage]] = []
        self.replaying = False

    async def is_connected(self, printer_id: int) -> bool:
        if self.replaying and any(sent_to == printer_id for sent_to, _ in self.sent):
            return True
        return await self.bus.is_connected(printer_id)

    async def send(self, printer_id: int, message: AgentMessage) -> bool:
        if self.replaying and (printer_id, message) in self.sent:
            self.sent.remove((printer_id, message))
            return True
        sent = await self.bus.send(printer_id, message)
        if sent and not self.replaying:
            self.sent.append((printer_id, message))
        return sent


@functools.cache
def _primary_claim() -> Update:
    """The claim of a primary camera's picture for scoring, built once (building it per picture
    cost about a tenth of a claimed upload's event-loop time); a Core UPDATE: the session holds
    nothing it changes but the claim itself, which the caller does not read back."""
    printers = cast(Table, Printer.__table__)
    return (update(printers)
            .where(printers.c.id == bindparam("claimed_printer"),
                   or_(printers.c.last_scored_at.is_(None), printers.c.last_scored_at <= bindparam("scored_before")))
            .values(last_scored_at=bindparam("claimed_at")))


@functools.cache
def _camera_claim() -> Update:
    """The claim of another camera's picture, on its ``printer_cameras`` row; built once, as above."""
    cameras = cast(Table, PrinterCamera.__table__)
    return (update(cameras)
            .where(cameras.c.printer_id == bindparam("claimed_printer"), cameras.c.name == bindparam("claimed_camera"),
                   or_(cameras.c.last_scored_at.is_(None), cameras.c.last_scored_at <= bindparam("scored_before")))
            .values(last_scored_at=bindparam("claimed_at")))


async def _already_applied(session: AsyncSession, frame: PendingFrame) -> bool:
    """Whether a frame taken over from a dead scoring worker was applied before it died (its
    stored frame is there); only taken-over frames pay for the look."""
    if not frame.taken_over:
        return False
    found = await session.execute(
        select(PredictionFrame.id).join(Printer, Printer.current_print_id == PredictionFrame.print_id)
        .where(Printer.id == frame.printer_id, PredictionFrame.taken_at == frame.received_at).limit(1))
    return found.first() is not None


async def _lock_prints_in_order(session: AsyncSession, printers: list[Printer]) -> None:
    """Lock the current prints of ``printers`` (whose rows the caller read FOR UPDATE, in id
    order) in id order, before anything is written (PostgreSQL; SQLite locks the whole file).
    A picture's own transaction writes its printer, then its print; a batch that let the flush
    pick its own order took a print before its printer and deadlocked with it (seen at 1,000
    printers)."""
    print_ids = sorted({p.current_print_id for p in printers if p.current_print_id is not None})
    if print_ids:
        await session.execute(select(Print.id).where(Print.id.in_(print_ids)).order_by(Print.id).with_for_update())
