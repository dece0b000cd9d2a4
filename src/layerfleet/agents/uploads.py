"""What agents send besides their websocket messages: the printer settings they change, webcam
pictures, the G-code files they print and the events they report. The HTTP dialect reads and
checks the request; the rules of what each one changes are here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet import media
from layerfleet.database import utcnow
from layerfleet.fleet.events import FleetEvents
from layerfleet.fleet.models import Printer, PrinterEvent
from layerfleet.fleet.rules import PrinterChanges
from layerfleet.prints import service as prints
from layerfleet.prints.models import GCodeFile
from layerfleet.watching.sink import AfterCommit, ClaimingFrameSink, FrameSink

log = logging.getLogger(__name__)

TRUE_WORDS = {"true", "t", "1", "yes", "on"}
FALSE_WORDS = {"false", "f", "0", "no", "off", ""}
# What an agent may change on its printer; archiving stays with the members.
AGENT_WRITABLE = frozenset(PrinterChanges.model_fields) - {"archived_at", "ignore_masks"}
BOOL_FIELDS = frozenset(
    name for name, info in PrinterChanges.model_fields.items() if info.annotation is bool
)


def as_bool(value: object) -> bool | None:
    """A boolean as agents write it (form fields are words); None when it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    return None


def apply_agent_changes(printer: Printer, fields: Mapping[str, Any], *, from_form: bool) -> bool:
    """Apply the printer settings an agent sent; whether any changed (then the caller commits).

    Fields an agent may not write are skipped, and so is each invalid value, one at a time: a bad
    value never loses the good ones."""
    valid: dict[str, Any] = {}
    for name, raw in fields.items():
        if name not in AGENT_WRITABLE:
            continue
        value = as_bool(raw) if from_form and name in BOOL_FIELDS else raw
        try:
            changes = PrinterChanges.model_validate({name: value})
        except ValidationError:
            log.info("printer %s: agent sent an invalid %s; ignored", printer.id, name)
            continue
        valid.update(changes.given())
    for name, value in valid.items():
        setattr(printer, name, value)
    return bool(valid)


@dataclass(frozen=True)
class Picture:
    """A checked webcam picture and what the agent said of its camera."""

    data: bytes
    primary_camera: bool
    nozzle_camera: bool
    viewing_boost: bool


async def receive_picture(session: AsyncSession, printer: Printer, picture: Picture, *, data_dir: Path,
                          events: FleetEvents, sink: FrameSink) -> None:
    """Make the picture the printer's picture and hand it to the failure detector; commits.

    ``printer`` is read in ``session`` as ``printer_for_token`` reads it. With a claiming sink
    the picture's row and the sinks' claims are one transaction; the sinks' own work follows
    the commit."""
    if not picture.primary_camera or picture.nozzle_camera:
        # Another camera's picture (a nozzle camera, a second view) is not the printer's picture.
        return
    received_at = utcnow()
    path = media.picture_path(printer.organization_id, printer.id, "pics", received_at)
    await media.store_media(data_dir, path, picture.data)
    previous = printer.pic_path
    printer.pic_path = path
    printer.pic_updated_at = received_at
    # Viewing-boost pictures are extra frames for a person watching; the detector skips them.
    hand_over = not picture.viewing_boost
    then: AfterCommit | None = None
    if hand_over and isinstance(sink, ClaimingFrameSink):
        try:
            then = await sink.claim(session, printer, picture.data, received_at)
            hand_over = False
        except Exception:
            # The picture itself must not be lost with the claim: it is stored alone, and the
            # sink takes it the long way (its own transactions) after.
            log.exception("printer %s: the frame sink failed to claim a picture", printer.id)
            await session.rollback()
            await session.refresh(printer)
            printer.pic_path, printer.pic_updated_at = path, received_at
    # Committed before the live pages hear of it and before the old file goes: nothing may
    # point at a picture that is not there.
    await session.commit()
    events.publish(printer.organization_id, [printer.id])
    if previous and previous != path:
        await media.remove_media(data_dir, previous)
    try:
        if then is not None:
            await then()
        elif hand_over:
            await sink.submit(printer.id, printer.organization_id, picture.data, received_at)
    except Exception:
        log.exception("printer %s: the frame sink failed", printer.id)


async def record_gcode_file(session: AsyncSession, printer: Printer, *, filename: str, safe_filename: str | None,
                            url: str | None, num_bytes: int | None, agent_signature: str | None
                            ) -> tuple[GCodeFile, bool]:
    """The G-code file the printer's agent announces, and whether it is new (then the caller commits)."""
    return await prints.record_gcode_file(
        session, organization_id=printer.organization_id, user_id=printer.user_id, printer_id=printer.id,
        filename=filename, safe_name=safe_filename, url=url, num_bytes=num_bytes, agent_signature=agent_signature,
    )


@dataclass(frozen=True)
class ReportedEvent:
    """A printer event as an agent reports it, its fields checked."""

    event_type: str
    event_class: str
    title: str
    text: str
    info_url: str | None
    notify: bool
    snapshot: bytes | None


async def record_printer_event(session: AsyncSession, printer: Printer, event: ReportedEvent, *,
                               data_dir: Path) -> None:
    """Record the event (its snapshot stored) against the printer's current print; the caller commits."""
    now = utcnow()
    image_path = None
    if event.snapshot is not None:
        image_path = media.picture_path(printer.organization_id, printer.id, "events", now)
        await media.store_media(data_dir, image_path, event.snapshot)
    session.add(PrinterEvent(
        organization_id=printer.organization_id,
        printer_id=printer.id,
        print_id=printer.current_print_id,
        event_type=event.event_type,
        event_class=event.event_class,
        event_title=event.title,
        event_text=event.text,
        info_url=event.info_url,
        image_path=image_path,
        notify=event.notify,
        created_at=now,
    ))
