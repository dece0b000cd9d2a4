"""What an agent's status messages mean for the printer and its prints.

The rules are the reference server's: a new ``current_print_ts`` (±20 s of clock skew) starts
a Print; PrintDone ends it finished, PrintFailed / PrintCancelled end it cancelled, and
``current_print_ts`` going to -1 ends an open print cancelled (its PrintDone was never seen).
A print is known by its ``ext_id`` (the agent's start time), so reconnects and late status
messages of an ended print never create it twice. Agents replay events kept while they were
disconnected: a message carrying exactly an ended print's time is about that print and never
ends or restarts the current one, even within the skew window.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.errors import Invalid
from layerfleet.fleet.models import EventClass, Printer, PrinterEvent, default_printer_settings
from layerfleet.notifications import outbox
from layerfleet.notifications.models import NotificationEvent
from layerfleet.prints.models import GCodeFile, Print
from layerfleet.scheduling import service as scheduling
from layerfleet.timelapses import service as timelapses
from layerfleet.watching.frames import create_feedback_shots

log = logging.getLogger(__name__)

CLOCK_SKEW_SECONDS = 20
NOT_PRINTING = -1
MAX_EXT_ID = 2**53
# A start time from the agent is trusted only when it is plausible; else the server's clock is.
MAX_START_AGE = timedelta(days=7)
MAX_TEMP_PROFILES = 50

ENDS_FINISHED = {"PrintDone"}
ENDS_CANCELLED = {"PrintFailed", "PrintCancelled"}
RECORDED_EVENTS: dict[str, tuple[str, EventClass, str]] = {
    "PrintPaused": ("PRINT_PAUSED", EventClass.INFO, "Print paused"),
    "PrintResumed": ("PRINT_RESUMED", EventClass.INFO, "Print resumed"),
    "FilamentChange": ("FILAMENT_CHANGE", EventClass.WARNING, "Filament change required"),
}


class BadFrame(Invalid):
    """A message whose known parts have the wrong shape; the message says which."""


@dataclass(frozen=True)
class AgentUpdate:
    """The parts of one agent message that the server acts on; ``None`` when absent."""

    status: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    event_type: str | None = None
    event_data: dict[str, Any] = field(default_factory=dict)
    current_print_ts: int | None = None

    @property
    def empty(self) -> bool:
        return self.status is None and self.settings is None and self.event_type is None \
            and self.current_print_ts is None


def _pick(frame: dict[str, Any], *names: str) -> Any:
    # The first name is today's; the others are what agents before 2.1.3 / 0.5.2 sent.
    for name in names:
        if frame.get(name) is not None:
            return frame[name]
    return None


def parse_update(frame: dict[str, Any]) -> AgentUpdate:
    status = _pick(frame, "status", "octoprint_data")
    settings = _pick(frame, "settings", "octoprint_settings")
    event = _pick(frame, "event", "octoprint_event")
    ts = frame.get("current_print_ts")
    if status is not None and not isinstance(status, dict):
        raise BadFrame("status is not an object")
    if settings is not None and not isinstance(settings, dict):
        raise BadFrame("settings is not an object")
    if event is not None and not (isinstance(event, dict) and isinstance(event.get("event_type"), str)):
        raise BadFrame("event is not an object with an event_type")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)
                           or not math.isfinite(ts) or not NOT_PRINTING <= ts < MAX_EXT_ID):
        raise BadFrame("current_print_ts is not a time stamp or -1")
    data = event.get("data") if event else None
    return AgentUpdate(
        status=status,
        settings=settings,
        event_type=event["event_type"][:64] if event else None,
        event_data=data if isinstance(data, dict) else {},
        current_print_ts=int(ts) if ts is not None else None,
    )


def clean_text(value: object, limit: int) -> str | None:
    """A string fit for a text column: no NUL (PostgreSQL refuses them), at most ``limit``."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "")[:limit]


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _webcam_flags(reported: dict[str, Any]) -> dict[str, Any]:
    webcams = reported.get("webcams")
    camera: dict[str, Any] = {}
    if isinstance(webcams, list):
        cameras = [c for c in webcams if isinstance(c, dict)]
        camera = next((c for c in cameras if c.get("is_primary_camera")), cameras[0] if cameras else {})
    elif isinstance(reported.get("webcam"), dict):
        camera = reported["webcam"]
    flags: dict[str, Any] = {}
    for key in ("flipV", "flipH"):
        if isinstance(camera.get(key), bool):
            flags[f"webcam_{key}"] = camera[key]
    rotation = camera.get("rotation")
    if isinstance(camera.get("rotate90"), bool) and rotation is None:
        # OctoPrint's rotate90 turns counter-clockwise; the Printer object counts clockwise.
        rotation = 270 if camera["rotate90"] else 0
    if not isinstance(rotation, bool) and rotation in (0, 90, 180, 270):
        flags["webcam_rotation"] = int(rotation)
    if camera.get("streamRatio") in ("4:3", "16:9"):
        flags["webcam_streamRatio"] = camera["streamRatio"]
    return flags


def merged_settings(current: dict[str, Any] | None, reported: dict[str, Any]) -> dict[str, Any]:
    """The Printer object's settings (seed 001) updated from what the agent reported."""
    merged = {**default_printer_settings(), **(current or {})}
    agent = _dict(reported.get("agent"))
    for key, target in (("name", "agent_name"), ("version", "agent_version")):
        value = clean_text(agent.get(key), 64)
        if value is not None:
            merged[target] = value
    profiles = _dict(reported.get("temperature")).get("profiles")
    if isinstance(profiles, list):
        merged["temp_profiles"] = [p for p in profiles if isinstance(p, dict)][:MAX_TEMP_PROFILES]
    merged.update(_webcam_flags(reported))
    return merged


def _is_open(print_: Print) -> bool:
    return print_.finished_at is None and print_.cancelled_at is None


async def _end(session: AsyncSession, printer: Printer, print_: Print, now: datetime, *, finished: bool,
               failed: bool = False) -> None:
    if _is_open(print_):
        if finished:
            print_.finished_at = now
        else:
            print_.cancelled_at = now
        await _notify(session, printer, print_,
                      NotificationEvent.PRINT_DONE if finished else NotificationEvent.PRINT_CANCELLED)
        await create_feedback_shots(session, print_)
        await scheduling.print_ended(session, print_, finished=finished, failed=failed)
        await timelapses.print_ended(session, print_)
    if printer.current_print_id == print_.id or printer.current_print is print_:
        printer.current_print = None
        printer.normalized_p = 0.0


def _job_file(status: dict[str, Any] | None) -> dict[str, Any]:
    return _dict(_dict(_dict(status).get("job")).get("file"))


def _filename(update: AgentUpdate) -> str:
    file = _job_file(update.status)
    candidates = [file.get("name"), file.get("display"), update.event_data.get("name")]
    if update.event_type is not None and update.event_type.startswith("Print"):
        # The event names its own file; the status sent with it may still show the file
        # selected before (seen with OctoPrint printing two jobs in a row).
        candidates.insert(0, candidates.pop())
    for candidate in candidates:
        text = clean_text(candidate, 1024)
        if text:
            return text
    return ""


async def _gcode_file_id(session: AsyncSession, printer: Printer, update: AgentUpdate) -> int | None:
    wanted = _job_file(update.status).get("obico_g_code_file_id")
    if isinstance(wanted, bool) or not isinstance(wanted, int) or not 0 < wanted < 2**31:
        return None
    # Only a G-code file of the printer's own organization: an agent must not reach into another's.
    query = select(GCodeFile.id).where(GCodeFile.id == wanted, GCodeFile.organization_id == printer.organization_id)
    return (await session.execute(query)).scalar_one_or_none()


def _started_at(ts: int, now: datetime) -> datetime:
    started = datetime.fromtimestamp(ts, UTC)
    return started if now - MAX_START_AGE <= started <= now else now


async def _ended_print_started_at(session: AsyncSession, printer: Printer, ts: int) -> bool:
    query = select(Print.id).where(Print.printer_id == printer.id, Print.ext_id == ts,
                                   (Print.finished_at.is_not(None)) | (Print.cancelled_at.is_not(None)))
    return (await session.execute(query.limit(1))).first() is not None


async def _track_print(session: AsyncSession, printer: Printer, update: AgentUpdate, now: datetime) -> None:
    ts = update.current_print_ts
    assert ts is not None
    current = printer.current_print
    if ts == NOT_PRINTING:
        if current is not None:
            await _end(session, printer, current, now, finished=False)
        return
    if ts == 0:
        return
    if current is not None and current.ext_id is not None and abs(current.ext_id - ts) <= CLOCK_SKEW_SECONDS:
        if current.ext_id != ts and await _ended_print_started_at(session, printer, ts):
            return  # exactly an earlier print's time: a late message about that one
        if current.gcode_file_id is None:
            current.gcode_file_id = await _gcode_file_id(session, printer, update)
        reported = _filename(update)
        if reported and reported != current.filename:
            # The print's file as the agent now reports it (the first message may have lagged),
            # and the farm job that sent that file, if it was not recognised at the start.
            current.filename = reported
            await scheduling.print_started(session, printer, current)
        return
    known = (await session.execute(
        select(Print)
        .where(Print.printer_id == printer.id, Print.ext_id.between(ts - CLOCK_SKEW_SECONDS, ts + CLOCK_SKEW_SECONDS))
        .order_by(Print.id.desc())
        .limit(1)
    )).scalar_one_or_none()
    if known is not None and not _is_open(known):
        if update.event_type != "PrintStarted" or known.ext_id == ts:
            return  # a late status of a print that has already ended
        # A print started within the skew window of the one that just ended is a new print.
        known = None
    if current is not None:
        log.info("printer %s: print %s ended without an end event; a new print started", printer.id, current.id)
        await _end(session, printer, current, now, finished=False)
    if known is None:
        known = Print(
            organization_id=printer.organization_id,
            printer_id=printer.id,
            ext_id=ts,
            filename=_filename(update),
            gcode_file_id=await _gcode_file_id(session, printer, update),
            started_at=_started_at(ts, now),
        )
        session.add(known)
        await session.flush()
        printer.normalized_p = 0.0  # a new print starts the gauge afresh (the long mean stays)
        await scheduling.print_started(session, printer, known)
        await _notify(session, printer, known, NotificationEvent.PRINT_STARTED)
    printer.current_print = known


async def _notify(session: AsyncSession, printer: Printer, print_: Print | None, event: NotificationEvent,
                  **extra: object) -> None:
    await outbox.record(session, organization_id=printer.organization_id, event=event, printer_id=printer.id,
                        print_id=print_.id if print_ is not None else None,
                        payload={"printer_name": printer.name,
                                 "filename": print_.filename if print_ is not None else "", **extra})


HEATER_REACHED_WITHIN = 3.0  # °C of the target
HEATER_COOL = 35.0  # °C: a heater turned off and below this has cooled down


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _heaters(status: dict[str, Any] | None) -> dict[str, tuple[float, float]]:
    temperatures = _dict(_dict(status).get("temperatures"))
    heaters = {}
    for name, values in list(temperatures.items())[:8]:
        actual, target = _dict(values).get("actual"), _dict(values).get("target")
        if _finite(actual) and _finite(target):
            heaters[str(name)[:32]] = (float(actual), float(target))
    return heaters


def heater_events(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[tuple[NotificationEvent, str]]:
    """HeaterTargetReached / HeaterCooledDown crossings between two statuses, by heater."""
    old, new = _heaters(before), _heaters(after)
    found = []
    for name, (actual, target) in new.items():
        if name not in old:
            continue
        was_actual, was_target = old[name]
        reached = target > 0 and abs(actual - target) <= HEATER_REACHED_WITHIN
        was_reached = was_target == target and abs(was_actual - was_target) <= HEATER_REACHED_WITHIN
        if reached and not was_reached:
            found.append((NotificationEvent.HEATER_TARGET_REACHED, name))
        if target == 0 and actual < HEATER_COOL <= was_actual:
            found.append((NotificationEvent.HEATER_COOLED_DOWN, name))
    return found


def _record_event(session: AsyncSession, printer: Printer, event_type: str) -> None:
    kind, event_class, title = RECORDED_EVENTS[event_type]
    current = printer.current_print
    session.add(PrinterEvent(
        organization_id=printer.organization_id,
        printer_id=printer.id,
        print_id=current.id if current is not None else None,
        event_type=kind,
        event_class=event_class.value,
        event_title=title,
        event_text=current.filename if current is not None else "",
    ))


async def apply_update(session: AsyncSession, printer: Printer, update: AgentUpdate, now: datetime) -> None:
    """Apply one agent message to ``printer`` (loaded in ``session``); the caller commits."""
    if update.status is not None:
        for event, heater in heater_events(printer.status, update.status):
            await _notify(session, printer, printer.current_print, event, heater=heater,
                          text=f"Heater {heater}: {_heaters(update.status)[heater][0]:.0f} °C")
        printer.status = update.status
        printer.status_updated_at = now
    if update.settings is not None:
        settings = merged_settings(printer.settings, update.settings)
        if settings != printer.settings:
            printer.settings = settings
    # Absent means the agent has lost its printer and cannot tell; nothing starts or ends.
    if update.current_print_ts is not None:
        await _track_print(session, printer, update, now)
    event_type = update.event_type
    current = printer.current_print
    if event_type is None or current is None:
        return
    ts = update.current_print_ts
    if ts is not None and ts > 0 and current.ext_id is not None and current.ext_id != ts and (
            abs(current.ext_id - ts) > CLOCK_SKEW_SECONDS or await _ended_print_started_at(session, printer, ts)):
        return  # a late event of an earlier print (sent after a reconnect) is not about this one
    if event_type in ENDS_FINISHED:
        await _end(session, printer, current, now, finished=True)
    elif event_type in ENDS_CANCELLED:
        await _end(session, printer, current, now, finished=False, failed=event_type == "PrintFailed")
    elif event_type in RECORDED_EVENTS:
        _record_event(session, printer, event_type)
        await _notify(session, printer, current, NotificationEvent(event_type))
        if event_type in ("PrintPaused", "PrintResumed"):
            await scheduling.print_paused(session, current, paused=event_type == "PrintPaused")
