"""Serving stored media to members of the organization that owns them, or to the holder of a
signed link. Byte ranges (RFC 9110 §14) are answered, so a browser seeks in a video."""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from layerfleet.api.deps import CurrentUser, services_of
from layerfleet.media import media_root, member_file
from layerfleet.signed_links import link_problem

router = APIRouter(include_in_schema=False)

CHUNK_BYTES = 256 * 1024
SIGNED_PREFIX = "/media-signed/"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """The one range asked for as (first, last) byte, None to send the whole file (no header,
    one we do not parse, several ranges), False when it cannot be satisfied."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # several ranges or another unit: the whole file is a valid answer
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return False
    return start, end


async def _send_file(file: Path, request: Request, cache: str) -> Response:
    # Opened here, not while streaming: a printer's newer picture replaces (deletes) the older
    # one at any moment, and an open file stays readable after it is unlinked.
    try:
        handle: BinaryIO = await asyncio.to_thread(file.open, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise HTTPException(404, detail="Not found.") from None
    size = os.fstat(handle.fileno()).st_size
    media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    headers = {"Cache-Control": cache, "Accept-Ranges": "bytes"}
    # getattr: tests call the handler with a stand-in request that has no headers.
    wanted = byte_range(getattr(request, "headers", {}).get("range"), size)
    if wanted is False:
        handle.close()
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
    if first:
        await asyncio.to_thread(handle.seek, first)

    async def chunks() -> AsyncIterator[bytes]:
        left = last - first + 1
        try:
            while left > 0 and (data := await asyncio.to_thread(handle.read, min(CHUNK_BYTES, left))):
                left -= len(data)
                yield data
        finally:
            handle.close()

    headers["Content-Length"] = str(max(0, last - first + 1))
    if isinstance(wanted, tuple):
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return StreamingResponse(chunks(), status_code=206, media_type=media_type, headers=headers)
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)


@router.get("/media/{path:path}")
async def serve_media(path: str, request: Request, user: CurrentUser) -> Response:
    # The request, not a settings dependency: tests call this handler with a stand-in request.
    file = member_file(services_of(request).settings.data_dir, user.organization_id, path)
    if file is None:
        raise HTTPException(404, detail="Not found.")
    return await _send_file(file, request, "private, max-age=60")


@router.get(SIGNED_PREFIX + "{path:path}")
async def serve_signed_media(path: str, request: Request, expires: str = "", signature: str = "") -> Response:
    """A file through a signed link (an inspection report's poster and videos): the link is
    the credential, for the path it was made for and until it expires."""
    settings = services_of(request).settings
    if link_problem(settings.effective_secret_key, SIGNED_PREFIX + path, expires, signature) is not None:
        raise HTTPException(404, detail="Not found.")
    root = media_root(settings.data_dir).resolve()
    file = (root / path).resolve()
    if not file.is_relative_to(root):
        raise HTTPException(404, detail="Not found.")
    return await _send_file(file, request, "private, max-age=60")
