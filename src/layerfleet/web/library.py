"""The library and queues page: upload STLs and watch them slice, make builds, print them now or
queue them on printers.

Every change goes through the Eiger v3 API, which accepts this page's session cookie; the lists
the spec lacks (the organization's parts with their slice state, its builds, every printer with
its queue) are rendered here from the domains' read queries, whole or one section at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import Role, User
from layerfleet.api.deps import Db
from layerfleet.fleet import service as fleet
from layerfleet.fleet.actions import is_ready
from layerfleet.fleet.models import PAUSER_WORDS, FleetState, Printer, fleet_state, paused_by
from layerfleet.library import service as library
from layerfleet.library.models import Build, Part, PartVersion, SliceJob, SliceStatus
from layerfleet.scheduling import service as scheduling
from layerfleet.scheduling.models import PrintJob, QueuedJob
from layerfleet.web.pages import duration_text, page_user, render, session_ended, templates, to_sign_in

router = APIRouter(include_in_schema=False)

# The newest this many parts and builds are listed; older ones stay in the API's lists.
LIST_LIMIT = 100

SLICE_WORDS = {
    SliceStatus.REQUESTED: "Queued",
    SliceStatus.QUEUED: "Queued",
    SliceStatus.IN_PROGRESS: "Slicing",
    SliceStatus.COMPLETED: "Sliced",
    SliceStatus.ERROR: "Error",
    SliceStatus.CANCELED: "Cancelled",
}


def material_text(grams: float | None, cm3: float | None, material: str) -> str:
    if grams is None and cm3 is None:
        return "–"
    amounts = [f"{grams:.1f} g" if grams is not None else "", f"{cm3:.1f} cm³" if cm3 is not None else ""]
    return f"{' · '.join(a for a in amounts if a)} {material}"


@dataclass(frozen=True)
class Sliced:
    """What the page says of a part version's or a build's slicing."""

    status: SliceStatus | None  # None: never had a job of its own (a build reusing a part's G-code)
    job_uuid: str | None
    error: str | None

    @property
    def words(self) -> str:
        return "Sliced" if self.status is None else SLICE_WORDS[self.status]

    @property
    def running(self) -> bool:
        return self.status is not None and not self.status.finished

    @property
    def failed(self) -> bool:
        """Ended without G-code: the slice may be tried again, or the part deleted."""
        return self.status in (SliceStatus.ERROR, SliceStatus.CANCELED)


def _sliced(job: SliceJob | None, done: bool) -> Sliced:
    if job is None:
        return Sliced(None if done else SliceStatus.REQUESTED, None, None)
    return Sliced(SliceStatus(job.status), job.uuid, job.error)


@dataclass(frozen=True)
class PartRow:
    part: Part
    version: PartVersion
    slicing: Sliced

    @property
    def estimate(self) -> str:
        return duration_text(self.version.estimated_print_seconds)

    @property
    def material(self) -> str:
        v = self.version
        return material_text(v.filament_g, v.filament_cm3, v.settings_preset.material)


@dataclass(frozen=True)
class BuildRow:
    build: Build
    slicing: Sliced

    @property
    def estimate(self) -> str:
        return duration_text(self.build.estimated_print_seconds)

    @property
    def material(self) -> str:
        b = self.build
        return material_text(b.filament_g, b.filament_cm3, b.settings_preset.material)


@dataclass(frozen=True)
class PrinterRow:
    printer: Printer
    # The fleet page's words for the printer's state, not the Eiger API's enum: one vocabulary
    # on every page.
    state: FleetState
    active: PrintJob | None
    queue: list[QueuedJob]

    @property
    def badge(self) -> str:
        return self.state.value

    @property
    def paused_by(self) -> str:
        """Who paused the printer's print ("the failure detector"), "" unless it is paused."""
        cause = paused_by(self.printer, self.printer.current_print)
        return PAUSER_WORDS[cause] if cause is not None else ""

    @property
    def ready(self) -> bool:
        return self.active is None and is_ready(self.printer)

    @staticmethod
    def estimate_of(entry: QueuedJob) -> str:
        build = entry.build
        return duration_text(build.estimated_print_seconds) if build.sliced else "not sliced yet"

    @property
    def queue_estimate(self) -> str:
        return duration_text(sum(e.build.estimated_print_seconds or 0.0 for e in self.queue))


async def part_rows(db: AsyncSession, organization_id: int) -> list[PartRow]:
    parts = await library.recent_parts(db, organization_id, LIST_LIMIT)
    latest = [part.versions[-1] for part in parts if part.versions]
    jobs = await library.latest_version_slice_jobs(db, [v.id for v in latest])
    return [PartRow(v.part, v, _sliced(jobs.get(v.id), v.sliced)) for v in latest]


async def build_rows(db: AsyncSession, organization_id: int) -> list[BuildRow]:
    builds = await library.recent_builds(db, organization_id, LIST_LIMIT)
    jobs = await library.latest_build_slice_jobs(db, [b.id for b in builds])
    return [BuildRow(b, _sliced(jobs.get(b.id), b.sliced)) for b in builds]


async def printer_rows(db: AsyncSession, organization_id: int) -> list[PrinterRow]:
    printers = sorted(await fleet.list_printers(db, organization_id), key=lambda p: (p.name.casefold(), p.id))
    ids = [p.id for p in printers]
    queues, active = await scheduling.queues_of(db, ids), await scheduling.active_jobs(db, ids)
    return [PrinterRow(p, fleet_state(p.status), active.get(p.id), queues[p.id]) for p in printers]


def _can_operate(user: User) -> bool:
    return user.role_enum.allows(Role.OPERATOR)


@router.get("/library/")
async def library_page(request: Request, db: Db) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    presets = await library.presets_for(db, user.organization_id)
    await db.commit()  # the built-in preset is made on first use
    return render(request, "library.html", user, {
        "active": "library",
        "presets": presets,
        "parts": await part_rows(db, user.organization_id),
        "builds": await build_rows(db, user.organization_id),
        "printers": await printer_rows(db, user.organization_id),
        "can_operate": _can_operate(user),
        "list_limit": LIST_LIMIT,
    })


SECTIONS = {"parts": part_rows, "builds": build_rows, "printers": printer_rows}


@router.get("/library/sections/{name}")
async def library_section(name: str, request: Request, db: Db) -> Response:
    """One list of the page, re-rendered after the page changed something."""
    user = await page_user(request, db)
    if user is None:
        return session_ended()
    rows = SECTIONS.get(name)
    if rows is None:
        return JSONResponse({"detail": "Not found."}, status_code=404)
    context = {name: await rows(db, user.organization_id), "can_operate": _can_operate(user),
               "list_limit": LIST_LIMIT}
    if name == "builds":
        context["printers"] = await printer_rows(db, user.organization_id)
    return templates.TemplateResponse(request, f"library_{name}.html", context)
