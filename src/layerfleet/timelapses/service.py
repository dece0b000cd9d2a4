"""Where a print's video evidence lives, what a print's end asks for, and what it costs on disk.

A print's media folder is ``orgs/{org}/prints/{print_id}/`` (see :mod:`layerfleet.media`):
the detector's scored frames (``frames/``, ``tagged/``), the pictures kept for the video
(``video-frames/{epoch ms}.jpg``), the two videos, the poster, the prediction JSON and the
video's frame times (which moment each frame of the video shows)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.media import KEPT_FRAMES, media_root, organization_prefix, print_folder
from layerfleet.prints.models import Print
from layerfleet.timelapses.models import TimelapseJob, TimelapsePurpose, TimelapseStatus

VIDEO = "timelapse.mp4"
TAGGED_VIDEO = "timelapse-tagged.mp4"
POSTER = "poster.jpg"
PREDICTION_JSON = "prediction.json"
FRAME_TIMES = "video-frame-times.json"


def media_of(print_: Print, name: str) -> str:
    return f"{print_folder(print_.organization_id, print_.id)}/{name}"


@dataclass(frozen=True)
class KeptFrame:
    path: Path
    taken_at: datetime


def kept_frames(data_dir: Path, organization_id: int, print_id: int) -> list[KeptFrame]:
    """The pictures kept for a print's video, oldest first (blocking: call in a thread)."""
    folder = media_root(data_dir) / print_folder(organization_id, print_id) / KEPT_FRAMES
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            stem, dot, suffix = entry.name.partition(".")
            if dot and suffix == "jpg" and stem.isdigit():
                found.append(KeptFrame(Path(entry.path), datetime.fromtimestamp(int(stem) / 1000, UTC)))
    return sorted(found, key=lambda frame: frame.taken_at)


async def print_ended(session: AsyncSession, print_: Print) -> TimelapseJob | None:
    """A print ended: ask for its videos (the job decides whether it ran long enough). The
    caller commits; the jobs' poller hands the row to the queue."""
    existing = (await session.execute(select(TimelapseJob.id).where(
        TimelapseJob.print_id == print_.id, TimelapseJob.purpose == TimelapsePurpose.COMPILE.value))).first()
    if existing is not None:
        return None
    job = TimelapseJob(organization_id=print_.organization_id, print_id=print_.id,
                       purpose=TimelapsePurpose.COMPILE.value, status=TimelapseStatus.QUEUED.value)
    session.add(job)
    return job


async def latest_job(session: AsyncSession, print_id: int) -> TimelapseJob | None:
    query = select(TimelapseJob).where(TimelapseJob.print_id == print_id).order_by(TimelapseJob.id.desc()).limit(1)
    return (await session.execute(query)).scalar_one_or_none()


def remove_print_folder(data_dir: Path, organization_id: int, print_id: int) -> None:
    """Every file of a deleted print: frames, videos, poster, prediction JSON (blocking)."""
    shutil.rmtree(media_root(data_dir) / print_folder(organization_id, print_id), ignore_errors=True)


async def remove_print_media(data_dir: Path, organization_id: int, print_id: int) -> None:
    await asyncio.to_thread(remove_print_folder, data_dir, organization_id, print_id)


async def prints_of_printer(session: AsyncSession, printer_id: int) -> list[int]:
    """The ids of a printer's prints: when the printer goes, the database drops their rows by
    itself, and their files must be removed by name before."""
    rows = await session.execute(select(Print.id).where(Print.printer_id == printer_id))
    return list(rows.scalars())


def remove_printer_folders(data_dir: Path, organization_id: int, printer_id: int, print_ids: list[int]) -> None:
    """Every file of a deleted printer: its pictures and its prints' media (blocking)."""
    root = media_root(data_dir)
    shutil.rmtree(root / organization_prefix(organization_id) / "printers" / str(printer_id), ignore_errors=True)
    for print_id in print_ids:
        shutil.rmtree(root / print_folder(organization_id, print_id), ignore_errors=True)


async def remove_printer_media(data_dir: Path, organization_id: int, printer_id: int, print_ids: list[int]) -> None:
    await asyncio.to_thread(remove_printer_folders, data_dir, organization_id, printer_id, print_ids)


def folder_bytes(folder: Path) -> int:
    """Bytes on disk under ``folder``; a file with several names (a scored frame linked to its
    kept video frame) counts once."""
    total, seen = 0, set()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                stat = os.lstat(os.path.join(root, name))
                if stat.st_nlink > 1:
                    if (stat.st_dev, stat.st_ino) in seen:
                        continue
                    seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


async def organization_media_bytes(data_dir: Path, organization_id: int) -> int:
    """Disk used by an organization's prints (frames, videos, posters)."""
    folder = media_root(data_dir) / organization_prefix(organization_id) / "prints"
    return await asyncio.to_thread(folder_bytes, folder)


def write_json(target: Path, value: object) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")
    temporary.write_text(json.dumps(value, separators=(",", ":")))
    os.replace(temporary, target)


def read_frame_times(data_dir: Path, print_: Print) -> list[float]:
    """Which moment (epoch seconds) each frame of the print's video shows; [] without a video."""
    if print_.video_path is None:
        return []
    try:
        value = json.loads((media_root(data_dir) / media_of(print_, FRAME_TIMES)).read_text())
    except (OSError, ValueError):
        return []
    return [float(t) for t in value] if isinstance(value, list) else []
