"""Parts: STL upload (sliced by a queued job), slice status, settings presets, part and part
version reads, and 30-second signed download URLs for a version's STL."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from layerfleet.accounts.models import Role, User
from layerfleet.api.deps import AppSettings, Db, SliceQueue, base_url, ensure_role
from layerfleet.api.eiger_v3.common import Caller, CallerDep, EigerRoute, json_body, path_uuid, unknown_ids_are_invalid
from layerfleet.api.eiger_v3.errors import EigerError, bad_request
from layerfleet.api.eiger_v3.query import parse_uuid
from layerfleet.api.eiger_v3.schemas import (
    PartVersionView,
    PartView,
    ReadSignedURLResponse,
    SettingsPresetView,
    SliceStatusResponse,
    UploadStlResponse,
)
from layerfleet.api.eiger_v3.views import part_version_view, part_view, settings_preset_view
from layerfleet.library import service as library
from layerfleet.library.models import SliceStatus
from layerfleet.signed_links import link_problem, signed_link
from layerfleet.slicer import DEFAULT_MAX_BYTES

router = APIRouter(tags=["Parts"], route_class=EigerRoute)

DOWNLOAD_SECONDS = 30
CHUNK = 1024 * 1024
# Multipart framing around the file: a request larger than the file limit plus this is refused
# before a byte of it is read.
FORM_OVERHEAD = 64 * 1024


@router.post("/parts/upload_stl", status_code=201, operation_id="uploadStl")
async def upload_stl(request: Request, db: Db, caller: CallerDep, settings: AppSettings,
                     slice_jobs: SliceQueue) -> UploadStlResponse:
    ensure_role(caller.user, Role.OPERATOR)  # an upload starts a slice: a change, as in v1
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > DEFAULT_MAX_BYTES + FORM_OVERHEAD:
        raise bad_request(f"The STL file is larger than {DEFAULT_MAX_BYTES // (1024 * 1024)} MB; "
                          "split or simplify the model.")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("Send the STL as multipart/form-data with the file in the field stlFile")
    try:
        form = await request.form(max_files=1, max_fields=10)
    except HTTPException:
        raise  # the body's cap (413), refused while the form streamed in
    except Exception as exc:  # Starlette raises its own for malformed or oversized forms
        raise bad_request(f"The form could not be read: {exc}") from None
    try:
        stl = form.get("stlFile")
        if not isinstance(stl, UploadFile):
            raise bad_request("stlFile is required: the STL file as a form file field")
        folder = _optional_uuid(form.get("folderId"), "folderId")
        preset_id = _optional_uuid(form.get("settingsPresetId"), "settingsPresetId")
        owner_id = _optional_uuid(form.get("userId"), "userId")
        with unknown_ids_are_invalid():
            preset = await library.preset_by_uuid(db, caller.organization_id, preset_id)
            owner = await _owner(db, caller, owner_id)
            upload = await library.receive_stl(_chunks(stl), stl.filename or "part.stl", settings.data_dir)
            try:
                created = await library.create_part(db, upload, owner=owner, preset=preset, folder_uuid=folder,
                                                    data_dir=settings.data_dir)
                await db.commit()
            except BaseException:
                await db.rollback()
                upload.discard()
                raise
    finally:
        await form.close()
    await slice_jobs.submit(created.job.uuid)
    return UploadStlResponse(slice_job_id=created.job.uuid, part_version_id=created.version.uuid)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


def _optional_uuid(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a UUID in a text field")
    return parse_uuid(name, value)


async def _owner(db: Db, caller: Caller, owner_uuid: str | None) -> User:
    owner = await library.part_owner(db, caller.user, owner_uuid)
    if owner is None:
        raise bad_request(f"userId {owner_uuid} is not a member of your organization")
    return owner


@router.get("/parts/slice_status/{slice_job_id}", operation_id="getSliceStatus")
async def slice_status(slice_job_id: str, db: Db, caller: CallerDep) -> SliceStatusResponse:
    job = await library.slice_job_by_uuid(db, caller.organization_id, path_uuid("slice_job_id", slice_job_id))
    if job.status == SliceStatus.ERROR.value and job.error:
        return SliceStatusResponse(status=job.status, message=job.error)
    return SliceStatusResponse(status=job.status)


@router.post("/parts/slice_status/{slice_job_id}/cancel", operation_id="cancelSliceJob")
async def cancel_slice(slice_job_id: str, db: Db, caller: CallerDep) -> SliceStatusResponse:
    """Layerfleet extension: stop a slice job (a running slicer is killed within a second)."""
    ensure_role(caller.user, Role.OPERATOR)
    job = await library.slice_job_by_uuid(db, caller.organization_id, path_uuid("slice_job_id", slice_job_id))
    if not await library.cancel_slice_job(db, job):
        raise EigerError(409, f"The slice job is already {job.status}")
    await db.commit()
    return SliceStatusResponse(status=job.status)


class NewPreset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(max_length=200)
    ini: str = Field(max_length=1_000_000, description="A PrusaSlicer profile, as PrusaSlicer exports it")
    material: str = Field(default="PLA", max_length=64)


@router.post("/parts/settings_presets", status_code=201, operation_id="createSettingsPreset")
async def create_settings_preset(request: Request, db: Db, caller: CallerDep) -> SettingsPresetView:
    """Layerfleet extension: an organization's own slicer profile (``.ini``)."""
    ensure_role(caller.user, Role.ADMIN)
    body = await json_body(request, NewPreset)
    preset = await library.create_preset(db, caller.organization_id, body.title, body.ini, body.material)
    await db.commit()
    return settings_preset_view(preset)


@router.get("/parts/settings_presets", operation_id="getOrgSettingsPresets")
async def settings_presets(db: Db, caller: CallerDep) -> list[SettingsPresetView]:
    presets = await library.presets_for(db, caller.organization_id)
    await db.commit()  # the built-in preset is created on first use
    return [settings_preset_view(preset) for preset in presets]


@router.get("/parts/{part_id}", operation_id="readPart")
async def read_part(part_id: str, db: Db, caller: CallerDep) -> PartView:
    return part_view(await library.part_by_uuid(db, caller.organization_id, path_uuid("part_id", part_id)))


@router.post("/parts/{part_id}/slice", status_code=201, operation_id="slicePartAgain")
async def slice_part_again(part_id: str, db: Db, caller: CallerDep, slice_jobs: SliceQueue) -> UploadStlResponse:
    """Layerfleet extension: slice the part's latest version again, after its slice failed or was
    cancelled. Poll the new job with getSliceStatus. 404 for a part not in your organization; 409
    when it is sliced already or being sliced."""
    part = await library.part_by_uuid(db, caller.organization_id, path_uuid("part_id", part_id))
    ensure_role(caller.user, Role.OPERATOR)
    job = await library.slice_part_again(db, part)
    await db.commit()
    await slice_jobs.submit(job.uuid)
    return UploadStlResponse(slice_job_id=job.uuid, part_version_id=part.versions[-1].uuid)


@router.delete("/parts/{part_id}", status_code=204, response_class=Response, operation_id="deletePart")
async def delete_part(part_id: str, db: Db, caller: CallerDep, settings: AppSettings) -> Response:
    """Layerfleet extension: delete a part with every version, its STL and G-code files. 404 for
    a part not in your organization; 409 while a build places the part or it is being sliced."""
    part = await library.part_by_uuid(db, caller.organization_id, path_uuid("part_id", part_id))
    ensure_role(caller.user, Role.OPERATOR)
    deleted = await library.delete_part(db, part, settings.data_dir)
    await db.commit()
    deleted.remove_files()
    return Response(status_code=204)


@router.get("/part_versions/{part_version_id}", operation_id="readPartVersion")
async def read_part_version(part_version_id: str, db: Db, caller: CallerDep) -> PartVersionView:
    version = await library.part_version_by_uuid(db, caller.organization_id,
                                                 path_uuid("part_version_id", part_version_id))
    return part_version_view(version)


@router.get("/part_versions/{part_version_id}/download", operation_id="readSignedURL")
async def part_version_download(part_version_id: str, request: Request, db: Db, caller: CallerDep,
                                settings: AppSettings) -> ReadSignedURLResponse:
    version = await library.part_version_by_uuid(db, caller.organization_id,
                                                 path_uuid("part_version_id", part_version_id))
    path = f"/api/v3/files/part_versions/{version.uuid}.stl"
    return ReadSignedURLResponse(url=signed_link(settings.effective_secret_key, base_url(request), path,
                                                 DOWNLOAD_SECONDS))


@router.get("/files/part_versions/{version_file}", include_in_schema=False)
async def signed_stl(version_file: str, request: Request, db: Db, settings: AppSettings) -> FileResponse:
    """The target of a signed download URL: no credentials, but a signature that expires."""
    query = request.query_params
    problem = link_problem(settings.effective_secret_key, request.url.path, query.get("expires", ""),
                           query.get("signature", ""))
    if problem is not None:
        raise EigerError(403, problem)
    version = await library.part_version_by_uuid_any(db, version_file.removesuffix(".stl"))
    if version is None:
        raise EigerError(404, "Part version not found")
    file = library.library_root(settings.data_dir) / version.stl_path
    return FileResponse(file, media_type="model/stl", filename=f"{version.title}.stl")
