"""The library and queues page: upload STLs and watch them slice, make builds, print them now or
queue them on printers.

Every change goes through the Eiger v3 API, which accepts this page's session cookie; the lists
the spec lacks (the organization's parts with their slice state, its builds, every printer with
its queue) are rendered here from the domains' read queries, whole or one section at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import Role, User
from layerfleet.api.deps import Db
from layerfleet.api.eiger_v3.views import printer_state
from layerfleet.fleet import service as fleet
from layerfleet.fleet.actions import is_ready
from layerfleet.fleet.models import Printer
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
# The printer states of the API (views.printer_state) in the stylesheet's badge colours.
STATE_BADGES = {
    "Ready": "Idle", "Print Finished": "Idle", "Printing": "Printing", "Print Paused": "Paused",
    "Pausing": "Paused", "Resuming Print": "Printing", "Canceling": "Paused", "Offline": "Offline",
    "User Action Required": "Error", "Print Failure Detected": "Error",
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
    state: str
    active: PrintJob | None
    queue: list[QueuedJob]

    @property
    def badge(self) -> str:
        return STATE_BADGES.get(self.state, "")

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


async def _latest_jobs(db: AsyncSession, column: Any, ids: Sequence[int]) -> dict[int, SliceJob]:
    """The newest slice job of each of these part versions (or builds)."""
    if not ids:
        return {}
    jobs = (await db.execute(select(SliceJob).where(column.in_(ids)).order_by(SliceJob.id))).scalars()
    return {getattr(job, column.key): job for job in jobs}  # later ids win


async def part_rows(db: AsyncSession, organization_id: int) -> list[PartRow]:
    parts = list((await db.execute(select(Part).where(Part.organization_id == organization_id)
                                   .order_by(Part.created_at.desc(), Part.id.desc()).limit(LIST_LIMIT))).scalars())
    latest = [part.versions[-1] for part in parts if part.versions]
    jobs = await _latest_jobs(db, SliceJob.part_version_id, [v.id for v in latest])
    return [PartRow(v.part, v, _sliced(jobs.get(v.id), v.sliced)) for v in latest]


async def build_rows(db: AsyncSession, organization_id: int) -> list[BuildRow]:
    builds = list((await db.execute(select(Build).where(Build.organization_id == organization_id)
                                    .order_by(Build.created_at.desc(), Build.id.desc()).limit(LIST_LIMIT))).scalars())
    jobs = await _latest_jobs(db, SliceJob.build_id, [b.id for b in builds])
    return [BuildRow(b, _sliced(jobs.get(b.id), b.sliced)) for b in builds]


async def printer_rows(db: AsyncSession, organization_id: int) -> list[PrinterRow]:
    printers = sorted(await fleet.list_printers(db, organization_id), key=lambda p: (p.name.casefold(), p.id))
    ids = [p.id for p in printers]
    queues, active = await scheduling.queues_of(db, ids), await scheduling.active_jobs(db, ids)
    return [PrinterRow(p, printer_state(p, active.get(p.id)), active.get(p.id), queues[p.id]) for p in printers]


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
