"""The agent's HTTP calls under /api/v1/octo/ (see the protocol notes): what each one needs
answered, and nothing else. They are for agents, not people, so they stay out of /docs."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import select

from layerfleet import media
from layerfleet.agents.lifecycle import clean_text
from layerfleet.api.deps import Db, services_of
from layerfleet.api.errors import FieldErrors
from layerfleet.api.obico_agent.auth import AgentPrinter
from layerfleet.api.obico_agent.bodies import as_bool, client_address, read_body
from layerfleet.database import utcnow
from layerfleet.detection import imaging
from layerfleet.fleet.models import EventClass, Printer, PrinterEvent
from layerfleet.fleet.rules import PrinterChanges
from layerfleet.prints.models import GCodeFile
from layerfleet.ratelimit import RateLimiter
from layerfleet.watching.sink import FrameSink

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/octo", include_in_schema=False)

MAX_FORM_BYTES = 64 * 1024
MAX_PICTURE_REQUEST_BYTES = imaging.MAX_PICTURE_BYTES + 64 * 1024
MAX_EVENT_TEXT = 64 * 1024
# What an agent may change on its printer; archiving stays with the members.
AGENT_WRITABLE = frozenset(PrinterChanges.model_fields) - {"archived_at", "ignore_masks"}
BOOL_FIELDS = frozenset(
    name for name, info in PrinterChanges.model_fields.items() if info.annotation is bool
)


def _printer_reply(printer: Printer) -> dict[str, Any]:
    return {
        "user": {"is_pro": False},
        "printer": {
            "id": printer.id,
            "name": printer.name,
            "is_pro": False,
            "retract_on_pause": printer.retract_on_pause,
            "lift_z_on_pause": printer.lift_z_on_pause,
            "tools_off_on_pause": printer.tools_off_on_pause,
            "bed_off_on_pause": printer.bed_off_on_pause,
        },
    }


@router.get("/printer/")
async def get_printer(printer: AgentPrinter) -> dict[str, Any]:
    return _printer_reply(printer)


@router.patch("/printer/")
async def update_printer(request: Request, db: Db, printer: AgentPrinter) -> dict[str, Any]:
    body = await read_body(request, MAX_FORM_BYTES, max_files=0)
    valid: dict[str, Any] = {}
    for name, raw in body.fields.items():
        if name not in AGENT_WRITABLE:
            continue
        value = as_bool(raw) if body.is_form and name in BOOL_FIELDS else raw
        try:
            # One field at a time: a bad value is skipped without losing the good ones.
            changes = PrinterChanges.model_validate({name: value})
        except ValidationError:
            log.info("printer %s: agent sent an invalid %s; ignored", printer.id, name)
            continue
        valid.update(changes.given())
    for name, value in valid.items():
        setattr(printer, name, value)
    if valid:
        await db.commit()
    return _printer_reply(printer)


def _sink(request: Request) -> FrameSink:
    sink: FrameSink = services_of(request).frame_sink
    return sink


@router.post("/pic/")
async def post_picture(request: Request, db: Db, printer: AgentPrinter) -> dict[str, str]:
    body = await read_body(request, MAX_PICTURE_REQUEST_BYTES)
    data = body.files.get("pic")
    if data is None:
        raise FieldErrors({"pic": ["No picture was submitted."]})
    try:
        await imaging.check_picture(data)
    except imaging.BadImage as exc:
        raise FieldErrors({"pic": [f"Not a usable picture: {exc}."]}) from None
    # Another camera's picture (a nozzle camera, a second view) is not the printer's picture.
    primary = as_bool(body.fields.get("is_primary_camera", "true")) is not False
    nozzle = as_bool(body.fields.get("is_nozzle_camera", "false")) is True
    if not primary or nozzle:
        return {"result": "ok"}
    received_at = utcnow()
    data_dir = services_of(request).settings.data_dir
    path = media.picture_path(printer.organization_id, printer.id, "pics", received_at)
    await media.store_media(data_dir, path, data)
    previous = printer.pic_path
    printer.pic_path = path
    printer.pic_updated_at = received_at
    await db.commit()
    services_of(request).fleet_events.publish(printer.organization_id, [printer.id])
    if previous and previous != path:
        await media.remove_media(data_dir, previous)
    if as_bool(body.fields.get("viewing_boost")) is not True:
        # Viewing-boost pictures are extra frames for a person watching; the detector skips them.
        try:
            await _sink(request).submit(printer.id, printer.organization_id, data, received_at)
        except Exception:
            log.exception("printer %s: the frame sink failed", printer.id)
    return {"result": "ok"}


def _text_field(fields: dict[str, Any], name: str, limit: int, errors: dict[str, list[str]]) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        errors[name] = ["Not a valid string."]
        return None
    if len(value) > limit:
        errors[name] = [f"Ensure this field has no more than {limit} characters."]
        return None
    return clean_text(value, limit)


def _safe_filename(filename: str) -> str:
    return re.sub(r"[^\w.]", "_", filename)


@router.post("/g_code_files/")
async def post_gcode_file(request: Request, db: Db, printer: AgentPrinter) -> JSONResponse:
    body = await read_body(request, MAX_FORM_BYTES, max_files=0)
    errors: dict[str, list[str]] = {}
    filename = _text_field(body.fields, "filename", 1024, errors)
    safe_filename = _text_field(body.fields, "safe_filename", 1024, errors)
    signature = _text_field(body.fields, "agent_signature", 128, errors)
    url = _text_field(body.fields, "url", 2048, errors)
    raw_bytes = body.fields.get("num_bytes")
    num_bytes: int | None = None
    if raw_bytes not in (None, ""):
        text = str(raw_bytes).strip() if not isinstance(raw_bytes, bool) else ""
        if text.isascii() and text.isdigit() and int(text) < 2**63:
            num_bytes = int(text)
        else:
            errors["num_bytes"] = ["A valid integer is required."]
    if not filename and "filename" not in errors:
        errors["filename"] = ["This field is required."]
    if errors:
        raise FieldErrors(errors)
    assert filename is not None
    safe_filename = safe_filename or _safe_filename(filename)
    existing = None
    if signature:
        # An upsert, as the reference server does: the same file on the same printer is one row.
        existing = (await db.execute(
            select(GCodeFile).where(
                GCodeFile.organization_id == printer.organization_id,
                GCodeFile.printer_id == printer.id,
                GCodeFile.agent_signature == signature,
                GCodeFile.safe_filename == safe_filename,
            ).order_by(GCodeFile.id.desc()).limit(1)
        )).scalar_one_or_none()
    created = existing is None
    if existing is None:
        existing = GCodeFile(
            organization_id=printer.organization_id, user_id=printer.user_id, printer_id=printer.id,
            filename=filename, safe_filename=safe_filename, url=url, num_bytes=num_bytes,
            agent_signature=signature,
        )
        db.add(existing)
        await db.commit()
    reply = {
        "id": existing.id,
        "filename": existing.filename,
        "safe_filename": existing.safe_filename,
        "num_bytes": existing.num_bytes,
        "agent_signature": existing.agent_signature,
        "url": existing.url,
    }
    return JSONResponse(reply, status_code=201 if created else 200)


@router.post("/printer_events/")
async def post_printer_event(request: Request, db: Db, printer: AgentPrinter) -> dict[str, str]:
    body = await read_body(request, MAX_PICTURE_REQUEST_BYTES)
    errors: dict[str, list[str]] = {}
    title = _text_field(body.fields, "event_title", 256, errors)
    text = _text_field(body.fields, "event_text", MAX_EVENT_TEXT, errors)
    event_type = _text_field(body.fields, "event_type", 64, errors)
    info_url = _text_field(body.fields, "info_url", 2048, errors)
    event_class = body.fields.get("event_class") or EventClass.INFO.value
    if event_class not in set(EventClass):
        errors["event_class"] = [f'"{str(event_class)[:40]}" is not a valid choice.']
    notify = as_bool(body.fields.get("notify", "false"))
    if notify is None:
        errors["notify"] = ["Must be a valid boolean."]
    snapshot = body.files.get("snapshot")
    if snapshot is not None:
        try:
            await imaging.check_picture(snapshot)
        except imaging.BadImage as exc:
            errors["snapshot"] = [f"Not a usable picture: {exc}."]
    if errors:
        raise FieldErrors(errors)
    now = utcnow()
    image_path = None
    if snapshot is not None:
        image_path = media.picture_path(printer.organization_id, printer.id, "events", now)
        await media.store_media(services_of(request).settings.data_dir, image_path, snapshot)
    db.add(PrinterEvent(
        organization_id=printer.organization_id,
        printer_id=printer.id,
        print_id=printer.current_print_id,
        event_type=event_type or "",
        event_class=str(event_class),
        event_title=title or "",
        event_text=text or "",
        info_url=info_url or None,
        image_path=image_path,
        notify=bool(notify),
        created_at=now,
    ))
    await db.commit()
    return {"result": "ok"}


@router.post("/unlinked/")
async def unlinked(request: Request) -> dict[str, Any]:
    """LAN auto-discovery needs a relay to the web app, which this server does not have: the
    agent is acknowledged with no messages and keeps waiting to be linked by code."""
    limiter: RateLimiter = services_of(request).discovery_throttle
    if not limiter.allow(client_address(request)):
        raise HTTPException(429, detail="Request was throttled.")
    await read_body(request, MAX_FORM_BYTES, max_files=0)
    return {"messages": []}
