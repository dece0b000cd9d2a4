"""The part library's rules: uploads become parts, slicing runs as queued jobs, builds place
part versions on a plate. Files live under DATA_DIR/library; rows only point at them, and a
file is moved into place only once its row can be written (no half-made records)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import Organization, Role, User
from layerfleet.database import utcnow
from layerfleet.errors import Conflict, Invalid, NotFound
from layerfleet.library.models import Build, BuildItem, Part, PartVersion, SettingsPreset, SliceJob, SliceStatus
from layerfleet.slicer import (
    DEFAULT_MAX_BYTES,
    BadStl,
    inspect_stl,
)

log = logging.getLogger(__name__)

SLICE_JOB_KIND = "slice"
# The built-in preset: the profile shipped in the package, the same UUID everywhere.
DEFAULT_PRESET_UUID = "6f1a7c1e-2b0d-4c55-9a57-6d3c1f0e9b01"
DEFAULT_PRESET_TITLE = "Layerfleet default (PLA, 0.2 mm layers, 15 % infill)"
SLICE_TIMEOUT_SECONDS = 600.0
# A job still IN_PROGRESS this long past the slice timeout was lost with its worker.
STALE_MARGIN = timedelta(seconds=120)
MAX_TITLE = 255
BED_LIMIT_MM = 10_000  # poses are integers in mm; anything beyond this is a typing error


class LibraryError(Invalid):
    """A library request that cannot be carried out; the message is for a person."""


class NotInLibrary(NotFound):
    """No such object in the organization's library; ``what`` names it ("part 1f0c…")."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what[:1].upper()}{what[1:]} not found")
        self.what = what


def library_root(data_dir: Path) -> Path:
    return data_dir / "library"


def stl_dir(data_dir: Path) -> Path:
    return library_root(data_dir) / "stl"


def gcode_dir(data_dir: Path) -> Path:
    return library_root(data_dir) / "gcode"


# --- settings presets ---------------------------------------------------------------------------

async def default_preset(session: AsyncSession) -> SettingsPreset:
    found = (await session.execute(
        select(SettingsPreset).where(SettingsPreset.uuid == DEFAULT_PRESET_UUID))).scalar_one_or_none()
    if found is not None:
        return found
    preset = SettingsPreset(uuid=DEFAULT_PRESET_UUID, organization_id=None, title=DEFAULT_PRESET_TITLE,
                            ini_text=None, material="PLA")
    session.add(preset)
    await session.flush()
    return preset


async def presets_for(session: AsyncSession, organization_id: int) -> list[SettingsPreset]:
    builtin = await default_preset(session)
    own = (await session.execute(
        select(SettingsPreset).where(SettingsPreset.organization_id == organization_id)
        .order_by(SettingsPreset.title, SettingsPreset.id))).scalars()
    return [builtin, *own]


async def preset_by_uuid(session: AsyncSession, organization_id: int, preset_uuid: str | None) -> SettingsPreset:
    if preset_uuid is None or preset_uuid == DEFAULT_PRESET_UUID:
        return await default_preset(session)
    found = (await session.execute(select(SettingsPreset).where(
        SettingsPreset.uuid == preset_uuid, SettingsPreset.organization_id == organization_id,
    ))).scalar_one_or_none()
    if found is None:
        raise NotInLibrary(f"settings preset {preset_uuid}")
    return found


async def create_preset(session: AsyncSession, organization_id: int, title: str, ini_text: str,
                        material: str = "PLA") -> SettingsPreset:
    """An organization's own slicer profile (a PrusaSlicer ``.ini``, as exported by PrusaSlicer)."""
    title = title.strip()
    if not title or len(title) > 200:
        raise LibraryError("A settings preset needs a title of 1 to 200 characters.")
    lines = [line.strip() for line in ini_text.splitlines()]
    if not any(" = " in line or "=" in line for line in lines if line and not line.startswith(("#", ";"))):
        raise LibraryError("The profile is not a PrusaSlicer .ini file (no 'key = value' lines).")
    preset = SettingsPreset(organization_id=organization_id, title=title, ini_text=ini_text, material=material)
    session.add(preset)
    await session.flush()
    return preset


@dataclass
class ReceivedFile:
    """An upload written to a private file under the library, not yet a part."""

    path: Path
    size: int
    sha256: str
    filename: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


async def receive_stl(chunks: AsyncIterator[bytes], filename: str, data_dir: Path,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> ReceivedFile:
    """Write an uploaded STL to the library's spool, refusing it as soon as it is too large."""
    directory = stl_dir(data_dir)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    handle, name = await asyncio.to_thread(tempfile.mkstemp, ".stl", ".upload-", directory)
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(handle, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise LibraryError(f"The STL file is larger than {max_bytes // (1024 * 1024)} MB; "
                                       "split or simplify the model.")
                digest.update(chunk)
                await asyncio.to_thread(out.write, chunk)
    except BaseException:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    return ReceivedFile(path, size, digest.hexdigest(), filename)


def _title_from(filename: str) -> str:
    stem = Path(filename.replace("\\", "/")).name
    for suffix in (".stl", ".STL", ".Stl"):
        stem = stem.removesuffix(suffix)
    cleaned = "".join(ch for ch in stem if ch.isprintable()).strip()
    return (cleaned or "Untitled part")[:MAX_TITLE]


@dataclass
class NewPart:
    part: Part
    version: PartVersion
    job: SliceJob


async def create_part(session: AsyncSession, upload: ReceivedFile, *, owner: User, preset: SettingsPreset,
                      folder_uuid: str | None, data_dir: Path) -> NewPart:
    """A new part whose first version is ``upload``, and its slice job (status REQUESTED).

    The caller commits, then enqueues the job; on any error here the upload is discarded.
    """
    try:
        info = await asyncio.to_thread(inspect_stl, upload.path)
    except BadStl as exc:
        upload.discard()
        raise LibraryError(str(exc)) from None
    part = Part(organization_id=owner.organization_id, user_id=owner.id, folder_uuid=folder_uuid)
    session.add(part)
    await session.flush()
    version = PartVersion(
        part_id=part.id, version_number=1, title=_title_from(upload.filename), description=None,
        settings_preset_id=preset.id, settings={"scale": 1.0, "euler": {"x": 0.0, "y": 0.0, "z": 0.0},
                                                 "units": "mm"},
        stl_path="", stl_bytes=upload.size, stl_sha256=upload.sha256, triangles=info.triangles,
        size_mm=[round(v, 4) for v in info.size_mm], volume_mm3=abs(info.volume_mm3),
    )
    session.add(version)
    await session.flush()
    final = stl_dir(data_dir) / f"{version.uuid}.stl"
    version.stl_path = str(final.relative_to(library_root(data_dir)))
    job = SliceJob(organization_id=owner.organization_id, part_version_id=version.id)
    session.add(job)
    await session.flush()
    await asyncio.to_thread(upload.path.replace, final)
    upload.path = final  # so that a failed commit discards the file in its new place
    return NewPart(part, version, job)


# --- lookups ------------------------------------------------------------------------------------

async def part_by_uuid(session: AsyncSession, organization_id: int, part_uuid: str) -> Part:
    found = (await session.execute(select(Part).where(
        Part.uuid == part_uuid, Part.organization_id == organization_id))).scalar_one_or_none()
    if found is None:
        raise NotInLibrary(f"part {part_uuid}")
    return found


async def part_version_by_uuid(session: AsyncSession, organization_id: int, version_uuid: str) -> PartVersion:
    found = (await session.execute(select(PartVersion).join(Part, PartVersion.part_id == Part.id).where(
        PartVersion.uuid == version_uuid, Part.organization_id == organization_id))).scalar_one_or_none()
    if found is None:
        raise NotInLibrary(f"part version {version_uuid}")
    return found


async def slice_job_by_uuid(session: AsyncSession, organization_id: int, job_uuid: str) -> SliceJob:
    found = (await session.execute(select(SliceJob).where(
        SliceJob.uuid == job_uuid, SliceJob.organization_id == organization_id))).scalar_one_or_none()
    if found is None:
        raise NotInLibrary(f"slice job {job_uuid}")
    return found


async def slice_job_by_uuid_any(session: AsyncSession, job_uuid: str) -> SliceJob | None:
    return (await session.execute(select(SliceJob).where(SliceJob.uuid == job_uuid))).scalar_one_or_none()


async def build_by_uuid(session: AsyncSession, organization_id: int, build_uuid: str) -> Build:
    found = (await session.execute(select(Build).where(
        Build.uuid == build_uuid, Build.organization_id == organization_id))).scalar_one_or_none()
    if found is None:
        raise NotInLibrary(f"build {build_uuid}")
    return found


# --- builds -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    part_version: PartVersion
    x: int
    y: int
    theta: int


@dataclass
class NewBuild:
    build: Build
    job: SliceJob | None  # None when the build reuses its one part version's G-code


async def create_build(session: AsyncSession, owner: User, title: str, placements: Sequence[Placement],
                       preset: SettingsPreset, data_dir: Path) -> NewBuild:
    """A build of ``placements`` sliced with ``preset``. One part version already sliced with
    the same preset is reused as it is; anything else gets a slice job for the whole plate."""
    title = title.strip()
    if not title or len(title) > MAX_TITLE:
        raise LibraryError(f"A build needs a title of 1 to {MAX_TITLE} characters.")
    if not placements:
        raise LibraryError("A build needs at least one part version.")
    if len(placements) > 100:
        raise LibraryError("A build holds at most 100 part instances.")
    for placement in placements:
        if not (-BED_LIMIT_MM <= placement.x <= BED_LIMIT_MM and -BED_LIMIT_MM <= placement.y <= BED_LIMIT_MM):
            raise LibraryError(f"Pose ({placement.x}, {placement.y}) is outside any print bed (mm).")
    build = Build(organization_id=owner.organization_id, user_id=owner.id, title=title,
                  settings_preset_id=preset.id, part_count=len(placements))
    build.items = [BuildItem(part_version_id=p.part_version.id, x=p.x, y=p.y, theta=p.theta % 360)
                   for p in placements]
    session.add(build)
    await session.flush()
    only = placements[0].part_version
    if len(placements) == 1 and only.sliced and only.settings_preset_id == preset.id:
        assert only.gcode_path is not None
        target = gcode_dir(data_dir) / f"build-{build.uuid}.gcode"
        await asyncio.to_thread(_link_or_copy, library_root(data_dir) / only.gcode_path, target)
        build.gcode_path = str(target.relative_to(library_root(data_dir)))
        build.estimated_print_seconds = only.estimated_print_seconds
        build.filament_cm3, build.filament_g = only.filament_cm3, only.filament_g
        build.layer_count = only.layer_count
        return NewBuild(build, None)
    job = SliceJob(organization_id=owner.organization_id, build_id=build.id)
    session.add(job)
    await session.flush()
    return NewBuild(build, job)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# --- slicing ------------------------------------------------------------------------------------

async def cancel_slice_job(session: AsyncSession, job: SliceJob) -> bool:
    if SliceStatus(job.status).finished:
        return False
    job.status = SliceStatus.CANCELED.value
    job.finished_at = utcnow()
    return True


async def slice_part_again(session: AsyncSession, part: Part) -> SliceJob:
    """A new slice job (REQUESTED) for the part's latest version, whose last slice failed or was
    cancelled. The caller commits, then enqueues the job."""
    if not part.versions:
        raise Conflict("The part has no version to slice")
    version = part.versions[-1]
    last = (await latest_version_slice_jobs(session, [version.id])).get(version.id)
    if last is not None and not SliceStatus(last.status).finished:
        raise Conflict("The part is being sliced already")
    if version.sliced:
        raise Conflict("The part is sliced already")
    job = SliceJob(organization_id=part.organization_id, part_version_id=version.id)
    session.add(job)
    await session.flush()
    return job


@dataclass
class DeletedPart:
    """The files of a deleted part, to remove once the deletion is committed (before, a failed
    commit would leave rows pointing at nothing)."""

    files: list[Path]

    def remove_files(self) -> None:
        for file in self.files:
            file.unlink(missing_ok=True)


async def delete_part(session: AsyncSession, part: Part, data_dir: Path) -> DeletedPart:
    """Delete the part with its versions and slice jobs; refused while a build places one of its
    versions (the build's G-code and queue entries depend on it) or while it is being sliced."""
    version_ids = [version.id for version in part.versions]
    if version_ids:
        in_builds = (await session.execute(select(Build.title).join(BuildItem, BuildItem.build_id == Build.id)
                                           .where(BuildItem.part_version_id.in_(version_ids))
                                           .order_by(Build.id).limit(3))).scalars().all()
        if in_builds:
            raise Conflict(f"The part is used by the build “{in_builds[0]}”; delete the build first")
        running = (await session.execute(select(SliceJob.id).where(
            SliceJob.part_version_id.in_(version_ids),
            SliceJob.status.notin_([s.value for s in SliceStatus if s.finished])).limit(1))).first()
        if running is not None:
            raise Conflict("The part is being sliced; cancel the slice first")
    root = library_root(data_dir)
    files = [root / path for version in part.versions for path in (version.stl_path, version.gcode_path) if path]
    # Bulk deletes, children first: the same on both databases whatever their foreign-key cascades.
    if version_ids:
        await session.execute(delete(SliceJob).where(SliceJob.part_version_id.in_(version_ids))
                              .execution_options(synchronize_session=False))
        await session.execute(delete(PartVersion).where(PartVersion.id.in_(version_ids))
                              .execution_options(synchronize_session=False))
    await session.execute(update(Part).where(Part.cloned_from_id == part.id).values(cloned_from_id=None)
                          .execution_options(synchronize_session=False))
    await session.execute(delete(Part).where(Part.id == part.id).execution_options(synchronize_session=False))
    for version in part.versions:
        session.expunge(version)
    session.expunge(part)
    return DeletedPart(files)


# --- lookups without an organization --------------------------------------------------------------

async def part_version_by_uuid_any(session: AsyncSession, version_uuid: str) -> PartVersion | None:
    """For a signed download link, which stands in for the organization's credentials."""
    return (await session.execute(select(PartVersion).where(PartVersion.uuid == version_uuid))).scalar_one_or_none()


# --- owners ---------------------------------------------------------------------------------------

async def part_owner(session: AsyncSession, uploader: User, owner_uuid: str | None) -> User | None:
    """Who owns a new part: the member ``owner_uuid`` names (None if it names no member of the
    uploader's organization) or, by default, the organization's owner (the uploader when it has none)."""
    if owner_uuid is None:
        owner = (await session.execute(select(User).where(
            User.organization_id == uploader.organization_id, User.role == Role.OWNER.value,
        ).order_by(User.id).limit(1))).scalar_one_or_none()
        return owner or uploader
    return (await session.execute(select(User).where(
        User.uuid == owner_uuid, User.organization_id == uploader.organization_id))).scalar_one_or_none()


# --- build approvals ------------------------------------------------------------------------------

async def approve_only(session: AsyncSession, organization: Organization, build_uuids: set[str]) -> None:
    """Switch approvals on with exactly these builds approved (all others unapproved); the caller
    commits. Refused, changing nothing, if any of them is not one of the organization's builds."""
    found = set((await session.execute(select(Build.uuid).where(
        Build.organization_id == organization.id, Build.uuid.in_(build_uuids)))).scalars()) if build_uuids else set()
    missing = build_uuids - found
    if missing:
        raise NotFound(f"Build not found: {', '.join(sorted(missing)[:5])}")
    await session.execute(update(Build).where(Build.organization_id == organization.id)
                          .values(approved=Build.uuid.in_(build_uuids) if build_uuids else False)
                          .execution_options(synchronize_session=False))
    organization.build_approvals_enabled = True


async def disable_approvals(session: AsyncSession, organization: Organization) -> None:
    """Every build may be printed again, and none stays approved for a later switch-on; the caller commits."""
    await session.execute(update(Build).where(Build.organization_id == organization.id).values(approved=False)
                          .execution_options(synchronize_session=False))
    organization.build_approvals_enabled = False


# --- listings -----------------------------------------------------------------------------------

async def recent_parts(session: AsyncSession, organization_id: int, limit: int) -> list[Part]:
    """The organization's newest parts, newest first."""
    query = (select(Part).where(Part.organization_id == organization_id)
             .order_by(Part.created_at.desc(), Part.id.desc()).limit(limit))
    return list((await session.execute(query)).scalars())


async def recent_builds(session: AsyncSession, organization_id: int, limit: int) -> list[Build]:
    """The organization's newest builds, newest first."""
    query = (select(Build).where(Build.organization_id == organization_id)
             .order_by(Build.created_at.desc(), Build.id.desc()).limit(limit))
    return list((await session.execute(query)).scalars())


async def latest_version_slice_jobs(session: AsyncSession, version_ids: Sequence[int]) -> dict[int, SliceJob]:
    """The newest slice job of each of these part versions that has one."""
    if not version_ids:
        return {}
    query = select(SliceJob).where(SliceJob.part_version_id.in_(version_ids)).order_by(SliceJob.id)
    jobs = (await session.execute(query)).scalars()
    return {job.part_version_id: job for job in jobs if job.part_version_id is not None}  # later ids win


async def latest_build_slice_jobs(session: AsyncSession, build_ids: Sequence[int]) -> dict[int, SliceJob]:
    """The newest slice job of each of these builds that has one."""
    if not build_ids:
        return {}
    query = select(SliceJob).where(SliceJob.build_id.in_(build_ids)).order_by(SliceJob.id)
    jobs = (await session.execute(query)).scalars()
    return {job.build_id: job for job in jobs if job.build_id is not None}  # later ids win
