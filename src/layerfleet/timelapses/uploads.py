"""An uploaded timelapse becomes a print to check: the file is written aside, checked all the
way through (a video FFmpeg reads, of sensible size, not truncated, with frames), and only then
does a Print (``uploaded_at`` set) and its ANALYSE job exist. A refused upload keeps nothing."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath

from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import User
from layerfleet.database import utcnow
from layerfleet.errors import Invalid, Unavailable
from layerfleet.fleet import service as fleet
from layerfleet.media import media_root, organization_prefix, print_folder
from layerfleet.prints.models import Print
from layerfleet.timelapses.models import TimelapseJob, TimelapsePurpose, TimelapseStatus
from layerfleet.timelapses.video import BadVideo, VideoInfo, probe_video

MAX_SPEED = 100_000.0  # print seconds per video second: a week in six seconds
SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".3gp"}


class BadUpload(Invalid):
    """An upload refused; nothing of it was kept."""


@dataclass(frozen=True)
class UploadRequest:
    filename: str
    printer_id: int | None
    speed: float | None  # print seconds per second of video
    print_seconds: float | None  # or: how long the print ran (the speed follows from the video)


@dataclass
class ReceivedVideo:
    """The upload on disk, checked; ``discard`` removes it."""

    path: Path
    info: VideoInfo

    async def discard(self) -> None:
        await asyncio.to_thread(self.path.unlink, missing_ok=True)


def too_large(limit: int) -> BadUpload:
    return BadUpload(f"The timelapse is larger than the server accepts ({limit // 1024**2} MB).")


async def receive_video(chunks: AsyncIterator[bytes], organization_id: int, data_dir: Path, *, max_bytes: int,
                        max_side: int) -> ReceivedVideo:
    """Write the upload aside in the organization's folder and check it (in a thread)."""
    folder = media_root(data_dir) / organization_prefix(organization_id) / "uploads"
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    handle, name = await asyncio.to_thread(tempfile.mkstemp, prefix=".upload-", suffix=".part", dir=folder)
    path = Path(name)
    try:
        size = 0
        with os.fdopen(handle, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                try:
                    await asyncio.to_thread(out.write, chunk)
                except OSError as exc:
                    raise Unavailable("The server has no room for this upload now; nothing was kept.") from exc
        if size == 0:
            raise BadUpload("The file is empty.")
        try:
            info = await asyncio.to_thread(probe_video, path, max_side=max_side)
        except BadVideo as exc:
            raise BadUpload(str(exc)) from None
    except BaseException:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    return ReceivedVideo(path, info)


def speed_of(request: UploadRequest, info: VideoInfo) -> float:
    seconds = info.seconds or info.frames / 30
    if request.print_seconds is not None:
        speed = request.print_seconds / max(seconds, 1 / 30)
    else:
        speed = request.speed if request.speed is not None else 1.0
    return min(MAX_SPEED, max(1.0, speed))


def checked_request(filename: str | None, printer_id: str | None, speed: str | None,
                    print_seconds: str | None) -> UploadRequest:
    """The form's fields as values, or :class:`BadUpload` naming each one at fault."""
    errors: dict[str, list[str]] = {}

    def number(name: str, raw: str | None, low: float, high: float) -> float | None:
        if raw is None or raw.strip() == "":
            return None
        try:
            value = float(raw)
        except ValueError:
            errors[name] = ["A valid number is required."]
            return None
        if not low <= value <= high:
            errors[name] = [f"Must be from {low:g} to {high:g}."]
            return None
        return value

    printer = None
    if printer_id is not None and printer_id.strip() != "":
        if not printer_id.strip().isdigit() or not 0 < int(printer_id) < 2**31:
            errors["printer_id"] = ["A valid integer is required."]
        else:
            printer = int(printer_id)
    request = UploadRequest(
        filename=(filename or "").replace("\x00", "").strip()[:1024],
        printer_id=printer,
        speed=number("speed", speed, 1.0, MAX_SPEED),
        print_seconds=number("print_seconds", print_seconds, 1.0, 365 * 24 * 3600.0),
    )
    if errors:
        raise BadUpload("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()), errors)
    return request


async def create_upload_print(session: AsyncSession, user: User, request: UploadRequest, video: ReceivedVideo,
                              data_dir: Path) -> tuple[Print, TimelapseJob]:
    """The print of an uploaded timelapse and its ANALYSE job; the video moves into the print's
    folder. The caller commits, or on failure rolls back and removes the print's folder."""
    if request.printer_id is not None and await fleet.get_printer(
            session, user.organization_id, request.printer_id) is None:
        raise BadUpload("No such printer.", {"printer_id": ["No such printer in your organization."]})
    speed = speed_of(request, video.info)
    now = utcnow()
    print_seconds = (video.info.seconds or video.info.frames / 30) * speed
    print_ = Print(organization_id=user.organization_id, printer_id=request.printer_id,
                   filename=request.filename or "timelapse", uploaded_at=now,
                   started_at=now - timedelta(seconds=print_seconds), finished_at=now)
    session.add(print_)
    await session.flush()
    suffix = PurePosixPath(request.filename).suffix.lower()
    source = f"{print_folder(user.organization_id, print_.id)}/upload/source{suffix if suffix in SUFFIXES else ''}"
    target = media_root(data_dir) / source
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(os.replace, video.path, target)
    video.path = target  # the caller's discard() now removes it there
    job = TimelapseJob(organization_id=user.organization_id, print_id=print_.id,
                       purpose=TimelapsePurpose.ANALYSE.value, status=TimelapseStatus.QUEUED.value,
                       source_path=source, speed=speed)
    session.add(job)
    await session.flush()
    return print_, job

