"""Devices: the organization's printers, in the spec's DeviceView shapes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import Role
from layerfleet.api.deps import Db, ensure_role
from layerfleet.api.eiger_v3.common import Caller, CallerDep, EigerRoute, json_body, path_uuid
from layerfleet.api.eiger_v3.errors import not_found
from layerfleet.api.eiger_v3.query import DATES, Filter, Kind, ListSpec, parse_list_query
from layerfleet.api.eiger_v3.schemas import DeviceViewExtended, ListDevicesResponse
from layerfleet.api.eiger_v3.views import DEVICE_SERIES, PRINTER_TYPES, device_view_extended
from layerfleet.fleet import service as fleet
from layerfleet.fleet.models import Printer
from layerfleet.scheduling import queries
from layerfleet.scheduling import service as scheduling
from layerfleet.scheduling.models import PrintJob, QueuedJob

router = APIRouter(tags=["Devices"], route_class=EigerRoute)

DEVICES = ListSpec(
    filters={
        "name": Filter(Kind.TEXT, ("eq",)),
        "created_at": Filter(Kind.DATETIME, DATES),
        "updated_at": Filter(Kind.DATETIME, DATES),
    },
    sorts=("name", "created_at", "updated_at"),
    default_sort="name",
    default_order="asc",
)


async def device_context(db: AsyncSession, printer_ids: list[int]) -> tuple[
        dict[int, list[QueuedJob]], dict[int, PrintJob]]:
    """The queues and the active job of these printers, in two queries."""
    return await scheduling.queues_of(db, printer_ids), await scheduling.active_jobs(db, printer_ids)


async def device_by_id(db: AsyncSession, caller: Caller, device_id: str) -> Printer:
    """The printer path parameter ``device_id`` names."""
    device_uuid = path_uuid("device_id", device_id)
    printer = await scheduling.printer_by_uuid(db, caller.organization_id, device_uuid)
    if printer is None:
        raise not_found(f"Device {device_uuid}")
    return printer


@router.get("/devices", operation_id="listDevices")
async def list_devices(request: Request, db: Db, caller: CallerDep) -> ListDevicesResponse:
    page = await queries.printers(db, caller.organization_id, parse_list_query(request.query_params, DEVICES))
    queues, active = await device_context(db, [p.id for p in page.items])
    return ListDevicesResponse(has_more_items=page.has_more_items, items=[
        device_view_extended(p, queue=queues[p.id], active_job=active.get(p.id),
                             approvals_enabled=caller.approvals_enabled) for p in page.items])


@router.get("/devices/{device_id}", operation_id="readDevice")
async def read_device(device_id: str, db: Db, caller: CallerDep) -> DeviceViewExtended:
    printer = await device_by_id(db, caller, device_id)
    queues, active = await device_context(db, [printer.id])
    return device_view_extended(printer, queue=queues[printer.id], active_job=active.get(printer.id),
                                approvals_enabled=caller.approvals_enabled)


class DeviceChanges(BaseModel):
    """What the farm knows about a machine that its agent cannot tell (a Layerfleet extension)."""

    model_config = ConfigDict(extra="forbid")

    device_type: str | None = None
    device_series: str | None = None
    loaded_primary_material: str | None = Field(default=None, max_length=64)
    loaded_secondary_material: str | None = Field(default=None, max_length=64)
    ccs_primary_remaining: float | None = Field(default=None, ge=0, le=1e7)
    ccs_secondary_remaining: float | None = Field(default=None, ge=0, le=1e7)

    @field_validator("device_type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value not in ("Unknown", *PRINTER_TYPES):
            raise ValueError(f"must be one of Unknown, {', '.join(PRINTER_TYPES)}")
        return value

    @field_validator("device_series")
    @classmethod
    def _known_series(cls, value: str | None) -> str | None:
        if value is not None and value not in DEVICE_SERIES:
            raise ValueError(f"must be one of {', '.join(DEVICE_SERIES)}")
        return value


@router.patch("/devices/{device_id}", operation_id="updateDevice")
async def update_device(device_id: str, request: Request, db: Db, caller: CallerDep) -> DeviceViewExtended:
    """Set the device type and series, and the materials loaded (with what is left of them)."""
    ensure_role(caller.user, Role.OPERATOR)
    printer = await device_by_id(db, caller, device_id)
    changes = await json_body(request, DeviceChanges)
    fleet.apply_machine_facts(printer, changes.model_dump(include=changes.model_fields_set))
    await db.commit()
    return await read_device(device_id, db, caller)
