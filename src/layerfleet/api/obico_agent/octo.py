"""The agent's HTTP calls under /api/v1/octo/ (see the protocol notes): what each one needs
answered, and nothing else. They are for agents, not people, so they stay out of /docs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from layerfleet.agents import uploads
from layerfleet.agents.lifecycle import clean_text
from layerfleet.agents.uploads import as_bool
from layerfleet.api.deps import AppServices, AppSettings, Db, services_of
from layerfleet.api.errors import FieldErrors
from layerfleet.api.obico_agent.auth import AgentPrinter
from layerfleet.api.obico_agent.bodies import client_address, read_body
from layerfleet.detection import imaging
from layerfleet.fleet.models import EventClass, Printer

router = APIRouter(prefix="/api/v1/octo", include_in_schema=False)

MAX_FORM_BYTES = 64 * 1024
MAX_PICTURE_REQUEST_BYTES = imaging.MAX_PICTURE_BYTES + 64 * 1024
MAX_EVENT_TEXT = 64 * 1024
MAX_CAMERA_NAME = 64  # printer_cameras.name


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
    if uploads.apply_agent_changes(printer, body.fields, from_form=body.is_form):
        await db.commit()
    return _printer_reply(printer)


@router.post("/pic/")
async def post_picture(request: Request, db: Db, printer: AgentPrinter) -> dict[str, str]:
    # The services straight from the application rather than as three more dependencies: each
    # one FastAPI resolves costs every picture of every printer.
    services = services_of(request)
    body = await read_body(request, MAX_PICTURE_REQUEST_BYTES)
    data = body.files.get("pic")
    if data is None:
        raise FieldErrors({"pic": ["No picture was submitted."]})
    try:
        await imaging.check_picture(data)
    except imaging.BadImage as exc:
        raise FieldErrors({"pic": [f"Not a usable picture: {exc}."]}) from None
    camera_name = body.fields.get("camera_name")
    if camera_name is not None and (not isinstance(camera_name, str) or len(camera_name) > MAX_CAMERA_NAME):
        raise FieldErrors({"camera_name": [f"Ensure this field has no more than {MAX_CAMERA_NAME} characters."]})
    picture = uploads.Picture(
        data=data,
        primary_camera=as_bool(body.fields.get("is_primary_camera", "true")) is not False,
        nozzle_camera=as_bool(body.fields.get("is_nozzle_camera", "false")) is True,
        viewing_boost=as_bool(body.fields.get("viewing_boost")) is True,
        camera_name=clean_text(camera_name, MAX_CAMERA_NAME),
    )
    await uploads.receive_picture(db, printer, picture, data_dir=services.settings.data_dir,
                                  events=services.fleet_events, sink=services.frame_sink)
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
    file, created = await uploads.record_gcode_file(db, printer, filename=filename, safe_filename=safe_filename,
                                                    url=url, num_bytes=num_bytes, agent_signature=signature)
    if created:
        await db.commit()
    reply = {
        "id": file.id,
        "filename": file.filename,
        "safe_filename": file.safe_filename,
        "num_bytes": file.num_bytes,
        "agent_signature": file.agent_signature,
        "url": file.url,
    }
    return JSONResponse(reply, status_code=201 if created else 200)


@router.post("/printer_events/")
async def post_printer_event(request: Request, db: Db, printer: AgentPrinter, settings: AppSettings
                             ) -> dict[str, str]:
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
    event = uploads.ReportedEvent(
        event_type=event_type or "", event_class=str(event_class), title=title or "", text=text or "",
        info_url=info_url or None, notify=bool(notify), snapshot=snapshot,
    )
    await uploads.record_printer_event(db, printer, event, data_dir=settings.data_dir)
    await db.commit()
    return {"result": "ok"}


@router.post("/unlinked/")
async def unlinked(request: Request, services: AppServices) -> dict[str, Any]:
    """LAN auto-discovery needs a relay to the web app, which this server does not have: the
    agent is acknowledged with no messages and keeps waiting to be linked by code."""
    if not services.discovery_throttle.allow(client_address(request)):
        raise HTTPException(429, detail="Request was throttled.")
    await read_body(request, MAX_FORM_BYTES, max_files=0)
    return {"messages": []}
