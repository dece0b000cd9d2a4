"""The response bodies of the Eiger dialect, named as the seed spec's components/schemas
(../shared/specs/eiger-v3.openapi.yaml) name them; ``…Extended`` views add fields to a view
as the spec's ``allOf`` does.

A field with a default is one the spec lets us leave out: it is sent only when a view sets it
(every v3 route excludes unset fields, see ``common.EigerRoute``): ``active_job`` is absent,
not null, for an idle printer. A nullable field without a default is always sent."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, PlainSerializer, WithJsonSchema

from layerfleet.database import iso_z

Timestamp = Annotated[datetime, PlainSerializer(iso_z, return_type=str),
                      WithJsonSchema({"type": "string", "format": "date-time"})]

PrinterType = Literal["Mark One", "Mark Two", "Onyx One", "Onyx Pro", "X3", "X5", "X7", "Metal X", "FX20"]
DeviceSeries = Literal["Unknown", "Mark One", "Desktop Series", "Industrial Series", "Metal X", "FX20",
                       "Sinter-1", "Sinter-2", "Wash-1"]
PrinterState = Literal[
    "Unknown", "Offline", "Disabled", "Ready", "Printing", "Print Finished", "Canceling", "Print Bed Needs Clearing",
    "Configuration in Progress", "Pausing", "Print Paused", "Resuming Print", "Low on Material", "Out of Material",
    "Purge Strip Removal Needed", "Update in Progress", "Dislocation Error", "Bed Needs Leveling",
    "Incompatible Print File", "Fiber Jam", "Material Jam", "Vacuum Not Engaged", "Print Failure Detected",
    "Update Required On Device", "Custom Branch In Use", "Running Utility", "Utility Finished",
    "User Action Required"]
PrintingState = Literal["Downloading", "Heating", "Printing", "Scanning", "Cooling Down",
                        "Performing Automatic Changeover", "Stabilizing Build Chamber", "Unknown"]
PrintJobState = Literal["Completed", "Canceled", "Failed", "Paused", "Printing", "Backlogged", "Unknown"]
QueuedPrintJobState = Literal["Queued", "Removed", "Started", "Unknown"]
PrintedPartState = Literal["Unknown", "Printing", "Print Failed", "Printed", "Washing", "Washed", "Drying", "Dried",
                           "Sintering", "Sintered", "Sinter Failed", "Wash Aborted", "Discarded"]


# --- parts and builds -----------------------------------------------------------------------------

class PartView(BaseModel):
    id: str
    created_at: Timestamp | None
    updated_at: Timestamp | None
    cloned_from: str | None
    latest_partversion: str | None
    part_versions: list[str]


class Euler(BaseModel):
    x: float
    y: float
    z: float


class PartVersionSettings(BaseModel):
    scale: float
    euler: Euler
    units: str


class PartVersionView(BaseModel):
    id: str
    part_id: str
    title: str
    description: str | None
    version_number: int
    sliced: bool
    device_series: DeviceSeries
    primary_material: str
    secondary_material: str
    settings: PartVersionSettings


class PoseView(BaseModel):
    id: str
    x: int
    y: int
    theta: int


class BuildView(BaseModel):
    id: str
    title: str
    created_at: Timestamp | None
    updated_at: Timestamp | None
    part_count: int
    device_series: DeviceSeries
    primary_material: str
    secondary_material: str
    ccs_primary_required: float | None
    ccs_secondary_required: float | None
    ccs_tertiary_required: float | None
    estimated_print_seconds: float | None
    sliced: bool
    blacksmith_enabled: bool
    approved: bool | None


class BuildViewExtended(BuildView):
    part_versions: list[PartVersionView]
    poses: list[PoseView]


class CreatedBuild(BuildViewExtended):
    """POST /builds (a Layerfleet extension): the build, and the job slicing it (None when the
    build reuses the G-code of its one part version)."""

    slice_job_id: str | None


class SettingsPresetView(BaseModel):
    id: str
    title: str


class UploadStlResponse(BaseModel):
    slice_job_id: str
    part_version_id: str


class SliceStatusResponse(BaseModel):
    status: str
    message: str | None = None  # why the slicer failed, with status ERROR


class ReadSignedURLResponse(BaseModel):
    url: str


# --- print jobs -----------------------------------------------------------------------------------

class PrintJobView(BaseModel):
    id: str
    state: PrintJobState
    queued_at: Timestamp | None
    created_at: Timestamp | None
    started_at: Timestamp | None
    updated_at: Timestamp | None
    ended_at: Timestamp | None


class DeviceStatusView(BaseModel):
    printing_state: PrintingState
    current_layer: int | None
    layer_count: int | None
    progress: float | None
    estimated_seconds_remaining: int | None


class PrintJobViewWithBuild(PrintJobView):
    build: BuildView


class ActiveJobView(PrintJobViewWithBuild, DeviceStatusView):
    """DeviceViewExtended's ``active_job``."""


class QueuedPrintJobView(BaseModel):
    id: str
    state: QueuedPrintJobState
    queued_at: Timestamp | None
    updated_at: Timestamp | None


class QueuedPrintJobViewExtended(QueuedPrintJobView):
    build: BuildView


class PrintedPartView(BaseModel):
    id: str
    state: PrintedPartState | None
    notes: str | None
    printed_at: Timestamp | None
    updated_at: Timestamp | None


class PrintedPartViewExtended(PrintedPartView):
    print_job: PrintJobViewWithBuild


class PrintJobPartScanReport(BaseModel):
    printed_part_id: str
    scan_report_url: str | None


class GetPrintedPartScanReportResponse(BaseModel):
    scan_report_url: str | None


# --- devices --------------------------------------------------------------------------------------

class DeviceView(BaseModel):
    id: str
    name: str
    device_type: Literal["Unknown"] | PrinterType
    device_series: DeviceSeries
    created_at: Timestamp | None
    updated_at: Timestamp | None
    queue_estimated_time_seconds: float | None
    queue_length: int | None
    loaded_primary_material: str | None
    loaded_secondary_material: str | None
    ccs_primary_remaining: float | None
    ccs_secondary_remaining: float | None
    state: PrinterState


class DeviceViewExtended(DeviceView):
    active_job: ActiveJobView | None = None  # sent while a job prints or is paused


class PrintJobViewExtended(PrintJobView):
    # DeviceStatusView: sent while the job is live on its printer.
    printing_state: PrintingState | None = None
    current_layer: int | None = None
    layer_count: int | None = None
    progress: float | None = None
    estimated_seconds_remaining: int | None = None
    build: BuildView
    device: DeviceView | None


class ListDeviceQueueResponse(BaseModel):
    device: DeviceViewExtended
    queue: list[QueuedPrintJobViewExtended]


# --- users ----------------------------------------------------------------------------------------

class UserView(BaseModel):
    id: str | None
    name: str | None
    email: str | None


# --- pages ----------------------------------------------------------------------------------------

class ListBuildsResponse(BaseModel):
    has_more_items: bool
    items: list[BuildView]


ListApprovedBuildsResponse = ListBuildsResponse


class ListDevicesResponse(BaseModel):
    has_more_items: bool
    items: list[DeviceViewExtended]


class ListPrintJobsResponse(BaseModel):
    has_more_items: bool
    items: list[PrintJobViewExtended]


class ListPrintedPartsResponse(BaseModel):
    has_more_items: bool
    items: list[PrintedPartViewExtended]


class ListUsersResponse(BaseModel):
    has_more_items: bool
    items: list[UserView]
