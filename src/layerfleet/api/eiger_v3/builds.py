"""Builds: list, read, approvals, and (a Layerfleet extension, since the spec has no way to
make one) POST /builds to place part versions on a plate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, false, select, true, update

from layerfleet.accounts.models import Role
from layerfleet.api.deps import Db, ensure_role, services_of
from layerfleet.api.eiger_v3.common import Caller, CallerDep, domain_errors, json_body, path_uuid
from layerfleet.api.eiger_v3.errors import EigerError
from layerfleet.api.eiger_v3.query import (
    COMPARISONS,
    Filter,
    Kind,
    ListSpec,
    fetch_page,
    parse_list_query,
    parse_uuid,
)
from layerfleet.api.eiger_v3.views import build_view, build_view_extended
from layerfleet.library import service as library
from layerfleet.library.models import Build

router = APIRouter(tags=["Builds"])

DATES = tuple(op for op in COMPARISONS if op not in ("eq", "ne"))


def _approved(caller: Caller) -> Any:
    def condition(op: str, value: bool | None) -> ColumnElement[bool]:
        # With approvals off, every build counts as approved.
        effective: Any = Build.approved if caller.approvals_enabled else true()
        if value is None:
            return false() if op == "eq" else true()
        return (effective == value) if op == "eq" else (effective != value)
    return condition


def _sliced(_op: str, value: bool | None) -> ColumnElement[bool]:
    return Build.gcode_path.is_not(None) if value else Build.gcode_path.is_(None)


def _build_list(caller: Caller) -> ListSpec:
    return ListSpec(
        filters={
            "title": Filter(Build.title, Kind.TEXT, ("eq",)),
            "created_at": Filter(Build.created_at, Kind.DATETIME, DATES),
            "updated_at": Filter(Build.updated_at, Kind.DATETIME, DATES),
            "part_count": Filter(Build.part_count, Kind.INTEGER, COMPARISONS, minimum=1),
            "sliced": Filter(Build.gcode_path, Kind.BOOLEAN, ("eq",), condition=_sliced),
            "blacksmith_enabled": Filter(Build.blacksmith_enabled, Kind.BOOLEAN, ("eq",)),
            "approved": Filter(Build.approved, Kind.BOOLEAN, ("eq", "ne"), nullable=True,
                               condition=_approved(caller)),
        },
        sorts={"created_at": Build.created_at, "title": Build.title},
        default_sort="created_at",
        default_order="asc",
    )


@router.get("/builds", operation_id="listBuilds")
async def list_builds(request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    query = parse_list_query(request.query_params, _build_list(caller))
    page = await fetch_page(db, select(Build).where(Build.organization_id == caller.organization_id), query, Build.id)
    return {"has_more_items": page.has_more_items,
            "items": [build_view(b, approvals_enabled=caller.approvals_enabled) for b in page.items]}


APPROVED_PAGES = ListSpec(filters={}, sorts={}, default_sort="", default_order="asc")


@router.get("/builds/approved", operation_id="listApprovedBuilds", responses={204: {"description": "disabled"}})
async def list_approved_builds(request: Request, db: Db, caller: CallerDep) -> Any:
    query = parse_list_query(request.query_params, APPROVED_PAGES)
    if not caller.approvals_enabled:
        return Response(status_code=204)
    query.order_by = [Build.created_at.desc()]
    page = await fetch_page(db, select(Build).where(
        Build.organization_id == caller.organization_id, Build.approved.is_(True)), query, Build.id)
    return {"has_more_items": page.has_more_items,
            "items": [build_view(b, approvals_enabled=True) for b in page.items]}


class ApproveBuilds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    builds: Annotated[list[str], Field(max_length=10_000)]


@router.put("/builds/approved", status_code=204, operation_id="approveBuilds")
async def approve_builds(request: Request, db: Db, caller: CallerDep) -> Response:
    ensure_role(caller.user, Role.ADMIN)
    body = await json_body(request, ApproveBuilds)
    wanted = {parse_uuid("builds[]", raw) for raw in body.builds}
    found = set((await db.execute(select(Build.uuid).where(
        Build.organization_id == caller.organization_id, Build.uuid.in_(wanted)))).scalars()) if wanted else set()
    missing = wanted - found
    if missing:
        raise EigerError(404, f"Build not found: {', '.join(sorted(missing)[:5])}")
    # Approve these, unapprove all others, and switch approvals on — one transaction.
    await db.execute(update(Build).where(Build.organization_id == caller.organization_id)
                     .values(approved=Build.uuid.in_(wanted) if wanted else False)
                     .execution_options(synchronize_session=False))
    caller.organization.build_approvals_enabled = True
    await db.commit()
    return Response(status_code=204)


@router.delete("/builds/approved", status_code=204, operation_id="disableApprovedBuilds")
async def disable_build_approvals(db: Db, caller: CallerDep) -> Response:
    ensure_role(caller.user, Role.ADMIN)
    await db.execute(update(Build).where(Build.organization_id == caller.organization_id).values(approved=False)
                     .execution_options(synchronize_session=False))
    caller.organization.build_approvals_enabled = False
    await db.commit()
    return Response(status_code=204)


@router.get("/builds/{build_id}", operation_id="readBuild")
async def read_build(build_id: str, db: Db, caller: CallerDep) -> dict[str, Any]:
    with domain_errors():
        build = await library.build_by_uuid(db, caller.organization_id, path_uuid("build_id", build_id))
    return build_view_extended(build, approvals_enabled=caller.approvals_enabled)


class PlacementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    part_version: str = Field(description="Part version ID (UUID)")
    x: int = Field(default=0, description="mm from the bed's centre")
    y: int = Field(default=0)
    theta: int = Field(default=0, description="rotation about Z, degrees")


class CreateBuild(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    part_versions: Annotated[list[PlacementIn], Field(min_length=1, max_length=100)]
    settingsPresetId: str | None = None


@router.post("/builds", status_code=201, operation_id="createBuild")
async def create_build(request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    """Layerfleet extension: a build of part versions at poses, sliced together for one plate."""
    ensure_role(caller.user, Role.OPERATOR)
    body = await json_body(request, CreateBuild)
    with domain_errors():
        preset = await library.preset_by_uuid(
            db, caller.organization_id,
            parse_uuid("settingsPresetId", body.settingsPresetId) if body.settingsPresetId else None)
        placements = []
        for item in body.part_versions:
            version = await library.part_version_by_uuid(
                db, caller.organization_id, parse_uuid("part_versions[].part_version", item.part_version))
            placements.append(library.Placement(version, item.x, item.y, item.theta))
        created = await library.create_build(db, caller.user, body.title, placements, preset,
                                             services_of(request).settings.data_dir)
        await db.commit()
    if created.job is not None:
        await services_of(request).slice_jobs.submit(created.job.uuid)
    build = await library.build_by_uuid(db, caller.organization_id, created.build.uuid)
    view = build_view_extended(build, approvals_enabled=caller.approvals_enabled)
    view["slice_job_id"] = created.job.uuid if created.job is not None else None
    return view
