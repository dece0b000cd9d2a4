"""The fleet page, a printer's page, and the live stream both follow.

Cards are JSON rendered by the page's script, the same shape at first load and in every
update, so a card drawn from the stream never differs from one drawn from a reload.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.accounts.models import Role
from layerfleet.api.deps import AppServices, Db, FleetStream, session_user
from layerfleet.database import iso_z
from layerfleet.detection import service as detection
from layerfleet.detection.decisions import gauge_zone
from layerfleet.detection.models import PredictionFrame
from layerfleet.fleet import service as fleet
from layerfleet.fleet.cameras import other_cameras
from layerfleet.fleet.events import FleetEvents
from layerfleet.fleet.models import (
    PAUSER_WORDS,
    FleetState,
    PausedBy,
    Printer,
    PrinterCamera,
    fleet_state,
    job_progress,
    paused_by,
)
from layerfleet.fleet.rules import SENSITIVITY_MAX, SENSITIVITY_MIN
from layerfleet.fleet.watch_reasons import REASON_NOT_PRINTING, not_watching_reason
from layerfleet.media import media_url
from layerfleet.watching.frames import reported_temperatures
from layerfleet.watching.pipeline import WatchingPipeline
from layerfleet.web.pages import page_user, render, session_ended, to_sign_in

router = APIRouter(include_in_schema=False)

PrinterId = Annotated[int, Path(ge=1, le=2**31 - 1)]

# A page gets at most this many updates a second, however busy the farm.
MIN_SECONDS_BETWEEN_UPDATES = 0.5
KEEPALIVE_SECONDS = 15.0
# How often a stream re-reads its session: a signed-out or expired user stops getting updates.
SESSION_CHECK_SECONDS = 60.0
# Boxes of a frame scored longer ago than this no longer describe the live picture.
BOXES_FRESH_SECONDS = 60.0


def _heater(temperatures: dict[str, list[float | None]] | None, *names: str) -> list[float | None] | None:
    for name in names:
        if temperatures and name in temperatures:
            return temperatures[name]
    return None


# The states in which a printer is on a print: its card shows the file, progress and gauge.
ON_A_PRINT = (FleetState.PRINTING, FleetState.HEATING, FleetState.PAUSED)


def printer_card(printer: Printer) -> dict[str, Any]:
    """What a card (and the head of a printer's page) shows of a printer."""
    state = fleet_state(printer.status)
    progress = job_progress(printer.status) if state in ON_A_PRINT else None
    # The agent says "Printing" at 0 % while its heaters come up: neither is true yet.
    warming = state is FleetState.HEATING
    temperatures = reported_temperatures(printer.status)
    current = printer.current_print
    alerting = bool(current is not None and current.alerted_at is not None and current.alert_acknowledged_at is None)
    pause = paused_by(printer, current)
    reason = not_watching_reason(printer)
    # A paused print is not watched by design; saying so beside "Paused" only alarms.
    paused_by_design = state is FleetState.PAUSED and reason == REASON_NOT_PRINTING
    return {
        "id": printer.id,
        "name": printer.name,
        "url": f"/printers/{printer.id}/",
        "state": state.value,
        "state_text": "Heating up for the print" if warming
        else printer.state_text or ("Agent not connected" if printer.status is None else ""),
        "picture": media_url("", printer.pic_path),
        "picture_at": iso_z(printer.pic_updated_at),
        "file": (progress.file if progress else None) or (current.filename if current else None),
        "completion": progress.completion if progress and not warming else None,
        "seconds_left": progress.seconds_left if progress and not warming else None,
        "nozzle": _heater(temperatures, "tool0", "extruder"),
        "bed": _heater(temperatures, "bed", "heater_bed"),
        "normalized_p": round(printer.normalized_p, 3),
        "zone": gauge_zone(printer.normalized_p),
        "not_watching_reason": None if paused_by_design else reason,
        "watch_note": "Watching resumes with the print." if paused_by_design and printer.watching_enabled else None,
        "print_id": current.id if current else None,
        "alerting": alerting,
        "paused_by": pause.value if pause else None,
        "paused_by_text": f"Paused by {PAUSER_WORDS[pause]}" if pause else None,
        "paused_by_detector": pause is PausedBy.DETECTOR,
        "muted": bool(current is not None and current.alert_muted_at is not None),
        "updated_at": iso_z(printer.status_updated_at),
    }


def _printer_settings(printer: Printer) -> dict[str, Any]:
    return {
        "name": printer.name,
        "watching_enabled": printer.watching_enabled,
        "detective_sensitivity": printer.detective_sensitivity,
        "action_on_failure": printer.action_on_failure,
        "retract_on_pause": printer.retract_on_pause,
        "lift_z_on_pause": printer.lift_z_on_pause,
        "tools_off_on_pause": printer.tools_off_on_pause,
        "bed_off_on_pause": printer.bed_off_on_pause,
        "ignore_masks": printer.ignore_masks or [],
    }


def watching_notice(pipeline: WatchingPipeline | None) -> dict[str, Any]:
    """Whether the fleet page warns that watching is behind (this process's pipeline), and why."""
    if pipeline is None:
        return {"behind": False, "text": ""}
    health = pipeline.health()
    if not health.behind:
        return {"behind": False, "text": ""}
    parts = ["Watching is behind: the failure detector cannot keep up with the pictures"]
    if health.dropped_last_minute:
        parts.append(f"{health.dropped_last_minute} picture{'s' if health.dropped_last_minute != 1 else ''} "
                     "due for scoring went unscored in the last minute")
    if health.oldest_waiting_seconds >= 1:
        parts.append(f"the oldest waiting picture arrived {health.oldest_waiting_seconds:.0f} s ago")
    return {"behind": True, "text": "; ".join(parts) + ". Failures may be caught late."}


@router.get("/")
async def fleet_page(request: Request, db: Db, services: AppServices) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    cards = [printer_card(p) for p in await fleet.list_printers(db, user.organization_id)]
    return render(request, "fleet.html", user, {
        "active": "fleet", "cards": cards, "states": [s.value for s in FleetState],
        "watching": watching_notice(services.watching),
    })


async def _print_history(db: AsyncSession, printer: Printer) -> dict[str, Any]:
    """The current print's scored frames: the detection graph, temperatures, the latest boxes."""
    current = printer.current_print
    cameras = await other_cameras(db, printer.id)
    if current is None:
        return {"frames": [], "boxes": None, "cameras": [_camera_tile(c, []) for c in cameras]}
    frames = await detection.frames_of_print(db, current.id)
    latest = next((f for f in reversed(frames) if f.camera is None), None)
    boxes = None
    if latest is not None and printer.pic_updated_at is not None and \
            (printer.pic_updated_at - latest.taken_at).total_seconds() <= BOXES_FRESH_SECONDS:
        boxes = {"taken_at": iso_z(latest.taken_at), "boxes": latest.boxes,
                 "image": media_url("", latest.image_path)}
    return {
        "print_started_at": iso_z(current.started_at),
        "frames": [{"t": iso_z(f.taken_at), "normalized_p": round(f.normalized_p, 3),
                    "nozzle": _heater(f.temperatures, "tool0", "extruder"),
                    "bed": _heater(f.temperatures, "bed", "heater_bed")} for f in frames],
        "boxes": boxes,
        "cameras": [_camera_tile(c, frames) for c in cameras],
    }


def _camera_tile(camera: PrinterCamera, frames: list[PredictionFrame]) -> dict[str, Any]:
    """Another camera's latest picture, with the boxes of its latest scored frame while fresh."""
    latest = next((f for f in reversed(frames) if f.camera == camera.name), None)
    boxes = None
    if latest is not None and camera.pic_updated_at is not None and \
            (camera.pic_updated_at - latest.taken_at).total_seconds() <= BOXES_FRESH_SECONDS:
        boxes = {"taken_at": iso_z(latest.taken_at), "boxes": latest.boxes}
    return {"name": camera.name, "nozzle": camera.nozzle, "picture": media_url("", camera.pic_path),
            "picture_at": iso_z(camera.pic_updated_at), "ignore_masks": camera.ignore_masks or [], "boxes": boxes}


@router.get("/printers/{printer_id}/")
async def printer_page(request: Request, db: Db, printer_id: PrinterId) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    printer = await fleet.get_printer(db, user.organization_id, printer_id)
    if printer is None or printer.archived_at is not None:
        return render(request, "not_found.html", user, {"what": "printer", "back": "/"}, status_code=404)
    return render(request, "printer.html", user, {
        "active": "fleet", "printer": printer, "card": printer_card(printer),
        "settings": _printer_settings(printer), "history": await _print_history(db, printer),
        "sensitivity_min": SENSITIVITY_MIN, "sensitivity_max": SENSITIVITY_MAX,
        "can_rotate_token": user.role_enum.allows(Role.ADMIN),
    })


@router.get("/printers/{printer_id}/history.json")
async def printer_history(request: Request, db: Db, printer_id: PrinterId) -> Response:
    user = await session_user(request, db)
    if user is None:
        return session_ended()
    printer = await fleet.get_printer(db, user.organization_id, printer_id)
    if printer is None:
        return JSONResponse({"detail": "Not found."}, status_code=404)
    return JSONResponse(await _print_history(db, printer))


class CardFeed:
    """Printer cards for every open page of this process, each read once per change.

    An organization's pages wake on the same announcement and ask for the same printers: the
    first reads them, the others take its cards. A card stays good until its printer is
    announced again (:meth:`FleetEvents.version`).
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], events: FleetEvents) -> None:
        self._sessionmaker = sessionmaker
        self._events = events
        self._cards: dict[int, tuple[int, dict[str, Any] | None]] = {}  # id → (version read, card; None: gone)
        self._locks: dict[int, asyncio.Lock] = {}
        self.reads = 0

    async def cards(self, organization_id: int, printer_ids: set[int]) -> tuple[list[dict[str, Any]], list[int]]:
        """The printers' cards, and the ids no longer in the organization's fleet."""
        async with self._locks.setdefault(organization_id, asyncio.Lock()):
            stale = {i: self._events.version(i) for i in printer_ids
                     if i not in self._cards or self._cards[i][0] < self._events.version(i)}
            if stale:
                # Shielded: a page that goes away mid-read must not cut the database session
                # short (the connection would be left half closed).
                read = await asyncio.shield(self._read(organization_id, set(stale)))
                for printer_id, version in stale.items():
                    self._cards[printer_id] = (version, read.get(printer_id))
        entries = sorted((i, self._cards[i][1]) for i in printer_ids)
        return [card for _, card in entries if card is not None], [i for i, card in entries if card is None]

    async def _read(self, organization_id: int, printer_ids: set[int]) -> dict[int, dict[str, Any]]:
        self.reads += 1
        async with self._sessionmaker() as db:
            return {p.id: printer_card(p) for p in await fleet.list_printers(db, organization_id, ids=printer_ids)}


async def card_feed(request: Request) -> CardFeed:
    """The one place the web layer reads the process's card feed (made by the app factory); a
    coroutine, as the dependencies of api.deps are, so that FastAPI does not hop to a thread."""
    feed: CardFeed = request.app.state.card_feed
    return feed


Cards = Annotated[CardFeed, Depends(card_feed)]


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/events/fleet")
async def fleet_stream(request: Request, services: AppServices, events: FleetStream, feed: Cards,
                       printer: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> Response:
    """Server-sent events: ``printers`` with the changed cards (and ids no longer in the fleet)."""
    # Sessions of its own, not Db: the stream outlives the request's session by hours.
    sessionmaker = services.sessionmaker
    async with sessionmaker() as db:
        user = await session_user(request, db)
        if user is None:
            return session_ended()
        organization_id = user.organization_id

    async def stream() -> AsyncIterator[str]:
        async with events.subscribe(organization_id) as subscription:
            # The hello carries the watching notice: the page may have been drawn a while ago.
            notice = watching_notice(services.watching)
            yield f"retry: 3000\n\n{_sse('hello', {'organization': organization_id, 'watching': notice})}"
            checked = asyncio.get_running_loop().time()
            while True:
                changed = await subscription.changes(KEEPALIVE_SECONDS)
                # Looked at on every wake-up (a keep-alive at the latest): a warning comes and
                # goes within seconds, without a printer having to change.
                now_notice = watching_notice(services.watching)
                if now_notice != notice:
                    notice = now_notice
                    yield _sse("watching", notice)
                if printer is not None:
                    changed &= {printer}
                now = asyncio.get_running_loop().time()
                check_session = now - checked > SESSION_CHECK_SECONDS
                if not changed and not check_session:
                    yield ": keepalive\n\n"
                    continue
                if check_session:
                    checked = now
                    async with sessionmaker() as db:
                        signed_in = await session_user(request, db) is not None
                    if not signed_in:
                        yield _sse("signed_out", {})
                        return
                if not changed:
                    continue
                cards, removed = await feed.cards(organization_id, changed)
                yield _sse("printers", {"cards": cards, "removed": removed})
                await asyncio.sleep(MIN_SECONDS_BETWEEN_UPDATES)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
