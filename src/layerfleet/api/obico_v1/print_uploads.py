"""Uploading a timelapse to check it (Layerfleet extension of the v1 prints API; the reference
server has the same idea: "a dummy print object will be created when a timelapse video is
uploaded to the server")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.datastructures import UploadFile

from layerfleet.accounts.models import Role
from layerfleet.api.deps import AppSettings, CurrentUser, Db, Timelapses, base_url, ensure_role
from layerfleet.api.obico_v1.schemas import PrintOut, print_out
from layerfleet.timelapses import uploads

router = APIRouter(tags=["Obico v1: prints"])
CHUNK_BYTES = 1024 * 1024
# Multipart boundaries and the small fields around the file.
FORM_OVERHEAD = 64 * 1024

UPLOAD_DESCRIPTION = """\
*Layerfleet extension.* Upload a timelapse video (multipart form: `file`; optional `printer_id`,
`filename`, and either `speed` — print seconds per second of video, e.g. 360 for a 30-s video
of a 3-h print — or `print_seconds`, how long the print ran). Answers 201 with the new Print
(`uploaded_at` set). In the background the failure detector scores one frame per 10 s of
print time with a live print's rules: the prediction JSON, alerts (for a print with a printer;
nothing is paused), the tagged video, the poster and the feedback shots follow on the Print.

Refused with 400 `{"detail": …}` and nothing kept: not a video, truncated, without frames,
sides over 4096 pixels (`LAYERFLEET_TIMELAPSE_UPLOAD_MAX_SIDE`), or larger than
`LAYERFLEET_TIMELAPSE_UPLOAD_MAX_BYTES` (2 GB; judged by `Content-Length` before a byte is read).
"""


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


def _text(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


@router.post("/prints/upload/", status_code=201, response_model=PrintOut, description=UPLOAD_DESCRIPTION,
             summary="Upload a timelapse to check it",
             responses={400: {"description": "Not a video this server can check, or too large; nothing was kept"},
                        413: {"description": "The request body is larger than any upload may be"}},
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file"], "properties": {
                     "file": {"type": "string", "format": "binary"},
                     "printer_id": {"type": "integer"}, "filename": {"type": "string"},
                     "speed": {"type": "number", "minimum": 1}, "print_seconds": {"type": "number", "minimum": 1},
                 }}}}}})
async def upload_timelapse(request: Request, db: Db, user: CurrentUser, settings: AppSettings,
                           jobs: Timelapses) -> PrintOut:
    ensure_role(user, Role.OPERATOR)  # an upload creates a print and its alerts
    limit = settings.timelapse_upload_max_bytes
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise HTTPException(400, detail="Send the timelapse with a Content-Length (multipart/form-data).")
    if int(declared) > limit + FORM_OVERHEAD:
        raise uploads.too_large(limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, detail="Send the timelapse as multipart/form-data with the video in the field file.")
    try:
        form = await request.form(max_files=1, max_fields=10)
    except HTTPException:
        raise
    except Exception as exc:  # the multipart parser's own errors
        raise HTTPException(400, detail=f"The form could not be read: {exc}") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise HTTPException(400, detail="file is required: the timelapse video as a form file field.")
        wanted = uploads.checked_request(_text(form, "filename") or file.filename, _text(form, "printer_id"),
                                         _text(form, "speed"), _text(form, "print_seconds"))
        video = await uploads.receive_video(_chunks(file), user.organization_id, settings.data_dir, max_bytes=limit,
                                            max_side=settings.timelapse_upload_max_side)
    finally:
        await form.close()
    try:
        created, _job = await uploads.create_upload_print(db, user, wanted, video, settings.data_dir)
        await db.commit()
    except BaseException:
        await db.rollback()
        await video.discard()  # wherever it was moved to: a refused upload keeps nothing
        raise
    jobs.wake()
    await db.refresh(created)
    return print_out(created, base_url(request))
