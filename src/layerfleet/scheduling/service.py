"""Scheduling rules: printing a build on a printer, printer queues, the backlog and job
requests, and keeping a job in step with the print its printer's agent reports."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import Organization, User
from layerfleet.database import utcnow
from layerfleet.errors import Conflict
from layerfleet.fleet.actions import is_ready
from layerfleet.fleet.models import Printer
from layerfleet.library.models import Build
from layerfleet.notifications import outbox
from layerfleet.notifications.models import NotificationEvent
from layerfleet.prints.models import Print
from layerfleet.scheduling.models import (
    JobOrigin,
    JobState,
    PrintedPart,
    PrintedPartState,
    PrintJob,
    QueuedJob,
    QueueState,
)

log = logging.getLogger(__name__)

# The agent fetches the G-code within this; a printer that has not started the print after
# DISPATCH_TIMEOUT never will (it refused the command, or the download failed).
GCODE_LINK_SECONDS = 3600
DISPATCH_TIMEOUT = timedelta(seconds=180)
ACTIVE_STATES = (JobState.PRINTING.value, JobState.PAUSED.value)


class ScheduleConflict(Conflict):
    """The request conflicts with the state of the printer or build (HTTP 409); nothing changed."""


# --- G-code links ---------------------------------------------------------------------------------

def gcode_link_path(job: PrintJob) -> str:
    return f"/api/v3/files/print_jobs/{job.uuid}.gcode"


def remote_filename(build: Build, job_uuid: str) -> str:
    """The name the printer stores the G-code under: safe on any host, and unique per job, so
    the print the agent reports can be told apart from any other."""
    slug = re.sub(r"[^a-z0-9]+", "-", build.title.lower()).strip("-")[:40] or "build"
    return f"lf-{slug}-{job_uuid[:8]}.gcode"


# --- checks ---------------------------------------------------------------------------------------

async def active_jobs(session: AsyncSession, printer_ids: Sequence[int]) -> dict[int, PrintJob]:
    """The job printing (or paused) on each of these printers, the newest if several."""
    if not printer_ids:
        return {}
    jobs = (await session.execute(select(PrintJob).where(
        PrintJob.printer_id.in_(printer_ids), PrintJob.state.in_(ACTIVE_STATES),
    ).order_by(PrintJob.id))).unique().scalars()
    return {job.printer_id: job for job in jobs if job.printer_id is not None}  # later ids win


async def active_job(session: AsyncSession, printer: Printer) -> PrintJob | None:
    return (await active_jobs(session, [printer.id])).get(printer.id)


def _check_printable(build: Build, organization: Organization) -> None:
    if not build.sliced:
        raise ScheduleConflict(f"Build {build.uuid} is not sliced yet; wait for its slice job to complete")
    if organization.build_approvals_enabled and not build.approved:
        raise ScheduleConflict(f"Build {build.uuid} is not approved for printing")


async def check_ready(session: AsyncSession, printer: Printer) -> None:
    if printer.status is None:
        raise ScheduleConflict(f"Printer {printer.name} is offline")
    if await active_job(session, printer) is not None or not is_ready(printer):
        raise ScheduleConflict(f"Printer {printer.name} is not ready to print (it is {printer.state_text or 'busy'})")


# --- printing -------------------------------------------------------------------------------------

async def print_build(session: AsyncSession, user: User, organization: Organization, printer: Printer,
                      build: Build, *, origin: JobOrigin = JobOrigin.DIRECT,
                      from_queue: QueuedJob | None = None) -> PrintJob:
    """A job printing ``build`` on ``printer`` (409 unless the printer is ready); the caller
    commits, then has the ``Dispatcher`` send the print command."""
    _check_printable(build, organization)
    await check_ready(session, printer)
    now = utcnow()
    job = PrintJob(organization_id=organization.id, build_id=build.id, printer_id=printer.id, user_id=user.id,
                   origin=origin.value, state=JobState.PRINTING.value, queued_at=now)
    job.build = build
    session.add(job)
    await session.flush()
    job.remote_filename = remote_filename(build, job.uuid)
    if from_queue is not None:
        from_queue.state = QueueState.STARTED.value
        from_queue.print_job_id = job.id
    return job


def dispatch_failed(job: PrintJob, reason: str) -> None:
    job.state = JobState.FAILED.value
    job.dispatch_error = reason[:2000]
    job.ended_at = utcnow()


async def expire_dispatches(session: AsyncSession) -> int:
    """Jobs sent to a printer that never started them: failed, with the reason."""
    cutoff = utcnow() - DISPATCH_TIMEOUT
    stale = list((await session.execute(select(PrintJob).where(
        PrintJob.state == JobState.PRINTING.value, PrintJob.print_id.is_(None), PrintJob.queued_at < cutoff,
    ))).unique().scalars())
    for job in stale:
        dispatch_failed(job, "The printer did not start the print within "
                             f"{int(DISPATCH_TIMEOUT.total_seconds())} s of being sent it")
    return len(stale)


# --- queues ---------------------------------------------------------------------------------------

async def queues_of(session: AsyncSession, printer_ids: Sequence[int]) -> defaultdict[int, list[QueuedJob]]:
    """The waiting entries of these printers' queues, in queue order (every id has a list)."""
    queues: defaultdict[int, list[QueuedJob]] = defaultdict(list)
    if printer_ids:
        for entry in (await session.execute(select(QueuedJob).where(
                QueuedJob.printer_id.in_(printer_ids), QueuedJob.state == QueueState.QUEUED.value,
        ).order_by(QueuedJob.position, QueuedJob.id))).unique().scalars():
            queues[entry.printer_id].append(entry)
    return queues


async def queue_of(session: AsyncSession, printer: Printer) -> list[QueuedJob]:
    return (await queues_of(session, [printer.id]))[printer.id]


async def append_to_queue(session: AsyncSession, printer: Printer, build: Build) -> QueuedJob:
    last = (await session.execute(select(func.max(QueuedJob.position)).where(
        QueuedJob.printer_id == printer.id))).scalar()
    entry = QueuedJob(organization_id=printer.organization_id, printer_id=printer.id, build_id=build.id,
                      position=(last or 0) + 1, state=QueueState.QUEUED.value)
    entry.build = build
    session.add(entry)
    await session.flush()
    return entry


def remove_from_queue(entry: QueuedJob) -> None:
    if entry.state == QueueState.QUEUED.value:
        entry.state = QueueState.REMOVED.value


async def start_next_in_queue(session: AsyncSession, user: User, organization: Organization,
                              printer: Printer) -> PrintJob | None:
    """Print the head of the printer's queue (the operator says the bed is clear)."""
    waiting = await queue_of(session, printer)
    if not waiting:
        return None
    head = waiting[0]
    return await print_build(session, user, organization, printer, head.build, origin=JobOrigin.QUEUE,
                             from_queue=head)


# --- backlog and job requests ---------------------------------------------------------------------

async def backlog(session: AsyncSession, user: User, organization: Organization, build: Build, *,
                  due: date | None, origin: JobOrigin) -> PrintJob:
    job = PrintJob(organization_id=organization.id, build_id=build.id, printer_id=None, user_id=user.id,
                   origin=origin.value, state=JobState.BACKLOGGED.value, due_date=due)
    job.build = build
    session.add(job)
    await session.flush()
    return job


async def withdraw_job_requests(session: AsyncSession, organization: Organization, build: Build) -> int:
    """Remove the build's waiting job requests; how many there were."""
    result = await session.execute(update(PrintJob).where(
        PrintJob.organization_id == organization.id, PrintJob.build_id == build.id,
        PrintJob.origin == JobOrigin.JOB_REQUEST.value, PrintJob.state == JobState.BACKLOGGED.value,
    ).values(state=JobState.CANCELED.value, ended_at=utcnow()).execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)


# --- following the agent's print ------------------------------------------------------------------

async def print_started(session: AsyncSession, printer: Printer, print_: Print) -> None:
    """A print began on ``printer``: if it is the G-code a job sent, the job is now that print."""
    if await _job_of(session, print_) is not None:
        return  # already recognised
    job = (await session.execute(select(PrintJob).where(
        PrintJob.printer_id == printer.id, PrintJob.state == JobState.PRINTING.value,
        PrintJob.print_id.is_(None), PrintJob.remote_filename == _basename(print_.filename),
    ).order_by(PrintJob.id.desc()).limit(1))).unique().scalar_one_or_none()
    if job is None:
        return
    job.print_id = print_.id
    job.started_at = print_.started_at
    for item in job.build.items:
        session.add(PrintedPart(organization_id=job.organization_id, print_job_id=job.id, build_item_id=item.id,
                                state=PrintedPartState.PRINTING.value))


def _basename(filename: str) -> str:
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


async def _job_of(session: AsyncSession, print_: Print) -> PrintJob | None:
    return (await session.execute(select(PrintJob).where(PrintJob.print_id == print_.id))).unique() \
        .scalar_one_or_none()


async def print_paused(session: AsyncSession, print_: Print, paused: bool) -> None:
    job = await _job_of(session, print_)
    if job is not None and not JobState(job.state).ended:
        job.state = (JobState.PAUSED if paused else JobState.PRINTING).value


async def print_ended(session: AsyncSession, print_: Print, *, finished: bool, failed: bool = False) -> None:
    """The print is over: its job completes (or fails, or is canceled) and its parts say so."""
    job = await _job_of(session, print_)
    if job is None or JobState(job.state).ended:
        return
    now = utcnow()
    if finished:
        state, part_state, note = JobState.COMPLETED, PrintedPartState.PRINTED, None
    elif failed or print_.alerted_at is not None or print_.alert_overwrite == "FAILED":
        state, part_state, note = JobState.FAILED, PrintedPartState.PRINT_FAILED, "Print failed"
    else:
        state, part_state, note = JobState.CANCELED, PrintedPartState.PRINT_FAILED, "Print canceled"
    job.state = state.value
    job.ended_at = now
    if state in (JobState.COMPLETED, JobState.FAILED):
        await outbox.record(
            session, organization_id=job.organization_id, printer_id=job.printer_id, print_id=print_.id,
            event=NotificationEvent.PRINT_JOB_COMPLETED if state is JobState.COMPLETED
            else NotificationEvent.PRINT_JOB_FAILED,
            payload={"filename": print_.filename, "build": job.build.title, "job_uuid": job.uuid})
    for part in job.printed_parts:
        part.state = part_state.value
        part.printed_at = now
        if note is not None and part.notes is None:
            part.notes = note


# --- printing now ---------------------------------------------------------------------------------

async def print_now(session: AsyncSession, user: User, organization: Organization, printer: Printer,
                    build: Build) -> PrintJob:
    """``print_build``; a build waiting in the printer's queue is started from there (its entry
    is then done), any other is printed directly."""
    queued = next((entry for entry in await queue_of(session, printer) if entry.build_id == build.id), None)
    return await print_build(session, user, organization, printer, build,
                             origin=JobOrigin.QUEUE if queued else JobOrigin.DIRECT, from_queue=queued)


# --- lookups --------------------------------------------------------------------------------------

async def printer_by_uuid(session: AsyncSession, organization_id: int, printer_uuid: str) -> Printer | None:
    """One of the organization's printers (an archived one is gone)."""
    return (await session.execute(select(Printer).where(
        Printer.uuid == printer_uuid, Printer.organization_id == organization_id,
        Printer.archived_at.is_(None)))).scalar_one_or_none()


async def printer_of(session: AsyncSession, job: PrintJob) -> Printer | None:
    """The printer a job was sent to; None while it waits in the backlog."""
    return await session.get(Printer, job.printer_id) if job.printer_id is not None else None


async def queued_job_by_uuid(session: AsyncSession, printer: Printer, entry_uuid: str) -> QueuedJob | None:
    """An entry of this printer's queue, in whatever state."""
    return (await session.execute(select(QueuedJob).where(
        QueuedJob.uuid == entry_uuid, QueuedJob.printer_id == printer.id,
    ))).unique().scalar_one_or_none()


async def print_job_by_uuid(session: AsyncSession, organization_id: int, job_uuid: str) -> PrintJob | None:
    return (await session.execute(select(PrintJob).where(
        PrintJob.uuid == job_uuid, PrintJob.organization_id == organization_id,
    ))).unique().scalar_one_or_none()


async def printed_part_by_uuid(session: AsyncSession, organization_id: int, part_uuid: str) -> PrintedPart | None:
    return (await session.execute(select(PrintedPart).where(
        PrintedPart.uuid == part_uuid, PrintedPart.organization_id == organization_id,
    ))).unique().scalar_one_or_none()


async def print_job_by_uuid_any(session: AsyncSession, job_uuid: str) -> PrintJob | None:
    """For a signed G-code link, which stands in for the organization's credentials."""
    return (await session.execute(select(PrintJob).where(PrintJob.uuid == job_uuid))).unique().scalar_one_or_none()


async def printed_part_by_uuid_any(session: AsyncSession, part_uuid: str) -> PrintedPart | None:
    """For a signed report link, which stands in for the organization's credentials."""
    return (await session.execute(select(PrintedPart).where(PrintedPart.uuid == part_uuid))).unique() \
        .scalar_one_or_none()
