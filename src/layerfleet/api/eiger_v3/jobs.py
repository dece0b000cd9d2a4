"""Printing: print to a printer, printer queues, the backlog and job requests, print jobs,
printed parts and their inspection reports."""

from __future__ import annotations

from datetime import date
from typing import get_args

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from layerfleet.accounts.models import Role
from layerfleet.api.deps import AppSettings, Db, Dispatch, Reports, base_url, ensure_role
from layerfleet.api.eiger_v3 import schemas
from layerfleet.api.eiger_v3.common import Caller, CallerDep, EigerRoute, json_body, path_uuid, unknown_ids_are_invalid
from layerfleet.api.eiger_v3.devices import device_by_id, device_context
from layerfleet.api.eiger_v3.errors import EigerError, not_found
from layerfleet.api.eiger_v3.query import DATES, Filter, Kind, ListSpec, parse_list_query, parse_uuid
from layerfleet.api.eiger_v3.schemas import (
    GetPrintedPartScanReportResponse,
    ListDeviceQueueResponse,
    ListPrintedPartsResponse,
    ListPrintJobsResponse,
    PrintedPartViewExtended,
    PrintJobPartScanReport,
    PrintJobView,
    PrintJobViewExtended,
    QueuedPrintJobView,
    QueuedPrintJobViewExtended,
)
from layerfleet.api.eiger_v3.views import (
    device_view_extended,
    print_job_view,
    print_job_view_extended,
    printed_part_view_extended,
    queued_job_view,
    queued_job_view_extended,
)
from layerfleet.config import Settings
from layerfleet.fleet.models import Printer
from layerfleet.library import service as library
from layerfleet.library.models import Build
from layerfleet.scheduling import queries
from layerfleet.scheduling import service as scheduling
from layerfleet.scheduling.models import JobOrigin, JobState, PrintedPart, PrintedPartState, PrintJob, QueuedJob
from layerfleet.scheduling.reports import report_path_for, report_url
from layerfleet.signed_links import link_problem

router = APIRouter(route_class=EigerRoute)


class BuildRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    build: str


class DueDate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dueDate: date | None = None


def _report_url(request: Request, settings: Settings, part: PrintedPart) -> str | None:
    return report_url(part, settings.effective_secret_key, base_url(request))


def _check_link(request: Request, settings: Settings) -> None:
    """A signed link (no credentials): refused unless the signature holds and it has not expired."""
    query = request.query_params
    problem = link_problem(settings.effective_secret_key, request.url.path, query.get("expires", ""),
                           query.get("signature", ""))
    if problem is not None:
        raise EigerError(403, problem)


async def _build_in_body(db: Db, caller: Caller, raw: str) -> Build:
    with unknown_ids_are_invalid():
        return await library.build_by_uuid(db, caller.organization_id, parse_uuid("build", raw))


# --- printing on a device -------------------------------------------------------------------------

@router.post("/devices/{device_id}", status_code=201, tags=["Devices"], operation_id="printToPrinter")
async def print_to_printer(device_id: str, request: Request, db: Db, caller: CallerDep,
                           dispatcher: Dispatch) -> PrintJobView:
    ensure_role(caller.user, Role.OPERATOR)
    printer = await device_by_id(db, caller, device_id)
    body = await json_body(request, BuildRef)
    await scheduling.check_ready(db, printer)  # a busy printer takes no job, whichever it is
    build = await _build_in_body(db, caller, body.build)
    job = await scheduling.print_now(db, caller.user, caller.organization, printer, build)
    await db.commit()
    dispatcher.dispatch(job.id, base_url(request))
    return print_job_view(job)


@router.get("/files/print_jobs/{job_file}", include_in_schema=False)
async def print_job_gcode(job_file: str, request: Request, db: Db, settings: AppSettings) -> FileResponse:
    """The G-code an agent fetches for a job: no credentials, a signed link that expires."""
    _check_link(request, settings)
    job = await scheduling.print_job_by_uuid_any(db, job_file.removesuffix(".gcode"))
    if job is None or job.build.gcode_path is None:
        raise not_found("Print job")
    path = library.library_root(settings.data_dir) / job.build.gcode_path
    return FileResponse(path, media_type="text/x.gcode", filename=job.remote_filename)


# --- queues ---------------------------------------------------------------------------------------

@router.get("/devices/{device_id}/queue", tags=["Devices"], operation_id="listDeviceQueue")
async def list_device_queue(device_id: str, db: Db, caller: CallerDep) -> ListDeviceQueueResponse:
    printer = await device_by_id(db, caller, device_id)
    queues, active = await device_context(db, [printer.id])
    return ListDeviceQueueResponse(
        device=device_view_extended(printer, queue=queues[printer.id], active_job=active.get(printer.id),
                                    approvals_enabled=caller.approvals_enabled),
        queue=[queued_job_view_extended(e, approvals_enabled=caller.approvals_enabled) for e in queues[printer.id]],
    )


@router.post("/devices/{device_id}/queue", status_code=201, tags=["Devices"], operation_id="appendToDeviceQueue")
async def append_to_device_queue(device_id: str, request: Request, db: Db, caller: CallerDep) -> QueuedPrintJobView:
    ensure_role(caller.user, Role.OPERATOR)
    printer = await device_by_id(db, caller, device_id)
    body = await json_body(request, BuildRef)
    build = await _build_in_body(db, caller, body.build)
    entry = await scheduling.append_to_queue(db, printer, build)
    await db.commit()
    return queued_job_view(entry)


async def _queued(db: Db, caller: Caller, device_id: str, queued_job_id: str) -> tuple[Printer, QueuedJob]:
    printer = await device_by_id(db, caller, device_id)
    entry = await scheduling.queued_job_by_uuid(db, printer, path_uuid("queued_job_id", queued_job_id))
    if entry is None:
        raise not_found(f"Queued job {queued_job_id} on this device")
    return printer, entry


@router.get("/devices/{device_id}/queue/{queued_job_id}", tags=["Devices"], operation_id="readDeviceQueue")
async def read_device_queue(device_id: str, queued_job_id: str, db: Db,
                            caller: CallerDep) -> QueuedPrintJobViewExtended:
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
async def start_next_in_queue(device_id: str, request: Request, db: Db, caller: CallerDep,
                              dispatcher: Dispatch) -> PrintJobView:
    """Layerfleet extension: the bed is clear, print the head of the device's queue."""
    ensure_role(caller.user, Role.OPERATOR)
    printer = await device_by_id(db, caller, device_id)
    job = await scheduling.start_next_in_queue(db, caller.user, caller.organization, printer)
    if job is None:
        raise EigerError(409, f"The queue of {printer.name} is empty")
    await db.commit()
    dispatcher.dispatch(job.id, base_url(request))
    return print_job_view(job)


# --- backlog and job requests ---------------------------------------------------------------------

async def _backlog(build_id: str, request: Request, db: Db, caller: Caller, origin: JobOrigin) -> PrintJobView:
    ensure_role(caller.user, Role.OPERATOR)
    build = await library.build_by_uuid(db, caller.organization_id, path_uuid("build_id", build_id))
    raw = await request.body()
    due = (await json_body(request, DueDate)).dueDate if raw.strip() else None
    job = await scheduling.backlog(db, caller.user, caller.organization, build, due=due, origin=origin)
    await db.commit()
    return print_job_view(job)


@router.post("/backlog/{build_id}", status_code=201, tags=["Builds"], operation_id="sendBuildToBacklog")
async def send_build_to_backlog(build_id: str, request: Request, db: Db, caller: CallerDep) -> PrintJobView:
    return await _backlog(build_id, request, db, caller, JobOrigin.BACKLOG)


@router.post("/job-requests/{build_id}", status_code=201, tags=["Builds"], operation_id="sendBuildToJobRequestQueue")
async def send_build_to_job_requests(build_id: str, request: Request, db: Db, caller: CallerDep) -> PrintJobView:
    return await _backlog(build_id, request, db, caller, JobOrigin.JOB_REQUEST)


@router.delete("/job-requests/{build_id}", status_code=204, tags=["Builds"],
               operation_id="removeBuildFromJobRequestQueue")
async def remove_build_from_job_requests(build_id: str, db: Db, caller: CallerDep) -> Response:
    ensure_role(caller.user, Role.OPERATOR)
    # Another organization's build answers 404, as every id of another organization does.
    build = await library.build_by_uuid(db, caller.organization_id, path_uuid("build_id", build_id))
    await scheduling.withdraw_job_requests(db, caller.organization, build)
    await db.commit()
    return Response(status_code=204)


# --- print jobs -----------------------------------------------------------------------------------

PRINT_JOBS = ListSpec(
    filters={
        "state": Filter(Kind.CHOICE, ("eq", "ne"), choices=tuple(s.value for s in JobState)),
        "created_at": Filter(Kind.DATETIME, DATES),
        "started_at": Filter(Kind.DATETIME, DATES),
        "ended_at": Filter(Kind.DATETIME, DATES),
        "updated_at": Filter(Kind.DATETIME, DATES),
        "build": Filter(Kind.UUID, ("eq",)),
        "device": Filter(Kind.UUID, ("eq",), field="printer"),
    },
    sorts=("created_at", "started_at", "updated_at", "ended_at"),
    default_sort="created_at",
    default_order="desc",
)


async def _job_extended(db: Db, caller: Caller, job: PrintJob) -> PrintJobViewExtended:
    printer = await scheduling.printer_of(db, job)
    if printer is None:
        return print_job_view_extended(job, None, queue=[], active_job=None, approvals_enabled=caller.approvals_enabled)
    queues, active = await device_context(db, [printer.id])
    return print_job_view_extended(job, printer, queue=queues[printer.id], active_job=active.get(printer.id),
                                   approvals_enabled=caller.approvals_enabled)


@router.get("/print_jobs", tags=["Print Jobs"], operation_id="listPrintJobs")
async def list_print_jobs(request: Request, db: Db, caller: CallerDep) -> ListPrintJobsResponse:
    page = await queries.print_jobs(db, caller.organization_id, parse_list_query(request.query_params, PRINT_JOBS))
    return ListPrintJobsResponse(has_more_items=page.has_more_items,
                                 items=[await _job_extended(db, caller, job) for job in page.items])


async def _job(db: Db, caller: Caller, raw: str) -> PrintJob:
    job = await scheduling.print_job_by_uuid(db, caller.organization_id, path_uuid("print_job_id", raw))
    if job is None:
        raise not_found(f"Print job {raw}")
    return job


@router.get("/print_jobs/{print_job_id}", tags=["Print Jobs"], operation_id="readPrintJob")
async def read_print_job(print_job_id: str, db: Db, caller: CallerDep) -> PrintJobViewExtended:
    return await _job_extended(db, caller, await _job(db, caller, print_job_id))


@router.get("/print_jobs/{print_job_id}/scan_report", tags=["Print Jobs"],
            operation_id="getPrintJobPartScanReport")
async def print_job_scan_reports(print_job_id: str, request: Request, db: Db, caller: CallerDep,
                                 settings: AppSettings) -> list[PrintJobPartScanReport]:
    job = await _job(db, caller, print_job_id)
    return [PrintJobPartScanReport(printed_part_id=part.uuid, scan_report_url=_report_url(request, settings, part))
            for part in job.printed_parts]


# --- printed parts --------------------------------------------------------------------------------

PRINTED_PARTS = ListSpec(
    filters={
        "state": Filter(Kind.CHOICE, ("eq", "ne"), choices=get_args(schemas.PrintedPartState)),
        "notes": Filter(Kind.TEXT, ("eq", "ne"), max_length=255),
    },
    sorts=("printed_at", "updated_at"),
    default_sort="printed_at",
    default_order="desc",
)


@router.get("/printed_parts", tags=["Parts"], operation_id="listPrintedParts")
async def list_printed_parts(request: Request, db: Db, caller: CallerDep) -> ListPrintedPartsResponse:
    page = await queries.printed_parts(db, caller.organization_id,
                                       parse_list_query(request.query_params, PRINTED_PARTS))
    return ListPrintedPartsResponse(has_more_items=page.has_more_items, items=[
        printed_part_view_extended(part, approvals_enabled=caller.approvals_enabled) for part in page.items])


async def _printed_part(db: Db, caller: Caller, raw: str) -> PrintedPart:
    part = await scheduling.printed_part_by_uuid(db, caller.organization_id, path_uuid("printed_part_id", raw))
    if part is None:
        raise not_found(f"Printed part {raw}")
    return part


@router.get("/printed_parts/{printed_part_id}", tags=["Parts"], operation_id="readPrintedPart")
async def read_printed_part(printed_part_id: str, db: Db, caller: CallerDep) -> PrintedPartViewExtended:
    part = await _printed_part(db, caller, printed_part_id)
    return printed_part_view_extended(part, approvals_enabled=caller.approvals_enabled)


@router.get("/printed_parts/{printed_part_id}/scan_report", tags=["Parts"], operation_id="getPrintedPartScanReport")
async def printed_part_scan_report(printed_part_id: str, request: Request, db: Db, caller: CallerDep,
                                   settings: AppSettings, reports: Reports) -> GetPrintedPartScanReportResponse:
    """The inspection report's URL; asking for it starts its generation when the print is over."""
    part = await _printed_part(db, caller, printed_part_id)
    url = _report_url(request, settings, part)
    if url is None and part.state != PrintedPartState.PRINTING.value:
        await reports.request(part.uuid)
    return GetPrintedPartScanReportResponse(scan_report_url=url)


@router.get("/files/reports/{report_file}", include_in_schema=False)
async def inspection_report(report_file: str, request: Request, db: Db, settings: AppSettings) -> FileResponse:
    _check_link(request, settings)
    part = await scheduling.printed_part_by_uuid_any(db, report_file.removesuffix(".html"))
    if part is None or part.report_path is None or report_path_for(part.uuid) != request.url.path:
        raise not_found("Inspection report")
    return FileResponse(settings.data_dir / part.report_path, media_type="text/html")


__all__ = ["router"]
