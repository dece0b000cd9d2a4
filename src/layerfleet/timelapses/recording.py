"""Keeping a print's pictures for its video: every picture an agent sends for a printer with a
current print, at most one per interval, scored by the detector or not.

The recorder stands in front of the frame sink the agents' pictures go to (the detector), so
each picture is offered to both. At most one picture per interval is kept: a conditional
UPDATE of ``prints.timelapse_frame_at`` claims it, so the rule holds across server processes.
Short of disk space, keeping stops for that print with a warning in the log and in the
printer's events; a full disk never fails the agent's upload."""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

from sqlalchemy import Table, Update, bindparam, or_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.database import utcnow
from layerfleet.fleet.models import EventClass, Printer, PrinterEvent
from layerfleet.fleet.service import HOT_PATH_LOAD
from layerfleet.media import kept_frame_path, media_root, write_media
from layerfleet.prints.models import Print
from layerfleet.watching.sink import AfterCommit, ClaimingFrameSink, FrameSink

log = logging.getLogger(__name__)

DISK_FULL_TITLE = "Timelapse recording stopped: the server's disk is full"


def free_bytes(data_dir: Path) -> int:
    root = media_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(root).free


@dataclass(frozen=True)
class KeptFrame:
    """A picture whose place in its print's video is claimed, to be stored once that commits."""

    printer_id: int
    organization_id: int
    print_id: int
    path: str


@functools.cache
def _claim_statement() -> Update:
    """The claim of a picture's place in its print's video, built once (building it anew cost
    more CPU than running it); a Core UPDATE: the session holds no state it changes."""
    prints = cast(Table, Print.__table__)
    return (update(prints)
            .where(prints.c.id == bindparam("claimed_print"), prints.c.timelapse_stopped_at.is_(None),
                   prints.c.finished_at.is_(None), prints.c.cancelled_at.is_(None),
                   or_(prints.c.timelapse_frame_at.is_(None),
                       prints.c.timelapse_frame_at <= bindparam("kept_before")))
            .values(timelapse_frame_at=bindparam("claimed_at")))


class FrameRecorder:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], data_dir: Path, *,
                 interval_seconds: float, min_free_bytes: int) -> None:
        self.sessionmaker = sessionmaker
        self.data_dir = data_dir
        self.interval = timedelta(seconds=interval_seconds)
        self.min_free_bytes = min_free_bytes
        self.kept = 0

    async def keep(self, printer_id: int, jpeg: bytes, received_at: datetime) -> str | None:
        """Keep the picture for the printer's current print when its turn has come; the path kept."""
        async with self.sessionmaker() as session:
            printer = await session.get(Printer, printer_id, options=HOT_PATH_LOAD)
            if printer is None:
                return None
            claimed = await self.claim(session, printer, received_at)
            if claimed is None:
                return None
            await session.commit()
        return await self.store(claimed, jpeg)

    async def claim(self, session: AsyncSession, printer: Printer, received_at: datetime) -> KeptFrame | None:
        """Claim the picture's place in the video inside the caller's transaction; the caller
        commits, then stores it (:meth:`store`). ``printer`` carries its current print (HOT_PATH_LOAD)."""
        print_ = printer.current_print
        if print_ is None:
            return None
        if print_.timelapse_stopped_at is not None or print_.ended or (
                print_.timelapse_frame_at is not None and print_.timelapse_frame_at > received_at - self.interval):
            return None  # as the row was read: the claim below would say so too, with a write
        claimed = await session.execute(_claim_statement(), {
            "claimed_print": print_.id, "claimed_at": received_at, "kept_before": received_at - self.interval})
        if getattr(claimed, "rowcount", 0) != 1:
            return None
        return KeptFrame(printer.id, printer.organization_id, print_.id,
                         kept_frame_path(printer.organization_id, print_.id, received_at))

    async def store(self, kept: KeptFrame, jpeg: bytes) -> str | None:
        """Write a claimed (and committed) picture; the path, or None when the disk is full."""
        try:
            await asyncio.to_thread(self._store_if_room, kept.path, jpeg)  # one trip off the event loop
        except OSError as exc:
            async with self.sessionmaker() as session:
                await self._stop(session, kept, exc)
            return None
        self.kept += 1
        return kept.path

    def _store_if_room(self, relative: str, jpeg: bytes) -> None:
        if free_bytes(self.data_dir) < self.min_free_bytes + len(jpeg):
            raise OSError("less free space than LAYERFLEET_TIMELAPSE_MIN_FREE_BYTES")
        write_media(self.data_dir, relative, jpeg)

    async def _stop(self, session: AsyncSession, kept: KeptFrame, exc: OSError) -> None:
        log.warning("printer %s: timelapse recording of print %s stopped, the disk is full (%s); "
                    "free space under %s", kept.printer_id, kept.print_id, exc, media_root(self.data_dir))
        stopped = await session.execute(update(Print).where(
            Print.id == kept.print_id, Print.timelapse_stopped_at.is_(None)).values(timelapse_stopped_at=utcnow())
            .execution_options(synchronize_session=False))
        if getattr(stopped, "rowcount", 0) == 1:
            session.add(PrinterEvent(
                organization_id=kept.organization_id, printer_id=kept.printer_id, print_id=kept.print_id,
                event_type="TIMELAPSE_STOPPED", event_class=EventClass.WARNING.value, event_title=DISK_FULL_TITLE,
                event_text="No more pictures of this print are kept for its timelapse; free space on the "
                           "server's data disk.",
            ))
        await session.commit()


class RecordingSink:
    """A frame sink that keeps the picture for the print's video, then hands it on."""

    def __init__(self, recorder: FrameRecorder, inner: FrameSink) -> None:
        self.recorder = recorder
        self.inner = inner
        # Once: checking a runtime protocol walks its members (costly on every picture).
        self._inner_claims = isinstance(inner, ClaimingFrameSink)

    async def submit(self, printer_id: int, organization_id: int, jpeg_bytes: bytes, received_at: datetime,
                     *, camera: str | None = None) -> None:
        if camera is None:  # the print's video is the primary camera's
            try:
                await self.recorder.keep(printer_id, jpeg_bytes, received_at)
            except Exception:
                # The video is evidence, not the detector's input: a failure here must not stop scoring.
                log.exception("printer %s: keeping a picture for the timelapse failed", printer_id)
        await self.inner.submit(printer_id, organization_id, jpeg_bytes, received_at, camera=camera)

    async def claim(self, session: AsyncSession, printer: Printer, jpeg_bytes: bytes,
                    received_at: datetime, *, camera: str | None = None) -> AfterCommit | None:
        """Both claims in the uploader's transaction (see ``watching.sink.ClaimingFrameSink``)."""
        # The print's video is the primary camera's; another camera's picture is only scored.
        kept = await self.recorder.claim(session, printer, received_at) if camera is None else None
        inner, inner_claims = self.inner, self._inner_claims
        then = await cast(ClaimingFrameSink, inner).claim(session, printer, jpeg_bytes, received_at, camera=camera) \
            if inner_claims else None
        printer_id, organization_id = printer.id, printer.organization_id

        async def after_commit() -> None:
            if kept is not None:
                try:
                    await self.recorder.store(kept, jpeg_bytes)
                except Exception:
                    log.exception("printer %s: keeping a picture for the timelapse failed", printer_id)
            if then is not None:
                await then()
            elif not inner_claims:
                await inner.submit(printer_id, organization_id, jpeg_bytes, received_at, camera=camera)

        return after_commit
