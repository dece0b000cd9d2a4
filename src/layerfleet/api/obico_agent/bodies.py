"""Request bodies of agent calls: JSON, urlencoded or multipart, always read within a bound
before anything parses them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.types import Message

MAX_FIELDS = 50


@dataclass
class Body:
    fields: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    is_form: bool = False


async def _read(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, detail=f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, detail=f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(request: Request, body: bytes) -> Request:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def read_body(request: Request, limit: int, *, max_files: int = 1) -> Body:
    """The fields (and files) of the request; 400/413/415 JSON errors for anything else."""
    body = await _read(request, limit)
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not body.strip() and content_type != "multipart/form-data":
        return Body()
    if content_type == "application/json" or (not content_type and body.lstrip().startswith(b"{")):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise HTTPException(400, detail="JSON parse error: the request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise HTTPException(400, detail="The request body must be a JSON object.")
        return Body(fields=data)
    if content_type not in {"multipart/form-data", "application/x-www-form-urlencoded"}:
        raise HTTPException(415, detail=f'Unsupported media type "{content_type}" in request.')
    result = Body(is_form=True)
    try:
        form = await _replay(request, body).form(max_files=max_files, max_fields=MAX_FIELDS)
    except HTTPException as exc:
        raise HTTPException(400, detail=f"Malformed form data: {exc.detail}") from None
    except Exception as exc:  # the multipart parser's own errors
        raise HTTPException(400, detail=f"Malformed form data: {exc}") from None
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                result.files[name] = await value.read()
            else:
                result.fields[name] = value
    finally:
        await form.close()
    return result


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
