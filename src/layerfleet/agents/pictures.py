"""Pictures agents upload: checked to be real, bounded JPEGs, then kept under the media folder."""

from __future__ import annotations

import asyncio
import os
import tempfile
from datetime import datetime
from pathlib import Path

from layerfleet.detection.imaging import BadImage, open_image
from layerfleet.media import media_root, organization_prefix

MAX_PICTURE_BYTES = 10 * 1024 * 1024
_JPEG_MAGIC = b"\xff\xd8\xff"
# Decoding at 1/8 scale still runs the whole JPEG stream, so a damaged file is caught cheaply.
_CHECK_SIZE = 64

__all__ = ["MAX_PICTURE_BYTES", "BadImage", "check_picture", "picture_path", "remove_media", "store_media"]


def _check(data: bytes) -> None:
    if len(data) > MAX_PICTURE_BYTES:
        raise BadImage(f"the picture is larger than {MAX_PICTURE_BYTES // (1024 * 1024)} MB")
    if not data.startswith(_JPEG_MAGIC):
        raise BadImage("the picture is not a JPEG")
    open_image(data, _CHECK_SIZE)


async def check_picture(data: bytes) -> None:
    """Raise :class:`BadImage` unless ``data`` is a readable JPEG within the size limits."""
    await asyncio.to_thread(_check, data)


def picture_path(organization_id: int, printer_id: int, kind: str, taken_at: datetime) -> str:
    stamp = int(taken_at.timestamp() * 1000)
    return f"{organization_prefix(organization_id)}printers/{printer_id}/{kind}/{stamp}.jpg"


def _write(root: Path, relative: str, data: bytes) -> None:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed, so a reader never serves half a picture.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def store_media(data_dir: Path, relative: str, data: bytes) -> None:
    await asyncio.to_thread(_write, media_root(data_dir), relative, data)


async def remove_media(data_dir: Path, relative: str) -> None:
    root = media_root(data_dir).resolve()
    target = (root / relative).resolve()
    if target.is_relative_to(root):
        await asyncio.to_thread(target.unlink, True)
