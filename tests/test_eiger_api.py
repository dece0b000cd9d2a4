"""The print-farm API in the Eiger v3 dialect: access keys and Basic auth, errors, list
parameters, users, devices, parts with real slicing, builds and approvals."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select, update

from conftest import PRINTING, Farm, Member
from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role, User
from layerfleet.database import utcnow
from layerfleet.jobs import InProcessJobQueue
from layerfleet.library.models import Build, Part, PartVersion, SliceJob
from layerfleet.library.service import DEFAULT_PRESET_UUID, library_root, slice_job_by_uuid_any
from layerfleet.library.slice_jobs import SliceJobs, SliceRunner
from layerfleet.slicer import parse_gcode_summary
from test_slicing import cube_triangles, needs_prusaslicer, write_binary_stl

V3 = "/api/v3"


@pytest.fixture
async def slicing(app: Any) -> AsyncIterator[SliceJobs]:
    """The app's slicing service, started (the session app runs no lifespan)."""
    settings = app.state.services.settings
    service = SliceJobs(app.state.services.sessionmaker, InProcessJobQueue(close_timeout=5), settings.data_dir,
                             workers=1, sole_worker=True, timeout=120)
    previous = app.state.services.slice_jobs
    app.state.services.slice_jobs = service
    await service.start()
    yield service
    await service.close()
    app.state.services.slice_jobs = previous


async def basic(farm: Farm, member: Member) -> dict[str, str]:
    async with farm.sessionmaker() as session:
        user = await session.get(User, member.user.id)
        assert user is not None
        issued = await accounts.create_access_key(session, user, "test")
        await session.commit()
    return _basic(issued.access_key, issued.secret)


def _basic(access: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{access}:{secret}".encode()).decode()}


def assert_error(response: httpx.Response, status: int, words: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message"} and words.lower() in body["message"].lower(), body
    assert response.headers["X-Reference-ID"].isdigit()


# --- auth -----------------------------------------------------------------------------------------

async def test_basic_auth_with_access_keys(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    headers = await basic(farm, owner)
    assert (await client.get(f"{V3}/users", headers=headers)).status_code == 200

    access = headers["Authorization"]
    decoded = base64.b64decode(access.split()[1]).decode()
    key, secret = decoded.split(":", 1)
    for bad in [{}, owner.headers, _basic(key, secret + "x"), _basic("LFAKNOPE", secret),
                {"Authorization": "Basic !!!"}, {"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}]:
        response = await client.get(f"{V3}/users", headers=bad)
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Basic")

    # Created, listed and revoked by REST (signed in with the Obico token).
    created = await client.post("/api/v1/access_keys/", json={"name": "ci"}, headers=owner.headers)
    assert created.status_code == 201
    body = created.json()
    rest_headers = _basic(body["access_key"], body["secret_key"])
    assert (await client.get(f"{V3}/users", headers=rest_headers)).status_code == 200
    listed = (await client.get("/api/v1/access_keys/", headers=owner.headers)).json()
    assert [k["access_key"] for k in listed] == [key, body["access_key"]]
    assert all("secret_key" not in k for k in listed)
    assert (await client.delete(f"/api/v1/access_keys/{body['id']}/", headers=owner.headers)).status_code == 204
    assert_error(await client.get(f"{V3}/users", headers=rest_headers), 401)
    other = await farm.member(organization="Farm B")
    assert (await client.delete(f"/api/v1/access_keys/{listed[0]['id']}/", headers=other.headers)).status_code == 404


def test_accesskey_cli_prints_a_working_pair(tmp_path: Path) -> None:
    env = {"LAYERFLEET_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    made = subprocess.run([sys.executable, "-m", "layerfleet", "createuser", "ops@example.com", "--password",
                           "s3cret-pass", "--admin"], env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    printed = subprocess.run([sys.executable, "-m", "layerfleet", "accesskey", "create", "ops@example.com"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert re.fullmatch(r"LFAK[0-9A-F]{20} \S{30,}\n", printed.stdout)
    missing = subprocess.run([sys.executable, "-m", "layerfleet", "accesskey", "create", "nobody@example.com"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no user" in missing.stderr


# --- errors and list parameters -------------------------------------------------------------------

async def test_errors_are_in_the_dialects_format(client: httpx.AsyncClient, farm: Farm) -> None:
    headers = await basic(farm, await farm.member())
    assert_error(await client.get(f"{V3}/builds/not-a-uuid", headers=headers), 400, "build_id must be a UUID")
    assert_error(await client.get(f"{V3}/builds/6f1a7c1e-2b0d-4c55-9a57-000000000000", headers=headers), 404)
    assert_error(await client.get(f"{V3}/nothing-here", headers=headers), 404)
    assert_error(await client.patch(f"{V3}/users", headers=headers), 405)
    assert_error(await client.put(f"{V3}/builds/approved", content=b"{", headers=headers), 400, "json")
    assert_error(await client.put(f"{V3}/builds/approved", json={"builds": [], "x": 1}, headers=headers), 400,
                 "not a known field")


@pytest.mark.parametrize(("query", "words"), [
    ("page[size]=0", "at least 1"), ("page[size]=1001", "at most 1000"), ("page[size]=ten", "integer"),
    ("page[number]=0", "at least 1"), ("sort[by]=password", "sort[by] must be one of"),
    ("sort[order]=up", "asc or desc"), ("filter[created_at][lt]=yesterday", "ISO 8601"),
    ("filter[created_at][eq]=2026-01-01T00:00:00Z", "not a parameter"), ("filter[role][eq]=owner", "not a parameter"),
    ("page[size]=1&page[size]=2", "once"),
])
async def test_invalid_list_parameters_are_400(client: httpx.AsyncClient, farm: Farm, query: str, words: str) -> None:
    headers = await basic(farm, await farm.member())
    assert_error(await client.get(f"{V3}/users?{query}", headers=headers), 400, words)


async def test_users_pages_filters_and_sorts(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    members = [owner] + [await farm.member(Role.VIEWER) for _ in range(4)]
    await farm.member(organization="Farm B")  # never listed
    names = ["Erin", "Dana", "Carl", "Bea", "Al"]
    async with farm.sessionmaker() as session:
        base = utcnow() - timedelta(days=10)
        for n, (member, name) in enumerate(zip(members, names, strict=True)):
            await session.execute(update(User).where(User.id == member.user.id).values(
                name=name, created_at=base + timedelta(days=n)))
        await session.commit()
    headers = await basic(farm, owner)

    async def listed(query: str = "") -> tuple[list[str], bool]:
        response = await client.get(f"{V3}/users?{query}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"has_more_items", "items"}
        return [u["name"] for u in body["items"]], body["has_more_items"]

    assert await listed() == (sorted(names), False)  # default: by name, ascending
    assert await listed("sort[by]=created_at&sort[order]=desc") == (list(reversed(names)), False)
    assert await listed("page[size]=2") == (["Al", "Bea"], True)
    assert await listed("page[size]=2&page[number]=3") == (["Erin"], False)  # the last page
    assert await listed("page[size]=2&page[number]=4") == ([], False)  # beyond the last page
    assert await listed("page[size]=1000") == (sorted(names), False)
    assert await listed("filter[name][eq]=Carl") == (["Carl"], False)
    assert await listed(f"filter[email][eq]={members[1].user.email}") == (["Dana"], False)
    cutoff = (utcnow() - timedelta(days=8, hours=12)).isoformat()
    assert (await listed(f"filter[created_at][lt]={cutoff.replace('+00:00', 'Z')}"))[0] == ["Dana", "Erin"]
    assert (await listed(f"filter[created_at][ge]={quote(cutoff)}"))[0] == ["Al", "Bea", "Carl"]
    # The offset's "+" sent unencoded (it arrives as a space) still means what the caller meant.
    assert (await listed(f"filter[created_at][ge]={cutoff}"))[0] == ["Al", "Bea", "Carl"]
    item = (await client.get(f"{V3}/users?filter[name][eq]=Erin", headers=headers)).json()["items"][0]
    assert item == {"id": owner.user.uuid, "name": "Erin", "email": owner.user.email}


# --- devices --------------------------------------------------------------------------------------

def _status(text: str, **flags: bool) -> dict[str, Any]:
    base = {"operational": True, "printing": False, "paused": False, "pausing": False, "cancelling": False,
            "resuming": False, "finishing": False, "closedOrError": False, "error": False, "ready": True}
    return {"state": {"text": text, "flags": {**base, **flags}}, "progress": {"completion": 42.5}}


async def test_devices_show_the_live_state(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    offline = await farm.printer(owner, "A offline")
    ready = await farm.printer(owner, "B ready", status=_status("Operational"), device_type="X7",
                               device_series="Industrial Series", loaded_primary_material="PLA",
                               ccs_primary_remaining=812.5)
    printing = await farm.printer(owner, "C printing", status=PRINTING)
    paused = await farm.printer(owner, "D paused", status=_status("Paused", paused=True, ready=False))
    await farm.printer(owner, "E archived", archived_at=utcnow())
    headers = await basic(farm, owner)
    body = (await client.get(f"{V3}/devices", headers=headers)).json()
    assert [(d["name"], d["state"]) for d in body["items"]] == [
        ("A offline", "Offline"), ("B ready", "Ready"), ("C printing", "Printing"), ("D paused", "Print Paused")]
    device = (await client.get(f"{V3}/devices/{ready.uuid}", headers=headers)).json()
    assert device["device_type"] == "X7" and device["device_series"] == "Industrial Series"
    assert device["loaded_primary_material"] == "PLA" and device["ccs_primary_remaining"] == 812.5
    assert device["queue_length"] == 0 and device["queue_estimated_time_seconds"] == 0
    assert "active_job" not in device
    assert (await client.get(f"{V3}/devices?filter[name][eq]=C printing", headers=headers)).json()["items"][0][
        "id"] == printing.uuid
    other = await basic(farm, await farm.member(organization="Farm B"))
    assert_error(await client.get(f"{V3}/devices/{offline.uuid}", headers=other), 404)
    assert (await client.get(f"{V3}/devices", headers=other)).json() == {"has_more_items": False, "items": []}
    del paused


# --- parts and slicing ----------------------------------------------------------------------------

async def upload(client: httpx.AsyncClient, headers: dict[str, str], content: bytes, name: str = "cube.stl",
                 **fields: str) -> httpx.Response:
    return await client.post(f"{V3}/parts/upload_stl", headers=headers, files={"stlFile": (name, content)},
                             data=fields)


async def wait_for_slice(client: httpx.AsyncClient, headers: dict[str, str], job: str, within: float = 90) -> \
        list[str]:
    """Every status seen until the job finished."""
    seen: list[str] = []
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        body = (await client.get(f"{V3}/parts/slice_status/{job}", headers=headers)).json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if body["status"] in ("COMPLETED", "ERROR", "CANCELED"):
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"slice job still {seen} after {within} s")


def cube_stl(tmp_path: Path, edge: float = 20.0) -> bytes:
    return write_binary_stl(tmp_path / "cube.stl", cube_triangles(edge)).read_bytes()


@needs_prusaslicer
async def test_uploaded_stl_is_sliced_by_a_job(client: httpx.AsyncClient, farm: Farm, app: Any,
                                               slicing: SliceJobs, tmp_path: Path) -> None:
    owner = await farm.member()
    headers = await basic(farm, owner)
    presets = (await client.get(f"{V3}/parts/settings_presets", headers=headers)).json()
    assert presets[0]["id"] == DEFAULT_PRESET_UUID and "PLA" in presets[0]["title"]

    response = await upload(client, headers, cube_stl(tmp_path), "Calibration Cube.stl",
                            settingsPresetId=DEFAULT_PRESET_UUID)
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == {"slice_job_id", "part_version_id"}
    seen = await wait_for_slice(client, headers, created["slice_job_id"])
    assert seen[-1] == "COMPLETED" and set(seen) <= {"QUEUED", "IN_PROGRESS", "COMPLETED"}

    version = (await client.get(f"{V3}/part_versions/{created['part_version_id']}", headers=headers)).json()
    assert version["title"] == "Calibration Cube" and version["version_number"] == 1 and version["sliced"] is True
    assert version["settings"] == {"scale": 1.0, "euler": {"x": 0.0, "y": 0.0, "z": 0.0}, "units": "mm"}
    part = (await client.get(f"{V3}/parts/{version['part_id']}", headers=headers)).json()
    assert part["latest_partversion"] == version["id"] and part["part_versions"] == [version["id"]]
    assert part["cloned_from"] is None

    # The estimates are PrusaSlicer's own, from its G-code comments.
    async with farm.sessionmaker() as session:
        stored = (await session.execute(select(PartVersion).where(PartVersion.uuid == version["id"]))).scalar_one()
    root = library_root(app.state.services.settings.data_dir)
    summary = parse_gcode_summary(root / str(stored.gcode_path))
    assert stored.estimated_print_seconds == summary.estimated_print_seconds > 0
    assert stored.filament_cm3 == pytest.approx(summary.filament_cm3) and summary.filament_cm3 > 1
    assert stored.triangles == 12 and stored.size_mm == [20.0, 20.0, 20.0]

    # A signed download URL, valid for 30 s, gives the STL back; a changed one does not.
    url = (await client.get(f"{V3}/part_versions/{version['id']}/download", headers=headers)).json()["url"]
    fetched = await client.get(url)
    assert fetched.status_code == 200 and fetched.content == cube_stl(tmp_path)
    assert_error(await client.get(url.replace("signature=", "signature=0")), 403)
    assert_error(await client.get(re.sub(r"expires=\d+", "expires=1", url)), 403)


@needs_prusaslicer
@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty"),
    (b"%PDF-1.4 this is not a model", "not an STL"),
])
async def test_bad_uploads_are_refused_and_leave_nothing(client: httpx.AsyncClient, farm: Farm, app: Any,
                                                         slicing: SliceJobs, content: bytes, words: str) -> None:
    headers = await basic(farm, await farm.member())
    before = _stl_files(app)
    response = await upload(client, headers, content)
    assert_error(response, 400, words)
    await _nothing_stored(farm, app, before)


def _stl_files(app: Any) -> set[Path]:
    stl_dir = library_root(app.state.services.settings.data_dir) / "stl"
    return set(stl_dir.iterdir()) if stl_dir.exists() else set()


async def _nothing_stored(farm: Farm, app: Any, files_before: set[Path]) -> None:
    async with farm.sessionmaker() as session:
        for model in (Part, PartVersion, SliceJob):
            assert (await session.execute(select(func.count()).select_from(model))).scalar_one() == 0
    assert _stl_files(app) == files_before


async def test_upload_form_errors(client: httpx.AsyncClient, farm: Farm, app: Any, slicing: SliceJobs,
                                  tmp_path: Path) -> None:
    headers = await basic(farm, await farm.member())
    before = _stl_files(app)
    assert_error(await client.post(f"{V3}/parts/upload_stl", headers=headers, json={"stlFile": "x"}), 400,
                 "multipart")
    assert_error(await client.post(f"{V3}/parts/upload_stl", headers=headers, data={"folderId": "x"},
                                   files={"other": ("a", b"b")}), 400, "stlFile is required")
    assert_error(await upload(client, headers, cube_stl(tmp_path), settingsPresetId="nope"), 400, "UUID")
    assert_error(await upload(client, headers, cube_stl(tmp_path),
                              settingsPresetId="6f1a7c1e-2b0d-4c55-9a57-000000000000"), 400, "settings preset")
    stranger = await farm.member(organization="Farm B")
    assert_error(await upload(client, headers, cube_stl(tmp_path), userId=stranger.user.uuid), 400, "not a member")
    too_big = {**headers, "Content-Length": str(600 * 1024 * 1024)}
    assert_error(await client.post(f"{V3}/parts/upload_stl", headers=too_big, content=b"x"), 400, "larger than 500 MB")
    await _nothing_stored(farm, app, before)


@needs_prusaslicer
async def test_a_model_the_slicer_rejects_ends_in_error(client: httpx.AsyncClient, farm: Farm,
                                                        slicing: SliceJobs, tmp_path: Path) -> None:
    headers = await basic(farm, await farm.member())
    huge = write_binary_stl(tmp_path / "huge.stl", cube_triangles(900.0)).read_bytes()  # larger than the bed
    created = (await upload(client, headers, huge)).json()
    assert (await wait_for_slice(client, headers, created["slice_job_id"]))[-1] == "ERROR"
    body = (await client.get(f"{V3}/parts/slice_status/{created['slice_job_id']}", headers=headers)).json()
    assert "bed" in body["message"].lower()
    version = (await client.get(f"{V3}/part_versions/{created['part_version_id']}", headers=headers)).json()
    assert version["sliced"] is False


async def test_slice_jobs_waiting_at_a_restart_are_run(farm: Farm, app: Any, tmp_path: Path) -> None:
    """A job requested (or running) when the server stopped is picked up by the next start."""
    owner = await farm.member()
    async with farm.sessionmaker() as session:
        from layerfleet.library import service as library

        user = await session.get(User, owner.user.id)
        assert user is not None
        received = await library.receive_stl(_one(cube_stl(tmp_path)), "a.stl", app.state.services.settings.data_dir)
        preset = await library.default_preset(session)
        created = await library.create_part(session, received, owner=user, preset=preset, folder_uuid=None,
                                            data_dir=app.state.services.settings.data_dir)
        created.job.status = "IN_PROGRESS"  # a slice the last process did not finish
        await session.commit()
        job_uuid = created.job.uuid
    ran: list[str] = []

    async def record(job: str) -> None:
        ran.append(job)

    service = SliceJobs(app.state.services.sessionmaker, InProcessJobQueue(), app.state.services.settings.data_dir,
                             workers=1, sole_worker=True)
    service.runner = record  # type: ignore[assignment]
    queue = service._queue
    await queue.start({"slice": record})
    service.workers = 0  # the queue is started above, with the recording handler
    await service.start()
    for _ in range(50):
        if ran:
            break
        await asyncio.sleep(0.05)
    await service.close()
    assert ran == [job_uuid]
    async with farm.sessionmaker() as session:
        assert (await session.execute(select(SliceJob.status))).scalar_one() == "QUEUED"


async def _one(content: bytes) -> AsyncIterator[bytes]:
    yield content


# --- builds ---------------------------------------------------------------------------------------

@needs_prusaslicer
async def test_builds_from_part_versions_and_approvals(client: httpx.AsyncClient, farm: Farm,
                                                       slicing: SliceJobs, tmp_path: Path) -> None:
    owner = await farm.member()
    headers = await basic(farm, owner)
    created = (await upload(client, headers, cube_stl(tmp_path, 10.0))).json()
    await wait_for_slice(client, headers, created["slice_job_id"])
    version = created["part_version_id"]

    single = await client.post(f"{V3}/builds", headers=headers, json={
        "title": "One cube", "part_versions": [{"part_version": version}]})
    assert single.status_code == 201, single.text
    one = single.json()
    assert one["sliced"] is True and one["slice_job_id"] is None  # the part's own G-code, as it is
    assert one["part_count"] == 1 and one["estimated_print_seconds"] > 0 and one["ccs_primary_required"] > 0
    assert [p["id"] for p in one["part_versions"]] == [version]

    plate = (await client.post(f"{V3}/builds", headers=headers, json={
        "title": "Four cubes", "part_versions": [{"part_version": version, "x": x, "y": y, "theta": 90}
                                                 for x in (-20, 20) for y in (-20, 20)]})).json()
    assert plate["sliced"] is False and plate["part_count"] == 4 and len(plate["poses"]) == 4
    assert (await wait_for_slice(client, headers, plate["slice_job_id"]))[-1] == "COMPLETED"
    sliced = (await client.get(f"{V3}/builds/{plate['id']}", headers=headers)).json()
    assert sliced["sliced"] is True
    assert sliced["ccs_primary_required"] == pytest.approx(4 * one["ccs_primary_required"], rel=0.1)
    assert sliced["estimated_print_seconds"] > 2 * one["estimated_print_seconds"]

    async def titles(query: str) -> list[str]:
        response = await client.get(f"{V3}/builds?{query}", headers=headers)
        assert response.status_code == 200, response.text
        return [b["title"] for b in response.json()["items"]]

    assert await titles("") == ["One cube", "Four cubes"]
    assert await titles("sort[order]=desc") == ["Four cubes", "One cube"]
    assert await titles("filter[part_count][gt]=1") == ["Four cubes"]
    assert await titles("filter[part_count][ne]=4") == ["One cube"]
    assert await titles("filter[sliced][eq]=true") == ["One cube", "Four cubes"]
    assert await titles("filter[title][eq]=One cube") == ["One cube"]
    assert_error(await client.get(f"{V3}/builds?filter[part_count][eq]=0", headers=headers), 400, "at least 1")

    # Approvals: off by default (every build approved, GET /builds/approved answers 204) …
    assert (await client.get(f"{V3}/builds/approved", headers=headers)).status_code == 204
    assert await titles("filter[approved][eq]=true") == ["One cube", "Four cubes"]
    # … on once builds are approved: those, and only those.
    assert (await client.put(f"{V3}/builds/approved", headers=headers,
                             json={"builds": [plate["id"]]})).status_code == 204
    approved = (await client.get(f"{V3}/builds/approved", headers=headers)).json()
    assert [b["title"] for b in approved["items"]] == ["Four cubes"] and approved["has_more_items"] is False
    assert await titles("filter[approved][eq]=false") == ["One cube"]
    assert await titles("filter[approved][ne]=false") == ["Four cubes"]
    missing = await client.put(f"{V3}/builds/approved", headers=headers,
                               json={"builds": [plate["id"], "6f1a7c1e-2b0d-4c55-9a57-000000000000"]})
    assert_error(missing, 404)
    assert [b["title"] for b in (await client.get(f"{V3}/builds/approved", headers=headers)).json()["items"]] == \
        ["Four cubes"]  # the refused request changed nothing
    assert (await client.delete(f"{V3}/builds/approved", headers=headers)).status_code == 204
    assert (await client.get(f"{V3}/builds/approved", headers=headers)).status_code == 204
    viewer = await basic(farm, await farm.member(Role.VIEWER))
    assert_error(await client.put(f"{V3}/builds/approved", headers=viewer, json={"builds": []}), 403)
    async with farm.sessionmaker() as session:
        assert (await session.execute(select(func.count()).select_from(Build))).scalar_one() == 2


async def test_build_requests_that_are_wrong(client: httpx.AsyncClient, farm: Farm, slicing: SliceJobs) -> None:
    headers = await basic(farm, await farm.member())
    for body, words in [
        ({"title": "x", "part_versions": []}, "at least 1"),
        ({"title": "", "part_versions": [{"part_version": "6f1a7c1e-2b0d-4c55-9a57-000000000000"}]}, "not found"),
        ({"title": "x", "part_versions": [{"part_version": "nope"}]}, "UUID"),
        ({"part_versions": []}, "title is required"),
    ]:
        response = await client.post(f"{V3}/builds", headers=headers, json=body)
        assert response.status_code in (400, 404), response.text
        assert words.lower() in response.json()["message"].lower()
    async with farm.sessionmaker() as session:
        assert (await session.execute(select(func.count()).select_from(Build))).scalar_one() == 0


async def test_device_fields_are_set_per_printer(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "X7 bay 1", status=_status("Operational"))
    headers = await basic(farm, owner)
    changed = await client.patch(f"{V3}/devices/{printer.uuid}", headers=headers, json={
        "device_type": "X7", "device_series": "Industrial Series", "loaded_primary_material": "Onyx",
        "ccs_primary_remaining": 400.0})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["device_type"], body["device_series"], body["loaded_primary_material"],
            body["ccs_primary_remaining"]) == ("X7", "Industrial Series", "Onyx", 400.0)
    for bad in [{"device_type": "Prusa"}, {"ccs_primary_remaining": -1}, {"colour": "red"}]:
        assert_error(await client.patch(f"{V3}/devices/{printer.uuid}", headers=headers, json=bad), 400)
    viewer = await basic(farm, await farm.member(Role.VIEWER))
    assert_error(await client.patch(f"{V3}/devices/{printer.uuid}", headers=viewer, json={"device_type": "X3"}), 403)
    again = (await client.get(f"{V3}/devices/{printer.uuid}", headers=headers)).json()
    assert again["device_type"] == "X7" and again["loaded_primary_material"] == "Onyx"
    # Cleared: a type is Unknown again, a blank material is none; what was not sent stays.
    cleared = await client.patch(f"{V3}/devices/{printer.uuid}", headers=headers, json={
        "device_type": None, "loaded_primary_material": "  "})
    assert cleared.status_code == 200, cleared.text
    body = cleared.json()
    assert (body["device_type"], body["device_series"], body["loaded_primary_material"],
            body["ccs_primary_remaining"]) == ("Unknown", "Industrial Series", None, 400.0)


async def test_print_job_filters_on_dates_states_and_ids(client: httpx.AsyncClient, farm: Farm) -> None:
    from layerfleet.library import service as library
    from layerfleet.scheduling.models import PrintJob

    owner = await farm.member()
    first = await farm.printer(owner, "A")
    second = await farm.printer(owner, "B")
    headers = await basic(farm, owner)
    day = timedelta(days=1)
    base = utcnow() - 10 * day
    async with farm.sessionmaker() as session:
        preset = await library.default_preset(session)
        builds = [Build(organization_id=owner.user.organization_id, user_id=owner.user.id, title=f"b{n}",
                        settings_preset_id=preset.id, part_count=1) for n in range(2)]
        session.add_all(builds)
        await session.flush()
        rows = [  # (build, printer, state, created, started, ended)
            (0, first, "Completed", base, base + day, base + 2 * day),
            (0, second, "Failed", base + 3 * day, base + 3 * day, base + 4 * day),
            (1, first, "Printing", base + 5 * day, base + 5 * day, None),
            (1, None, "Backlogged", base + 6 * day, None, None),
        ]
        for build, printer, state, created, started, ended in rows:
            session.add(PrintJob(organization_id=owner.user.organization_id, build_id=builds[build].id,
                                 printer_id=printer.id if printer else None, origin="direct", state=state,
                                 created_at=created, updated_at=created, started_at=started, ended_at=ended))
        await session.commit()
        build_uuids = [b.uuid for b in builds]

    async def states(query: str = "") -> list[str]:
        response = await client.get(f"{V3}/print_jobs?{query}", headers=headers)
        assert response.status_code == 200, response.text
        return [job["state"] for job in response.json()["items"]]

    def at(moment: Any) -> str:
        return quote(moment.isoformat())

    assert await states() == ["Backlogged", "Printing", "Failed", "Completed"]  # newest first
    assert await states("sort[order]=asc&sort[by]=started_at") == ["Completed", "Failed", "Printing", "Backlogged"]
    assert await states("filter[state][eq]=Failed") == ["Failed"]
    assert await states("filter[state][ne]=Backlogged") == ["Printing", "Failed", "Completed"]
    assert await states(f"filter[created_at][ge]={at(base + 3 * day)}&filter[created_at][lt]={at(base + 6 * day)}") \
        == ["Printing", "Failed"]
    assert await states(f"filter[ended_at][le]={at(base + 2 * day)}") == ["Completed"]
    assert await states(f"filter[started_at][gt]={at(base + day)}") == ["Printing", "Failed"]
    assert await states(f"filter[build][eq]={build_uuids[1]}") == ["Backlogged", "Printing"]
    assert await states(f"filter[device][eq]={first.uuid}") == ["Printing", "Completed"]
    assert await states(f"filter[device][eq]={first.uuid}&filter[build][eq]={build_uuids[0]}") == ["Completed"]
    assert await states("filter[device][eq]=6f1a7c1e-2b0d-4c55-9a57-000000000000") == []
    assert await states("page[size]=3&page[number]=2") == ["Completed"]
    assert_error(await client.get(f"{V3}/print_jobs?filter[state][eq]=Done", headers=headers), 400, "one of")
    assert_error(await client.get(f"{V3}/print_jobs?filter[device][eq]=7", headers=headers), 400, "UUID")


async def test_a_queued_slice_job_can_be_canceled(client: httpx.AsyncClient, farm: Farm, app: Any,
                                                  tmp_path: Path) -> None:
    # No worker runs in this test (the session app runs no lifespan): the job waits QUEUED.
    headers = await basic(farm, await farm.member())
    created = (await upload(client, headers, cube_stl(tmp_path))).json()
    job = created["slice_job_id"]
    assert (await client.get(f"{V3}/parts/slice_status/{job}", headers=headers)).json() == {"status": "QUEUED"}
    canceled = await client.post(f"{V3}/parts/slice_status/{job}/cancel", headers=headers)
    assert canceled.status_code == 200 and canceled.json() == {"status": "CANCELED"}
    assert_error(await client.post(f"{V3}/parts/slice_status/{job}/cancel", headers=headers), 409, "CANCELED")
    # A worker that gets the job later leaves it alone.
    async with farm.sessionmaker() as session:
        before = await slice_job_by_uuid_any(session, job)
    await SliceRunner(farm.sessionmaker, app.state.services.settings.data_dir)(job)
    async with farm.sessionmaker() as session:
        after = await slice_job_by_uuid_any(session, job)
    assert before is not None and after is not None
    assert after.status == "CANCELED" and after.attempts == before.attempts == 0


@needs_prusaslicer
async def test_an_organizations_own_profile_is_used(client: httpx.AsyncClient, farm: Farm, slicing: SliceJobs,
                                                    tmp_path: Path) -> None:
    from layerfleet.slicer import DEFAULT_PROFILE

    owner = await farm.member()
    headers = await basic(farm, owner)
    profile = await asyncio.to_thread(Path(str(DEFAULT_PROFILE)).read_text)
    dense = re.sub(r"(?m)^fill_density = .*$", "fill_density = 80%", profile)
    created = await client.post(f"{V3}/parts/settings_presets", headers=headers,
                                json={"title": "Dense PETG", "ini": dense, "material": "PETG"})
    assert created.status_code == 201, created.text
    preset = created.json()
    listed = (await client.get(f"{V3}/parts/settings_presets", headers=headers)).json()
    assert [p["title"] for p in listed][1:] == ["Dense PETG"]
    assert_error(await client.post(f"{V3}/parts/settings_presets", headers=headers,
                                   json={"title": "x", "ini": "not a profile"}), 400, ".ini")
    viewer = await basic(farm, await farm.member(Role.VIEWER))
    assert_error(await client.post(f"{V3}/parts/settings_presets", headers=viewer,
                                   json={"title": "x", "ini": dense}), 403)
    other = await basic(farm, await farm.member(organization="Farm B"))
    assert [p["title"] for p in (await client.get(f"{V3}/parts/settings_presets", headers=other)).json()] == \
        [listed[0]["title"]]

    volumes = []
    for preset_id in (DEFAULT_PRESET_UUID, preset["id"]):
        made = (await upload(client, headers, cube_stl(tmp_path, 20.0), settingsPresetId=preset_id)).json()
        assert (await wait_for_slice(client, headers, made["slice_job_id"]))[-1] == "COMPLETED"
        version = (await client.get(f"{V3}/part_versions/{made['part_version_id']}", headers=headers)).json()
        async with farm.sessionmaker() as session:
            stored = (await session.execute(select(PartVersion).where(PartVersion.uuid == version["id"]))) \
                .scalar_one()
        volumes.append((version["primary_material"], stored.filament_cm3))
    (default_material, default_volume), (own_material, own_volume) = volumes
    assert (default_material, own_material) == ("PLA", "PETG")
    assert default_volume is not None and own_volume is not None and own_volume > 1.5 * default_volume


async def test_inspection_report_shows_temperatures_detection_and_key_frames(
        client: httpx.AsyncClient, farm: Farm, app: Any) -> None:
    from PIL import Image

    from layerfleet.detection.models import PredictionFrame
    from layerfleet.library import service as library
    from layerfleet.prints.models import Print
    from layerfleet.scheduling.models import PrintedPart, PrintJob

    owner = await farm.member()
    printer = await farm.printer(owner, "Voron 2", status={"temperatures": {"tool0": {"actual": 215, "target": 215}}})
    headers = await basic(farm, owner)
    media = app.state.services.settings.data_dir / "media"
    start = utcnow() - timedelta(minutes=30)
    async with farm.sessionmaker() as session:
        preset = await library.default_preset(session)
        build = Build(organization_id=owner.user.organization_id, user_id=owner.user.id, title="Gear",
                      settings_preset_id=preset.id, part_count=1)
        session.add(build)
        print_ = Print(organization_id=owner.user.organization_id, printer_id=printer.id, filename="gear.gcode",
                       started_at=start, cancelled_at=start + timedelta(minutes=20),
                       alerted_at=start + timedelta(minutes=19))
        session.add(print_)
        await session.flush()
        for n in range(1, 21):
            name = f"orgs/{owner.user.organization_id}/frame-{print_.id}-{n}.jpg"
            (media / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (n * 10, 40, 40)).save(media / name, "JPEG")
            session.add(PredictionFrame(
                print_id=print_.id, frame_number=n, taken_at=start + timedelta(minutes=n), p=0.0, ewm_mean=0.0,
                rolling_mean_short=0.0, rolling_mean_long=0.0, normalized_p=min(1.0, n / 19), image_path=name,
                temperatures={"tool0": [min(215.0, 25.0 + 40 * n), 215.0], "bed": [60.0, 60.0]}))
        job = PrintJob(organization_id=owner.user.organization_id, build_id=build.id, printer_id=printer.id,
                       print_id=print_.id, origin="direct", state="Failed", queued_at=start, started_at=start,
                       ended_at=start + timedelta(minutes=20))
        session.add(job)
        await session.flush()
        part = PrintedPart(organization_id=owner.user.organization_id, print_job_id=job.id, state="Print Failed",
                           notes="Print failed", printed_at=job.ended_at)
        session.add(part)
        await session.commit()
        part_uuid = part.uuid

    asked = await client.get(f"{V3}/printed_parts/{part_uuid}/scan_report", headers=headers)
    assert asked.status_code == 200 and asked.json() == {"scan_report_url": None}
    await app.state.services.reports.wait()
    url = (await client.get(f"{V3}/printed_parts/{part_uuid}/scan_report", headers=headers)).json()["scan_report_url"]
    assert url and "expires=" in url
    page = (await client.get(url)).text
    assert "Inspection report: Gear" in page and "Voron 2" in page and "Print Failed" in page
    assert "Failure detector alerted" in page and "Job failed" in page
    assert 'aria-label="Temperatures over the print"' in page and "tool0 (last 215 °C)" in page
    assert "bed (last 60 °C)" in page
    assert 'aria-label="Failure likelihood over the print"' in page
    # The three most likely failures (the last frame is one of them): 18, 19, 20.
    assert page.count("<img ") == 3 and all(f"Frame {n}," in page for n in (18, 19, 20))
