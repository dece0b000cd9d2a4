"""Files that users' printers produce (webcam pictures, feedback frames, videos), kept under
DATA_DIR/media in one folder per organization. Serving them is the HTTP layer's job."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from datetime import datetime
from pathlib import Path, PurePosixPath


def organization_prefix(organization_id: int) -> str:
    return f"orgs/{organization_id}/"


def media_root(data_dir: Path) -> Path:
    return data_dir / "media"


def media_url(base_url: str, relative_path: str | None) -> str | None:
    if not relative_path:
        return None
    return f"{base_url.rstrip('/')}/media/{relative_path}"


def print_folder(organization_id: int, print_id: int) -> str:
    return f"{organization_prefix(organization_id)}prints/{print_id}"


# The primary camera's pictures kept for the print's video, one per timelapse interval.
KEPT_FRAMES = "video-frames"


def kept_frame_path(organization_id: int, print_id: int, taken_at: datetime) -> str:
    stamp = int(taken_at.timestamp() * 1000)
    return f"{print_folder(organization_id, print_id)}/{KEPT_FRAMES}/{stamp:013d}.jpg"


def picture_path(organization_id: int, printer_id: int, kind: str, taken_at: datetime) -> str:
    stamp = int(taken_at.timestamp() * 1000)
    return f"{organization_prefix(organization_id)}printers/{printer_id}/{kind}/{stamp}.jpg"


def _holds(file: Path, data: bytes) -> bool:
    try:
        if file.stat().st_size != len(data):
            return False
        return file.read_bytes() == data
    except OSError:
        return False


def _link(source: Path, target: Path) -> bool:
    """``target`` made another name of ``source`` (linked aside, then renamed); False when the
    file system will not link (``source`` gone meanwhile, another file system, links refused)."""
    aside = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
    try:
        os.link(source, aside)
    except OSError:
        return False
    try:
        os.replace(aside, target)
    except BaseException:
        aside.unlink(missing_ok=True)
        raise
    return True


def _write(root: Path, relative: str, data: bytes, same_as: str | None = None) -> None:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if same_as is not None and _holds(root / same_as, data) and _link(root / same_as, target):
        return
    # Written aside and renamed, so a reader never serves half a picture.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_media(data_dir: Path, relative: str, data: bytes) -> None:
    """:func:`store_media` for code already off the event loop."""
    _write(media_root(data_dir), relative, data)


async def store_media(data_dir: Path, relative: str, data: bytes, *, same_as: str | None = None) -> None:
    """Keep ``data`` at ``relative``. When the file at ``same_as`` holds the same bytes, the new
    name is a hard link to it, not a second copy: a scored frame is often the very picture kept
    for the print's video, and removing either name leaves the other whole."""
    await asyncio.to_thread(_write, media_root(data_dir), relative, data, same_as)


def _remove(root: Path, relative: str) -> None:
    # Resolved here, off the event loop: resolving is a system call per path component.
    root = root.resolve()
    target = (root / relative).resolve()
    if target.is_relative_to(root):
        target.unlink(missing_ok=True)


async def remove_media(data_dir: Path, relative: str) -> None:
    await asyncio.to_thread(_remove, media_root(data_dir), relative)


def _remove_each(root: Path, relatives: list[str]) -> None:
    for relative in relatives:
        _remove(root, relative)


async def remove_many_media(data_dir: Path, relatives: list[str]) -> None:
    """Several files in one trip off the event loop rather than one each."""
    await asyncio.to_thread(_remove_each, media_root(data_dir), relatives)


def member_file(data_dir: Path, organization_id: int, relative_path: str) -> Path | None:
    """Where a member's request for ``relative_path`` leads, or None when it is not a file under
    their organization's folder (another organization's, a parent folder, an absolute path)."""
    relative = PurePosixPath(relative_path)
    own = relative_path.startswith(organization_prefix(organization_id))
    if ".." in relative.parts or relative.is_absolute() or not own:
        return None
    root = media_root(data_dir).resolve()
    file = (root / relative).resolve()
    return file if file.is_relative_to(root) else None
