"""Builds: list, read, approvals, and (a Layerfleet extension, since the spec has no way to
make one) POST /builds to place part versions on a plate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from layerfleet.accounts.models import Role
from layerfleet.api.deps import AppSettings, Db, SliceQueue, ensure_role
from layerfleet.api.eiger_v3.common import CallerDep, EigerRoute, json_body, path_uuid
from layerfleet.api.eiger_v3.query import COMPARISONS, DATES, Filter, Kind, ListSpec, parse_list_query, parse_uuid
from layerfleet.api.eiger_v3.schemas import BuildViewExtended, CreatedBuild, ListBuildsResponse
from layerfleet.api.eiger_v3.views import build_view, build_view_extended, created_build_view
from layerfleet.library import service as library
from layerfleet.scheduling import queries

router = APIRouter(tags=["Builds"], route_class=EigerRoute)

BUILDS = ListSpec(
    filters={
        "title": Filter(Kind.TEXT, ("eq",)),
        "created_at": Filter(Kind.DATETIME, DATES),
        "updated_at": Filter(Kind.DATETIME, DATES),
        "part_count": Filter(Kind.INTEGER, COMPARISONS, minimum=1),
        "sliced": Filter(Kind.BOOLEAN, ("eq",)),
        "blacksmith_enabled": Filter(Kind.BOOLEAN, ("eq",)),
        "approved": Filter(Kind.BOOLEAN, ("eq", "ne"), nullable=True),
    },
    sorts=("created_at", "title"),
    default_sort="created_at",
    default_order="asc",
)


@router.get("/builds", operation_id="listBuilds")
async def list_builds(request: Request, db: Db, caller: CallerDep) -> ListBuildsResponse:
    page = await queries.builds(db, caller.organization, parse_list_query(request.query_params, BUILDS))
    return ListBuildsResponse(has_more_items=page.has_more_items,
                              items=[build_view(b, approvals_enabled=caller.approvals_enabled) for b in page.items])


APPROVED_PAGES = ListSpec(filters={}, sorts=(), default_sort="", default_order="asc")


@router.get("/builds/approved", operation_id="listApprovedBuilds", response_model=ListBuildsResponse,
            responses={204: {"description": "disabled"}})
async def list_approved_builds(request: Request, db: Db, caller: CallerDep) -> ListBuildsResponse | Response:
    criteria = parse_list_query(request.query_params, APPROVED_PAGES)
    if not caller.approvals_enabled:
        return Response(status_code=204)
    page = await queries.approved_builds(db, caller.organization, criteria)
    return ListBuildsResponse(has_more_items=page.has_more_items,
                              items=[build_view(b, approvals_enabled=True) for b in page.items])


class ApproveBuilds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    builds: Annotated[list[str], Field(max_length=10_000)]


@router.put("/builds/approved", status_code=204, operation_id="approveBuilds")
async def approve_builds(request: Request, db: Db, caller: CallerDep) -> Response:
    ensure_role(caller.user, Role.ADMIN)
    body = await json_body(request, ApproveBuilds)
    await library.approve_only(db, caller.organization, {parse_uuid("builds[]", raw) for raw in body.builds})
    await db.commit()
    return Response(status_code=204)


@router.delete("/builds/approved", status_code=204, operation_id="disableApprovedBuilds")
async def disable_build_approvals(db: Db, caller: CallerDep) -> Response:
    ensure_role(caller.user, Role.ADMIN)
    await library.disable_approvals(db, caller.organization)
    await db.commit()
    return Response(status_code=204)


@router.get("/builds/{build_id}", operation_id="readBuild")
async def read_build(build_id: str, db: Db, caller: CallerDep) -> BuildViewExtended:
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
async def create_build(request: Request, db: Db, caller: CallerDep, settings: AppSettings,
                       slice_jobs: SliceQueue) -> CreatedBuild:
    """Layerfleet extension: a build of part versions at poses, sliced together for one plate."""
    ensure_role(caller.user, Role.OPERATOR)
    body = await json_body(request, CreateBuild)
    preset_uuid = parse_uuid("settingsPresetId", body.settingsPresetId) if body.settingsPresetId else None
    preset = await library.preset_by_uuid(db, caller.organization_id, preset_uuid)
    placements = []
    for item in body.part_versions:
        version = await library.part_version_by_uuid(
            db, caller.organization_id, parse_uuid("part_versions[].part_version", item.part_version))
        placements.append(library.Placement(version, item.x, item.y, item.theta))
    created = await library.create_build(db, caller.user, body.title, placements, preset, settings.data_dir)
    await db.commit()
    if created.job is not None:
        await slice_jobs.submit(created.job.uuid)
    build = await library.build_by_uuid(db, caller.organization_id, created.build.uuid)
    return created_build_view(build, created.job.uuid if created.job is not None else None,
                              approvals_enabled=caller.approvals_enabled)
