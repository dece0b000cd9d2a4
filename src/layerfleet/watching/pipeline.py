"""The live pipeline: agents' pictures in, scored frames applied, off the event loop.

`WatchingPipeline` is the server's frame sink. A picture is taken for scoring only when its
printer is watched and printing, and at most one per printer per interval (10 s): the claim
is a conditional UPDATE of ``printers.last_scored_at``, so it holds across server processes.
Claimed frames wait in a bounded in-process queue; one worker takes whatever has gathered
(frames of many printers), scores them in one batch in a worker thread, and applies each
result in its own transaction.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.commands.bus import CommandBus
from layerfleet.detection.imaging import BadImage
from layerfleet.detection.runtime import Detector, FrameResult
from layerfleet.fleet.events import FleetEvents
from layerfleet.fleet.models import Printer
from layerfleet.watching.frames import FrameOutcome, apply_frame, is_watched_now

log = logging.getLogger(__name__)

MAX_WAITING_FRAMES = 256


@dataclass(frozen=True)
class PendingFrame:
    printer_id: int
    organization_id: int
    jpeg: bytes
    received_at: datetime


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
    ) -> None:
        self.sessionmaker = sessionmaker
        self.events = events or FleetEvents()
        self.bus = bus
        self.data_dir = data_dir
        self.interval = timedelta(seconds=interval_seconds)
        self.batch_size = batch_size
        self.unlimited_hours = unlimited_hours
        self.detector = detector
        self.queue: asyncio.Queue[PendingFrame] = asyncio.Queue(MAX_WAITING_FRAMES)
        self.outcomes: asyncio.Queue[FrameOutcome] | None = None  # tests listen here
        self.scored = 0
        self.dropped = 0
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.detector is None:
            # Loading the model takes a moment; not on the event loop.
            self.detector = await asyncio.to_thread(Detector)
        self._worker = asyncio.create_task(self._work(), name="watching-pipeline")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, printer_id: int, organization_id: int, jpeg_bytes: bytes, received_at: datetime) -> None:
        async with self.sessionmaker() as session:
            printer = await session.get(Printer, printer_id)
            if printer is None or not is_watched_now(printer):
                return
            claimed = await session.execute(
                update(Printer)
                .where(Printer.id == printer_id,
                       or_(Printer.last_scored_at.is_(None), Printer.last_scored_at <= received_at - self.interval))
                .values(last_scored_at=received_at)
                .execution_options(synchronize_session=False)
            )
            if getattr(claimed, "rowcount", 0) != 1:
                return  # scored one recently: this picture only updates the printer's picture
            await session.commit()
        try:
            self.queue.put_nowait(PendingFrame(printer_id, organization_id, jpeg_bytes, received_at))
        except asyncio.QueueFull:
            # Falling behind: skipping a frame costs one sample of ten seconds, blocking costs the agents.
            self.dropped += 1
            log.warning("detector is behind: dropped a frame of printer %s", printer_id)

    async def _next_batch(self) -> list[PendingFrame]:
        batch = [await self.queue.get()]
        while len(batch) < self.batch_size and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            detector = self.detector
            assert detector is not None
            try:
                results = await asyncio.to_thread(detector.detect, [frame.jpeg for frame in batch])
            except Exception:
                log.exception("the detector failed on a batch of %d frames", len(batch))
                continue
            for frame, result in zip(batch, results, strict=True):
                if isinstance(result, BadImage):
                    log.warning("printer %s: picture not scored: %s", frame.printer_id, result)
                    continue
                await self._apply(frame, result)

    async def _apply(self, frame: PendingFrame, result: FrameResult) -> None:
        try:
            async with self.sessionmaker() as session:
                outcome = await apply_frame(session, self.bus, frame.printer_id, frame.jpeg, result,
                                            frame.received_at, data_dir=self.data_dir,
                                            unlimited_hours=self.unlimited_hours)
                await session.commit()
        except Exception:
            # One printer's trouble (a deleted print, a database hiccup) must not stop the others.
            log.exception("printer %s: applying a scored frame failed", frame.printer_id)
            return
        if outcome is not None:
            self.scored += 1
            self.events.publish(frame.organization_id, [frame.printer_id])
            if self.outcomes is not None:
                self.outcomes.put_nowait(outcome)
