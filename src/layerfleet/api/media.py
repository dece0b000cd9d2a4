"""Serving stored media to members of the organization that owns them."""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from layerfleet.api.deps import CurrentUser, services_of
from layerfleet.media import member_file

router = APIRouter(include_in_schema=False)

CHUNK_BYTES = 256 * 1024


@router.get("/media/{path:path}")
async def serve_media(path: str, request: Request, user: CurrentUser) -> StreamingResponse:
    # The request, not a settings dependency: tests call this handler with a stand-in request.
    file = member_file(services_of(request).settings.data_dir, user.organization_id, path)
    if file is None:
        raise HTTPException(404, detail="Not found.")
    # Opened here, not while streaming: a printer's newer picture replaces (deletes) the older
    # one at any moment, and an open file stays readable after it is unlinked.
    try:
        handle = await asyncio.to_thread(file.open, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise HTTPException(404, detail="Not found.") from None
    size = os.fstat(handle.fileno()).st_size

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while data := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield data
        finally:
            handle.close()

    media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return StreamingResponse(chunks(), media_type=media_type, headers={
        "Cache-Control": "private, max-age=60", "Content-Length": str(size)})
