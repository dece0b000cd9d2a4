"""What agents send besides their websocket messages: the printer settings they change, webcam
pictures, the G-code files they print and the events they report. The HTTP dialect reads and
checks the request; the rules of what each one changes are here."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Select, Table, Update, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from layerfleet import media
from layerfleet.database import utcnow
from layerfleet.fleet.events import FleetEvents
from layerfleet.fleet.models import Printer, PrinterCamera, PrinterEvent
from layerfleet.fleet.rules import PrinterChanges
from layerfleet.prints import service as prints
from layerfleet.prints.models import GCodeFile
from layerfleet.watching.frames import camera_slug
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
    camera_name: str | None = None  # as the agent names the camera (moonraker-obico's `camera_name`)

    @property
    def is_primary(self) -> bool:
        return self.primary_camera and not self.nozzle_camera


async def receive_picture(session: AsyncSession, printer: Printer, picture: Picture, *, data_dir: Path,
                          events: FleetEvents, sink: FrameSink) -> None:
    """Make the picture its camera's latest picture and hand it to the failure detector; commits.

    The primary camera's picture is the printer's picture; another camera's is kept on its
    ``PrinterCamera``, by the name its agent gives it. ``printer`` is read in ``session`` as
    ``printer_for_token`` reads it. With a claiming sink the picture's row and the sinks'
    claims are one transaction; the sinks' own work follows the commit."""
    if not picture.is_primary:
        await _receive_other_camera(session, printer, picture, data_dir=data_dir, events=events, sink=sink)
        return
    received_at = utcnow()
    path = media.picture_path(printer.organization_id, printer.id, "pics", received_at)
    await media.store_media(data_dir, path, picture.data)
    previous = printer.pic_path
    await _set_picture(session, printer, path, received_at)
    # Viewing-boost pictures are extra frames for a person watching; the detector skips them.
    hand_over = not picture.viewing_boost
    then: AfterCommit | None = None
    if hand_over and claims_in_transaction(sink):
        try:
            then = await cast(ClaimingFrameSink, sink).claim(session, printer, picture.data, received_at)
            hand_over = False
        except Exception:
            # The picture itself must not be lost with the claim: it is stored alone, and the
            # sink takes it the long way (its own transactions) after.
            log.exception("printer %s: the frame sink failed to claim a picture", printer.id)
            await session.rollback()
            await session.refresh(printer)
            await _set_picture(session, printer, path, received_at)
    # Committed before the live pages hear of it and before the old file goes: nothing may
    # point at a picture that is not there.
    await session.commit()
    await _after_commit(printer, picture, received_at, previous=previous, path=path, then=then,
                        hand_over=hand_over, data_dir=data_dir, events=events, sink=sink)


def claims_in_transaction(sink: FrameSink) -> bool:
    """Whether ``sink`` claims pictures in the uploader's transaction (``ClaimingFrameSink``)."""
    return _claims(type(sink))


@functools.cache
def _claims(kind: type) -> bool:
    # By class, once: an isinstance check against a runtime-checkable protocol walks its members
    # each time (a twentieth of an upload's CPU on Python 3.11).
    return issubclass(kind, ClaimingFrameSink)


@functools.cache
def _picture_update() -> Update:
    printers = cast(Table, Printer.__table__)
    return update(printers).where(printers.c.id == bindparam("pictured_printer")).values(
        pic_path=bindparam("picture_path"), pic_updated_at=bindparam("pictured_at"),
        updated_at=bindparam("pictured_at"))


async def _set_picture(session: AsyncSession, printer: Printer, path: str, received_at: datetime) -> None:
    """The printer's picture, as one UPDATE of its row: a flush of the ORM's unit of work for two
    columns cost more CPU than the rest of the transaction's bookkeeping."""
    await session.execute(_picture_update(), {
        "pictured_printer": printer.id, "picture_path": path, "pictured_at": received_at})
    # What the row now holds, as the session's view of it (nothing left to flush).
    set_committed_value(printer, "pic_path", path)
    set_committed_value(printer, "pic_updated_at", received_at)
    set_committed_value(printer, "updated_at", received_at)


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


# A printer's cameras besides the primary: enough for any printer, and a bound on what one
# agent can make the server keep.
MAX_OTHER_CAMERAS = 8


async def _receive_other_camera(session: AsyncSession, printer: Printer, picture: Picture, *, data_dir: Path,
                                events: FleetEvents, sink: FrameSink) -> None:
    """Another camera's picture. A nozzle camera's is kept and shown but never scored: it sees
    the nozzle from a few centimetres, where the detector, taught on views of the bed, has
    nothing to recognise (Obico leaves nozzle cameras out of detection as well)."""
    name = (picture.camera_name or "").strip()
    if not name:
        # Unnamed, it cannot be told from the agent's other unnamed cameras.
        log.debug("printer %s: a picture of an unnamed non-primary camera; ignored", printer.id)
        return
    received_at = utcnow()
    path = media.picture_path(printer.organization_id, printer.id, f"cameras/{camera_slug(name)}", received_at)
    camera = await _camera(session, printer, name)
    if camera is None:
        log.info("printer %s: more than %d other cameras; the picture of %r is ignored", printer.id,
                 MAX_OTHER_CAMERAS, name)
        return
    await media.store_media(data_dir, path, picture.data)
    previous = camera.pic_path
    camera.pic_path, camera.pic_updated_at, camera.nozzle = path, received_at, picture.nozzle_camera
    hand_over = not picture.viewing_boost and not picture.nozzle_camera
    then: AfterCommit | None = None
    if hand_over and isinstance(sink, ClaimingFrameSink):
        try:
            then = await sink.claim(session, printer, picture.data, received_at, camera=name)
            hand_over = False
        except Exception:
            log.exception("printer %s: the frame sink failed to claim camera %r's picture", printer.id, name)
            await session.rollback()
            await session.refresh(printer)
            camera = await _camera(session, printer, name)
            if camera is None:
                return
            camera.pic_path, camera.pic_updated_at, camera.nozzle = path, received_at, picture.nozzle_camera
    await session.commit()
    await _after_commit(printer, picture, received_at, previous=previous, path=path, then=then,
                        hand_over=hand_over, data_dir=data_dir, events=events, sink=sink, camera=name)


async def _after_commit(printer: Printer, picture: Picture, received_at: datetime, *, previous: str | None,
                        path: str, then: AfterCommit | None, hand_over: bool, data_dir: Path, events: FleetEvents,
                        sink: FrameSink, camera: str | None = None) -> None:
    """Once the picture is committed: the live pages told, the replaced file removed, the frame
    handed to the sink (queued after its claim, or submitted)."""
    events.publish(printer.organization_id, [printer.id])
    if previous and previous != path:
        await media.remove_media(data_dir, previous)
    try:
        if then is not None:
            await then()
        elif hand_over:
            await sink.submit(printer.id, printer.organization_id, picture.data, received_at, camera=camera)
    except Exception:
        log.exception("printer %s: the frame sink failed", printer.id)


async def _camera(session: AsyncSession, printer: Printer, name: str) -> PrinterCamera | None:
    """The printer's camera of this name, made on its first picture; None past the bound."""
    def find() -> Select[PrinterCamera]:
        return select(PrinterCamera).where(PrinterCamera.printer_id == printer.id, PrinterCamera.name == name)

    camera = (await session.execute(find())).scalar_one_or_none()
    if camera is not None:
        return camera
    count = (await session.execute(select(func.count()).select_from(PrinterCamera).where(
        PrinterCamera.printer_id == printer.id))).scalar_one()
    if count >= MAX_OTHER_CAMERAS:
        return None
    # Two first pictures of one camera may race (two server processes): the second insert is
    # a no-op, and both read the one row.
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    await session.execute(insert(PrinterCamera).values(
        printer_id=printer.id, name=name, nozzle=False, ignore_masks=[],
    ).on_conflict_do_nothing(index_elements=["printer_id", "name"]))
    return (await session.execute(find())).scalar_one()
