"""Printing: print to a printer, printer queues, the backlog and job requests, print jobs,
printed parts and their inspection reports."""

from __future__ import annotations

from datetime import date
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, select

from layerfleet.accounts.models import Role
from layerfleet.api.deps import Db, base_url, ensure_role, services_of
from layerfleet.api.eiger_v3.common import Caller, CallerDep, domain_errors, json_body, path_uuid
from layerfleet.api.eiger_v3.devices import device_context, printer_by_uuid
from layerfleet.api.eiger_v3.errors import EigerError, not_found
from layerfleet.api.eiger_v3.query import COMPARISONS, Filter, Kind, ListSpec, fetch_page, parse_list_query, parse_uuid
from layerfleet.api.eiger_v3.views import (
    build_view,
    device_status,
    device_view,
    device_view_extended,
    print_job_view,
    printed_part_view,
    queued_job_view,
    queued_job_view_extended,
)
from layerfleet.fleet.models import Printer
from layerfleet.library import service as library
from layerfleet.library.models import Build
from layerfleet.scheduling import service as scheduling
from layerfleet.scheduling.models import JobOrigin, JobState, PrintedPart, PrintedPartState, PrintJob, QueuedJob
from layerfleet.scheduling.reports import report_path_for, report_url
from layerfleet.signed_links import link_problem

router = APIRouter()
Owned = TypeVar("Owned", PrintJob, PrintedPart)
DATES = tuple(op for op in COMPARISONS if op not in ("eq", "ne"))


class BuildRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    build: str


class DueDate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dueDate: date | None = None


def _report_url(request: Request, part: PrintedPart) -> str | None:
    return report_url(part, services_of(request).settings.effective_secret_key, base_url(request))


def _check_link(request: Request) -> None:
    """A signed link (no credentials): refused unless the signature holds and it has not expired."""
    query = request.query_params
    problem = link_problem(services_of(request).settings.effective_secret_key, request.url.path,
                           query.get("expires", ""), query.get("signature", ""))
    if problem is not None:
        raise EigerError(403, problem)


async def _build(db: Db, caller: Caller, raw: str, name: str = "build", missing_status: int = 404) -> Build:
    with domain_errors(missing_status):
        return await library.build_by_uuid(db, caller.organization_id, parse_uuid(name, raw))


# --- printing on a device -------------------------------------------------------------------------

@router.post("/devices/{device_id}", status_code=201, tags=["Devices"], operation_id="printToPrinter")
async def print_to_printer(device_id: str, request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    ensure_role(caller.user, Role.OPERATOR)
    printer = await printer_by_uuid(db, caller, path_uuid("device_id", device_id))
    body = await json_body(request, BuildRef)
    try:
        await scheduling.check_ready(db, printer)  # a busy printer takes no job, whichever it is
    except scheduling.ScheduleConflict as exc:
        raise EigerError(409, str(exc)) from None
    build = await _build(db, caller, body.build, missing_status=400)
    queued = next((e for e in await scheduling.queue_of(db, printer) if e.build_id == build.id), None)
    try:
        job = await scheduling.print_build(
            db, caller.user, caller.organization, printer, build,
            origin=JobOrigin.QUEUE if queued else JobOrigin.DIRECT, from_queue=queued)
    except scheduling.ScheduleConflict as exc:
        await db.rollback()
        raise EigerError(409, str(exc)) from None
    await db.commit()
    services_of(request).dispatcher.dispatch(job.id, base_url(request))
    return print_job_view(job)


@router.get("/files/print_jobs/{job_file}", include_in_schema=False)
async def print_job_gcode(job_file: str, request: Request, db: Db) -> FileResponse:
    """The G-code an agent fetches for a job: no credentials, a signed link that expires."""
    _check_link(request)
    job = (await db.execute(select(PrintJob).where(PrintJob.uuid == job_file.removesuffix(".gcode")))) \
        .unique().scalar_one_or_none()
    if job is None or job.build.gcode_path is None:
        raise not_found("Print job")
    path = library.library_root(services_of(request).settings.data_dir) / job.build.gcode_path
    return FileResponse(path, media_type="text/x.gcode", filename=job.remote_filename)


# --- queues ---------------------------------------------------------------------------------------

@router.get("/devices/{device_id}/queue", tags=["Devices"], operation_id="listDeviceQueue")
async def list_device_queue(device_id: str, db: Db, caller: CallerDep) -> dict[str, Any]:
    printer = await printer_by_uuid(db, caller, path_uuid("device_id", device_id))
    queues, active = await device_context(db, [printer.id])
    return {
        "device": device_view_extended(printer, queue=queues[printer.id], active_job=active.get(printer.id),
                                       approvals_enabled=caller.approvals_enabled),
        "queue": [queued_job_view_extended(e, approvals_enabled=caller.approvals_enabled)
                  for e in queues[printer.id]],
    }


@router.post("/devices/{device_id}/queue", status_code=201, tags=["Devices"], operation_id="appendToDeviceQueue")
async def append_to_device_queue(device_id: str, request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    ensure_role(caller.user, Role.OPERATOR)
    printer = await printer_by_uuid(db, caller, path_uuid("device_id", device_id))
    body = await json_body(request, BuildRef)
    build = await _build(db, caller, body.build, missing_status=400)
    entry = await scheduling.append_to_queue(db, printer, build)
    await db.commit()
    return queued_job_view(entry)


async def _queued(db: Db, caller: Caller, device_id: str, queued_job_id: str) -> tuple[Printer, QueuedJob]:
    printer = await printer_by_uuid(db, caller, path_uuid("device_id", device_id))
    entry = (await db.execute(select(QueuedJob).where(
        QueuedJob.uuid == path_uuid("queued_job_id", queued_job_id), QueuedJob.printer_id == printer.id,
    ))).unique().scalar_one_or_none()
    if entry is None:
        raise not_found(f"Queued job {queued_job_id} on this device")
    return printer, entry


@router.get("/devices/{device_id}/queue/{queued_job_id}", tags=["Devices"], operation_id="readDeviceQueue")
async def read_device_queue(device_id: str, queued_job_id: str, db: Db, caller: CallerDep) -> dict[str, Any]:
    _, entry = await _queued(db, caller, device_id, queued_job_id)
    return queued_job_view_extended(entry, approvals_enabled=caller.approvals_enabled)


@router.delete("/devices/{device_id}/queue/{queued_job_id}", status_code=204, tags=["Devices"],
               operation_id="removeFromDeviceQueue")
async def remove_from_device_queue(device_id: str, queued_job_id: str, db: Db, caller: CallerDep) -> Response:
    ensure_role(caller.user, Role.OPERATOR)
    _, entry = await _queued(db, caller, device_id, queued_job_id)
    scheduling.remove_from_queue(entry)
    await db.commit()
    return Response(status_code=204)


@router.post("/devices/{device_id}/queue/start_next", status_code=201, tags=["Devices"],
             operation_id="startNextInQueue")
async def start_next_in_queue(device_id: str, request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    """Layerfleet extension: the bed is clear, print the head of the device's queue."""
    ensure_role(caller.user, Role.OPERATOR)
    printer = await printer_by_uuid(db, caller, path_uuid("device_id", device_id))
    try:
        job = await scheduling.start_next_in_queue(db, caller.user, caller.organization, printer)
    except scheduling.ScheduleConflict as exc:
        await db.rollback()
        raise EigerError(409, str(exc)) from None
    if job is None:
        raise EigerError(409, f"The queue of {printer.name} is empty")
    await db.commit()
    services_of(request).dispatcher.dispatch(job.id, base_url(request))
    return print_job_view(job)


# --- backlog and job requests ---------------------------------------------------------------------

async def _backlog(build_id: str, request: Request, db: Db, caller: Caller, origin: JobOrigin) -> dict[str, Any]:
    ensure_role(caller.user, Role.OPERATOR)
    build = await _build(db, caller, build_id, "build_id")
    raw = await request.body()
    due = (await json_body(request, DueDate)).dueDate if raw.strip() else None
    job = await scheduling.backlog(db, caller.user, caller.organization, build, due=due, origin=origin)
    await db.commit()
    return print_job_view(job)


@router.post("/backlog/{build_id}", status_code=201, tags=["Builds"], operation_id="sendBuildToBacklog")
async def send_build_to_backlog(build_id: str, request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    return await _backlog(build_id, request, db, caller, JobOrigin.BACKLOG)


@router.post("/job-requests/{build_id}", status_code=201, tags=["Builds"], operation_id="sendBuildToJobRequestQueue")
async def send_build_to_job_requests(build_id: str, request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    return await _backlog(build_id, request, db, caller, JobOrigin.JOB_REQUEST)


@router.delete("/job-requests/{build_id}", status_code=204, tags=["Builds"],
               operation_id="removeBuildFromJobRequestQueue")
async def remove_build_from_job_requests(build_id: str, db: Db, caller: CallerDep) -> Response:
    ensure_role(caller.user, Role.OPERATOR)
    try:
        build = await library.build_by_uuid(db, caller.organization_id, path_uuid("build_id", build_id))
    except library.NotInLibrary:
        return Response(status_code=204)  # nothing waits for a build that does not exist: done
    await scheduling.withdraw_job_requests(db, caller.organization, build)
    await db.commit()
    return Response(status_code=204)


# --- print jobs -----------------------------------------------------------------------------------

def _by_uuid(model_uuid: Any, model_id: Any, column: Any) -> Any:
    def condition(op: str, value: str) -> ColumnElement[bool]:
        return column.in_(select(model_id).where(model_uuid == value))
    return condition


PRINT_JOBS = ListSpec(
    filters={
        "state": Filter(PrintJob.state, Kind.CHOICE, ("eq", "ne"), choices=tuple(s.value for s in JobState)),
        "created_at": Filter(PrintJob.created_at, Kind.DATETIME, DATES),
        "started_at": Filter(PrintJob.started_at, Kind.DATETIME, DATES),
        "ended_at": Filter(PrintJob.ended_at, Kind.DATETIME, DATES),
        "updated_at": Filter(PrintJob.updated_at, Kind.DATETIME, DATES),
        "build": Filter(PrintJob.build_id, Kind.UUID, ("eq",),
                        condition=_by_uuid(Build.uuid, Build.id, PrintJob.build_id)),
        "device": Filter(PrintJob.printer_id, Kind.UUID, ("eq",),
                         condition=_by_uuid(Printer.uuid, Printer.id, PrintJob.printer_id)),
    },
    sorts={"created_at": PrintJob.created_at, "started_at": PrintJob.started_at,
           "updated_at": PrintJob.updated_at, "ended_at": PrintJob.ended_at},
    default_sort="created_at",
    default_order="desc",
)


async def _job_extended(db: Db, caller: Caller, job: PrintJob) -> dict[str, Any]:
    printer = await db.get(Printer, job.printer_id) if job.printer_id is not None else None
    view: dict[str, Any] = {**print_job_view(job), "build": build_view(job.build,
                                                                       approvals_enabled=caller.approvals_enabled)}
    if printer is not None:
        live = not JobState(job.state).ended and job.state != JobState.BACKLOGGED.value
        view.update(device_status(printer, job) if live else {})
        queues, active = await device_context(db, [printer.id])
        view["device"] = device_view(printer, queue=queues[printer.id], active_job=active.get(printer.id))
    else:
        view["device"] = None
    return view


@router.get("/print_jobs", tags=["Print Jobs"], operation_id="listPrintJobs")
async def list_print_jobs(request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    query = parse_list_query(request.query_params, PRINT_JOBS)
    page = await fetch_page(db, select(PrintJob).where(PrintJob.organization_id == caller.organization_id),
                            query, PrintJob.id)
    return {"has_more_items": page.has_more_items,
            "items": [await _job_extended(db, caller, job) for job in page.items]}


async def _owned(db: Db, caller: Caller, model: type[Owned], parameter: str, raw: str, label: str) -> Owned:
    """The organization's object of ``model`` whose UUID is path parameter ``parameter``."""
    found = (await db.execute(select(model).where(
        model.uuid == path_uuid(parameter, raw), model.organization_id == caller.organization_id,
    ))).unique().scalar_one_or_none()
    if found is None:
        raise not_found(f"{label} {raw}")
    return found


async def _job(db: Db, caller: Caller, raw: str) -> PrintJob:
    return await _owned(db, caller, PrintJob, "print_job_id", raw, "Print job")


@router.get("/print_jobs/{print_job_id}", tags=["Print Jobs"], operation_id="readPrintJob")
async def read_print_job(print_job_id: str, db: Db, caller: CallerDep) -> dict[str, Any]:
    return await _job_extended(db, caller, await _job(db, caller, print_job_id))


@router.get("/print_jobs/{print_job_id}/scan_report", tags=["Print Jobs"],
            operation_id="getPrintJobPartScanReport")
async def print_job_scan_reports(print_job_id: str, request: Request, db: Db,
                                 caller: CallerDep) -> list[dict[str, Any]]:
    job = await _job(db, caller, print_job_id)
    return [{"printed_part_id": part.uuid, "scan_report_url": _report_url(request, part)}
            for part in job.printed_parts]


# --- printed parts --------------------------------------------------------------------------------

PRINTED_PARTS = ListSpec(
    filters={
        "state": Filter(PrintedPart.state, Kind.CHOICE, ("eq", "ne"), choices=(
            "Unknown", "Printing", "Print Failed", "Printed", "Washing", "Washed", "Drying", "Dried", "Sintering",
            "Sintered", "Sinter Failed", "Wash Aborted", "Discarded")),
        "notes": Filter(PrintedPart.notes, Kind.TEXT, ("eq", "ne"), max_length=255),
    },
    sorts={"printed_at": PrintedPart.printed_at, "updated_at": PrintedPart.updated_at},
    default_sort="printed_at",
    default_order="desc",
)


async def _printed_part_extended(db: Db, caller: Caller, part: PrintedPart) -> dict[str, Any]:
    job = part.print_job
    return {**printed_part_view(part), "print_job": {
        **print_job_view(job), "build": build_view(job.build, approvals_enabled=caller.approvals_enabled)}}


@router.get("/printed_parts", tags=["Parts"], operation_id="listPrintedParts")
async def list_printed_parts(request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    query = parse_list_query(request.query_params, PRINTED_PARTS)
    page = await fetch_page(db, select(PrintedPart).where(PrintedPart.organization_id == caller.organization_id),
                            query, PrintedPart.id)
    return {"has_more_items": page.has_more_items,
            "items": [await _printed_part_extended(db, caller, part) for part in page.items]}


async def _printed_part(db: Db, caller: Caller, raw: str) -> PrintedPart:
    return await _owned(db, caller, PrintedPart, "printed_part_id", raw, "Printed part")


@router.get("/printed_parts/{printed_part_id}", tags=["Parts"], operation_id="readPrintedPart")
async def read_printed_part(printed_part_id: str, db: Db, caller: CallerDep) -> dict[str, Any]:
    return await _printed_part_extended(db, caller, await _printed_part(db, caller, printed_part_id))


@router.get("/printed_parts/{printed_part_id}/scan_report", tags=["Parts"], operation_id="getPrintedPartScanReport")
async def printed_part_scan_report(printed_part_id: str, request: Request, db: Db, caller: CallerDep) -> \
        dict[str, Any]:
    """The inspection report's URL; asking for it starts its generation when the print is over."""
    part = await _printed_part(db, caller, printed_part_id)
    url = _report_url(request, part)
    if url is None and part.state != PrintedPartState.PRINTING.value:
        await services_of(request).reports.request(part.uuid)
    return {"scan_report_url": url}


@router.get("/files/reports/{report_file}", include_in_schema=False)
async def inspection_report(report_file: str, request: Request, db: Db) -> FileResponse:
    _check_link(request)
    part = (await db.execute(select(PrintedPart).where(PrintedPart.uuid == report_file.removesuffix(".html")))) \
        .unique().scalar_one_or_none()
    if part is None or part.report_path is None or report_path_for(part.uuid) != request.url.path:
        raise not_found("Inspection report")
    return FileResponse(services_of(request).settings.data_dir / part.report_path, media_type="text/html")


__all__ = ["router"]
