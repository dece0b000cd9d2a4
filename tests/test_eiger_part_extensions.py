"""Layerfleet's extensions to the Eiger v3 parts: slicing a part again after its slice failed or
was cancelled, and deleting a part (POST /api/v3/parts/{id}/slice, DELETE /api/v3/parts/{id})."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from conftest import Farm
from layerfleet.accounts.models import Role
from layerfleet.library.models import Build, BuildItem, Part, PartVersion, SliceJob
from layerfleet.library.service import library_root
from test_eiger_api import V3, assert_error, basic, cube_stl, upload


async def _cancelled_part(client: httpx.AsyncClient, headers: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """An uploaded part whose slice was cancelled (no worker runs here: the job waits QUEUED)."""
    created = (await upload(client, headers, cube_stl(tmp_path))).json()
    cancelled = await client.post(f"{V3}/parts/slice_status/{created['slice_job_id']}/cancel", headers=headers)
    assert cancelled.json() == {"status": "CANCELED"}
    version = (await client.get(f"{V3}/part_versions/{created['part_version_id']}", headers=headers)).json()
    return {**created, "part_id": version["part_id"]}


async def test_a_part_whose_slice_ended_without_gcode_is_sliced_again(
        client: httpx.AsyncClient, farm: Farm, tmp_path: Path) -> None:
    owner = await farm.member()
    headers = await basic(farm, owner)
    part = await _cancelled_part(client, headers, tmp_path)

    again = await client.post(f"{V3}/parts/{part['part_id']}/slice", headers=headers)
    assert again.status_code == 201, again.text
    body = again.json()
    assert body["part_version_id"] == part["part_version_id"] and body["slice_job_id"] != part["slice_job_id"]
    status = await client.get(f"{V3}/parts/slice_status/{body['slice_job_id']}", headers=headers)
    assert status.json() == {"status": "QUEUED"}
    # One slice at a time: asking again while it waits changes nothing.
    assert_error(await client.post(f"{V3}/parts/{part['part_id']}/slice", headers=headers), 409, "being sliced")

    async def jobs(session: Any) -> int:
        return int((await session.execute(select(func.count()).select_from(SliceJob))).scalar_one())

    assert await farm.run(jobs) == 2


async def test_a_part_is_deleted_with_its_versions_jobs_and_files(
        client: httpx.AsyncClient, farm: Farm, app: Any, tmp_path: Path) -> None:
    headers = await basic(farm, await farm.member())
    part = await _cancelled_part(client, headers, tmp_path)
    root = library_root(app.state.services.settings.data_dir)

    async def stl_path(session: Any) -> str:
        return str((await session.execute(select(PartVersion.stl_path))).scalar_one())

    stl = root / await farm.run(stl_path)
    assert stl.is_file()

    deleted = await client.delete(f"{V3}/parts/{part['part_id']}", headers=headers)
    assert deleted.status_code == 204, deleted.text
    assert not stl.exists()
    assert_error(await client.get(f"{V3}/parts/{part['part_id']}", headers=headers), 404)
    assert_error(await client.get(f"{V3}/part_versions/{part['part_version_id']}", headers=headers), 404)
    assert_error(await client.delete(f"{V3}/parts/{part['part_id']}", headers=headers), 404)

    async def counts(session: Any) -> list[int]:
        return [int((await session.execute(select(func.count()).select_from(table))).scalar_one())
                for table in (Part, PartVersion, SliceJob)]

    assert await farm.run(counts) == [0, 0, 0]


async def test_a_part_being_sliced_or_in_a_build_is_not_deleted(
        client: httpx.AsyncClient, farm: Farm, tmp_path: Path) -> None:
    owner = await farm.member()
    headers = await basic(farm, owner)
    created = (await upload(client, headers, cube_stl(tmp_path))).json()
    version = (await client.get(f"{V3}/part_versions/{created['part_version_id']}", headers=headers)).json()
    assert_error(await client.delete(f"{V3}/parts/{version['part_id']}", headers=headers), 409, "cancel the slice")
    await client.post(f"{V3}/parts/slice_status/{created['slice_job_id']}/cancel", headers=headers)

    async def place_in_a_build(session: Any) -> None:
        placed = (await session.execute(select(PartVersion))).scalar_one()
        build = Build(organization_id=owner.user.organization_id, user_id=owner.user.id, title="Plate A",
                      settings_preset_id=placed.settings_preset_id)
        session.add(build)
        await session.flush()
        session.add(BuildItem(build_id=build.id, part_version_id=placed.id, x=0, y=0))
        await session.commit()

    await farm.run(place_in_a_build)
    assert_error(await client.delete(f"{V3}/parts/{version['part_id']}", headers=headers), 409, "Plate A")
    assert (await client.get(f"{V3}/parts/{version['part_id']}", headers=headers)).status_code == 200


async def test_another_organizations_part_is_not_found_and_viewers_may_not_change_parts(
        client: httpx.AsyncClient, farm: Farm, tmp_path: Path) -> None:
    owner = await farm.member()
    headers = await basic(farm, owner)
    part = await _cancelled_part(client, headers, tmp_path)
    stranger = await basic(farm, await farm.member(organization="Farm B"))
    viewer = await basic(farm, await farm.member(Role.VIEWER))

    assert_error(await client.post(f"{V3}/parts/{part['part_id']}/slice", headers=stranger), 404)
    assert_error(await client.delete(f"{V3}/parts/{part['part_id']}", headers=stranger), 404)
    assert_error(await client.post(f"{V3}/parts/{part['part_id']}/slice", headers=viewer), 403)
    assert_error(await client.delete(f"{V3}/parts/{part['part_id']}", headers=viewer), 403)
    assert_error(await client.delete(f"{V3}/parts/not-a-uuid", headers=headers), 400)
    # Nothing changed: the owner's part is still there, its slice still cancelled.
    read = await client.get(f"{V3}/parts/{part['part_id']}", headers=headers)
    assert read.status_code == 200
    status = await client.get(f"{V3}/parts/slice_status/{part['slice_job_id']}", headers=headers)
    assert status.json() == {"status": "CANCELED"}


async def test_the_extensions_are_documented(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    slice_again = paths["/api/v3/parts/{part_id}/slice"]["post"]
    delete = paths["/api/v3/parts/{part_id}"]["delete"]
    assert slice_again["operationId"] == "slicePartAgain" and delete["operationId"] == "deletePart"
    for operation in (slice_again, delete):
        assert "Layerfleet extension" in operation["description"]
        assert {"403", "404", "409"} <= set(operation["responses"])
