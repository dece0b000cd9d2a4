"""Domain objects as the Eiger spec's views (BuildView, DeviceView, …; see ``schemas``).

Translation only: what a printer's live status means in the spec's enumerations is decided
here, from the status the agent reported; nothing is stored in Eiger terms.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from layerfleet.accounts.models import User
from layerfleet.api.eiger_v3 import schemas
from layerfleet.fleet.models import FleetState, Printer, fleet_state, job_progress
from layerfleet.library.models import Build, Part, PartVersion, SettingsPreset
from layerfleet.scheduling.models import JobState, PrintedPart, PrintJob, QueuedJob

PRINTER_TYPES = ("Mark One", "Mark Two", "Onyx One", "Onyx Pro", "X3", "X5", "X7", "Metal X", "FX20")
DEVICE_SERIES = ("Unknown", "Mark One", "Desktop Series", "Industrial Series", "Metal X", "FX20",
                 "Sinter-1", "Sinter-2", "Wash-1")


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _set_fields(view: BaseModel) -> dict[str, Any]:
    """The fields a view has set, to extend it into a wider view (unset ones stay unset)."""
    return {name: getattr(view, name) for name in view.model_fields_set}


def build_view(build: Build, *, approvals_enabled: bool) -> schemas.BuildView:
    return schemas.BuildView(
        id=build.uuid,
        title=build.title,
        created_at=build.created_at,
        updated_at=build.updated_at,
        part_count=build.part_count,
        device_series="Unknown",
        primary_material=build.settings_preset.material,
        secondary_material="",
        ccs_primary_required=_rounded(build.filament_cm3),
        ccs_secondary_required=None,
        ccs_tertiary_required=None,
        estimated_print_seconds=build.estimated_print_seconds,
        sliced=build.sliced,
        blacksmith_enabled=build.blacksmith_enabled,
        # With approvals off every build may be printed: "default (approved)" in the spec's words.
        approved=build.approved if approvals_enabled else True,
    )


def build_view_extended(build: Build, *, approvals_enabled: bool) -> schemas.BuildViewExtended:
    versions: dict[int, PartVersion] = {}
    for item in build.items:
        versions.setdefault(item.part_version.id, item.part_version)
    return schemas.BuildViewExtended(
        **_set_fields(build_view(build, approvals_enabled=approvals_enabled)),
        part_versions=[part_version_view(v) for v in versions.values()],
        poses=[schemas.PoseView(id=item.uuid, x=item.x, y=item.y, theta=item.theta) for item in build.items],
    )


def created_build_view(build: Build, slice_job_uuid: str | None, *, approvals_enabled: bool) -> schemas.CreatedBuild:
    return schemas.CreatedBuild(**_set_fields(build_view_extended(build, approvals_enabled=approvals_enabled)),
                                slice_job_id=slice_job_uuid)


def part_view(part: Part) -> schemas.PartView:
    latest = part.versions[-1] if part.versions else None
    return schemas.PartView(
        id=part.uuid,
        created_at=part.created_at,
        updated_at=part.updated_at,
        cloned_from=part.cloned_from.uuid if part.cloned_from is not None else None,
        latest_partversion=latest.uuid if latest is not None else None,
        part_versions=[v.uuid for v in part.versions],
    )


def part_version_view(version: PartVersion) -> schemas.PartVersionView:
    settings = version.settings or {}
    euler = settings.get("euler") or {}
    return schemas.PartVersionView(
        id=version.uuid,
        part_id=version.part.uuid,
        title=version.title,
        description=version.description,
        version_number=version.version_number,
        sliced=version.sliced,
        device_series="Unknown",
        primary_material=version.settings_preset.material,
        secondary_material="",
        settings=schemas.PartVersionSettings(
            scale=float(settings.get("scale", 1.0)),
            euler=schemas.Euler(x=float(euler.get("x", 0.0)), y=float(euler.get("y", 0.0)),
                                z=float(euler.get("z", 0.0))),
            units=str(settings.get("units", "mm")),
        ),
    )


def settings_preset_view(preset: SettingsPreset) -> schemas.SettingsPresetView:
    return schemas.SettingsPresetView(id=preset.uuid, title=preset.title)


# --- devices ------------------------------------------------------------------------------------

def printer_state(printer: Printer, active_job: PrintJob | None = None) -> str:
    """The spec's PrinterStateEnum from the agent's live status."""
    status = printer.status
    if status is None:
        return "Offline"
    flags = printer.state_flags
    text = printer.state_text
    current = printer.current_print
    if flags.get("error") or (flags.get("closedOrError") and flags.get("operational") is not False):
        return "User Action Required"
    if flags.get("closedOrError") or text.lower().startswith("offline"):
        return "Offline"
    if flags.get("cancelling"):
        return "Canceling"
    if flags.get("pausing"):
        return "Pausing"
    if flags.get("resuming"):
        return "Resuming Print"
    if flags.get("paused"):
        alerted = current is not None and current.alerted_at is not None and current.alert_acknowledged_at is None
        return "Print Failure Detected" if alerted else "Print Paused"
    if flags.get("printing") or flags.get("finishing"):
        return "Printing"
    if active_job is not None and active_job.state == JobState.COMPLETED.value:
        return "Print Finished"
    if flags.get("operational") or flags.get("ready"):
        return "Ready"
    return "Unknown"


def printing_state(printer: Printer) -> str:
    """The spec's PrintingStateEnum while a job runs."""
    lowered = printer.state_text.lower()
    # The pages' rule (fleet.models.still_heating) too, so the API and the pages agree.
    if "heat" in lowered or fleet_state(printer.status) is FleetState.HEATING:
        return "Heating"
    if "cool" in lowered:
        return "Cooling Down"
    if printer.state_flags.get("printing") or printer.state_flags.get("finishing"):
        return "Printing"
    return "Unknown"


def device_status(printer: Printer, job: PrintJob) -> schemas.DeviceStatusView:
    """DeviceStatusView for the printer's active job, from its live status."""
    status = printer.status or {}
    progress = job_progress(status)
    layer = status.get("layer") if isinstance(status.get("layer"), dict) else {}
    current_layer = layer.get("current") if isinstance(layer, dict) else None
    layer_count = layer.get("total") if isinstance(layer, dict) else None
    return schemas.DeviceStatusView(
        printing_state=printing_state(printer) if printer.status is not None else "Unknown",
        current_layer=current_layer if isinstance(current_layer, int) and current_layer >= 1 else None,
        layer_count=(layer_count if isinstance(layer_count, int) and layer_count >= 1
                     else job.build.layer_count if job.build.layer_count else None),
        progress=progress.completion,
        estimated_seconds_remaining=progress.seconds_left,
    )


def device_view(printer: Printer, *, queue: list[QueuedJob], active_job: PrintJob | None) -> schemas.DeviceView:
    waiting = [entry for entry in queue if entry.state == "Queued"]
    estimate = sum(entry.build.estimated_print_seconds or 0.0 for entry in waiting)
    return schemas.DeviceView(
        id=printer.uuid,
        name=printer.name,
        device_type=printer.device_type if printer.device_type in PRINTER_TYPES else "Unknown",
        device_series=printer.device_series if printer.device_series in DEVICE_SERIES else "Unknown",
        created_at=printer.created_at,
        updated_at=printer.updated_at,
        queue_estimated_time_seconds=float(estimate),
        queue_length=len(waiting),
        loaded_primary_material=printer.loaded_primary_material,
        loaded_secondary_material=printer.loaded_secondary_material,
        ccs_primary_remaining=printer.ccs_primary_remaining,
        ccs_secondary_remaining=printer.ccs_secondary_remaining,
        state=printer_state(printer, active_job),
    )


def device_view_extended(printer: Printer, *, queue: list[QueuedJob], active_job: PrintJob | None,
                         approvals_enabled: bool) -> schemas.DeviceViewExtended:
    optional = {}
    if active_job is not None and not JobState(active_job.state).ended:
        optional["active_job"] = schemas.ActiveJobView(
            **_set_fields(print_job_view(active_job)),
            **_set_fields(device_status(printer, active_job)),
            build=build_view(active_job.build, approvals_enabled=approvals_enabled),
        )
    return schemas.DeviceViewExtended(**_set_fields(device_view(printer, queue=queue, active_job=active_job)),
                                      **optional)


# --- jobs and printed parts ---------------------------------------------------------------------

def print_job_view(job: PrintJob) -> schemas.PrintJobView:
    return schemas.PrintJobView(id=job.uuid, state=job.state, queued_at=job.queued_at, created_at=job.created_at,
                                started_at=job.started_at, updated_at=job.updated_at, ended_at=job.ended_at)


def print_job_view_extended(job: PrintJob, printer: Printer | None, *, queue: list[QueuedJob],
                            active_job: PrintJob | None, approvals_enabled: bool) -> schemas.PrintJobViewExtended:
    """``printer``: the job's, with its ``queue`` and ``active_job``; None for a backlogged job."""
    live = not JobState(job.state).ended and job.state != JobState.BACKLOGGED.value
    status = _set_fields(device_status(printer, job)) if printer is not None and live else {}
    return schemas.PrintJobViewExtended(
        **_set_fields(print_job_view(job)), **status,
        build=build_view(job.build, approvals_enabled=approvals_enabled),
        device=device_view(printer, queue=queue, active_job=active_job) if printer is not None else None)


def print_job_view_with_build(job: PrintJob, *, approvals_enabled: bool) -> schemas.PrintJobViewWithBuild:
    return schemas.PrintJobViewWithBuild(**_set_fields(print_job_view(job)),
                                         build=build_view(job.build, approvals_enabled=approvals_enabled))


def queued_job_view(entry: QueuedJob) -> schemas.QueuedPrintJobView:
    return schemas.QueuedPrintJobView(id=entry.uuid, state=entry.state, queued_at=entry.queued_at,
                                      updated_at=entry.updated_at)


def queued_job_view_extended(entry: QueuedJob, *, approvals_enabled: bool) -> schemas.QueuedPrintJobViewExtended:
    return schemas.QueuedPrintJobViewExtended(**_set_fields(queued_job_view(entry)),
                                              build=build_view(entry.build, approvals_enabled=approvals_enabled))


def printed_part_view(part: PrintedPart) -> schemas.PrintedPartView:
    return schemas.PrintedPartView(id=part.uuid, state=part.state, notes=part.notes, printed_at=part.printed_at,
                                   updated_at=part.updated_at)


def printed_part_view_extended(part: PrintedPart, *, approvals_enabled: bool) -> schemas.PrintedPartViewExtended:
    return schemas.PrintedPartViewExtended(
        **_set_fields(printed_part_view(part)),
        print_job=print_job_view_with_build(part.print_job, approvals_enabled=approvals_enabled))


def user_view(user: User) -> schemas.UserView:
    return schemas.UserView(id=user.uuid, name=user.name, email=user.email)
