"""Printing through the Eiger v3 dialect against a real server: upload → slice → build → print
on a simulated printer (its agent fetches the G-code by the signed link), the 409 path, queue
order, backlog and job requests, print-job filters, printed parts and inspection reports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Farm
from layerfleet.printer_agent.runner import AgentRunner, Cadence
from layerfleet.simulator.printer import SimulatedCamera, SimulatedPrinter, SimulationOptions
from test_eiger_api import V3, assert_error, basic, cube_stl, wait_for_slice
from test_slicing import needs_prusaslicer

FAST = Cadence(idle_status=0.5, active_status=0.3, watched_picture=0.5, unwatched_picture=5.0,
               min_backoff=0.1, max_backoff=0.5, http_timeout=5.0)
# A print lasts 3 simulated minutes at 20× speed: about 10 s with heating.
IDLE_UNTIL_TOLD = SimulationOptions(speed=20.0, min_print_minutes=3, max_print_minutes=3, heating_rate=40.0,
                                    start_printing=False, idle_seconds=(1e9, 1e9))


@dataclass
class LivePrinter:
    uuid: str
    simulated: SimulatedPrinter
    runner: AgentRunner


@pytest.fixture
async def live_printers(live_url: str, farm: Farm) -> AsyncIterator[tuple[dict[str, str], list[LivePrinter]]]:
    owner = await farm.member()
    headers = await basic(farm, owner)
    printers: list[LivePrinter] = []
    tasks = []
    for n in range(2):
        record = await farm.printer(owner, f"Sim {n + 1}")
        simulated = SimulatedPrinter(f"Sim {n + 1}", IDLE_UNTIL_TOLD, seed=n)
        runner = AgentRunner(live_url, record.auth_token, simulated, SimulatedCamera(simulated), cadence=FAST)
        printers.append(LivePrinter(record.uuid, simulated, runner))
        tasks.append(asyncio.create_task(runner.run()))
    try:
        async with httpx.AsyncClient(base_url=live_url, timeout=30) as api:
            for printer in printers:
                await until(lambda p=printer: _state_is(api, headers, p.uuid, "Ready"))
        yield headers, printers
    finally:
        for printer in printers:
            printer.runner.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(check: Any, within: float = 60.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(0.2)


async def _state_is(api: httpx.AsyncClient, headers: dict[str, str], device: str, state: str) -> bool:
    return (await api.get(f"{V3}/devices/{device}", headers=headers)).json().get("state") == state


async def sliced_build(api: httpx.AsyncClient, headers: dict[str, str], tmp_path: Path, title: str,
                       edge: float = 10.0) -> dict[str, Any]:
    created = (await api.post(f"{V3}/parts/upload_stl", headers=headers,
                              files={"stlFile": (f"{title}.stl", cube_stl(tmp_path, edge))})).json()
    assert (await wait_for_slice(api, headers, created["slice_job_id"]))[-1] == "COMPLETED"
    response = await api.post(f"{V3}/builds", headers=headers, json={
        "title": title, "part_versions": [{"part_version": created["part_version_id"]}]})
    assert response.status_code == 201, response.text
    return dict(response.json())


@needs_prusaslicer
async def test_a_build_printed_on_a_simulated_printer(live_url: str, tmp_path: Path,
                                                      live_printers: tuple[dict[str, str], list[LivePrinter]]) -> None:
    headers, (first, second) = live_printers
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as api:
        build = await sliced_build(api, headers, tmp_path, "Bracket")
        unsliced = (await api.post(f"{V3}/builds", headers=headers, json={
            "title": "Two brackets", "part_versions": [{"part_version": build["part_versions"][0]["id"]}] * 2,
        })).json()

        # Not sliced yet: 409, nothing made.
        assert_error(await api.post(f"{V3}/devices/{first.uuid}", headers=headers,
                                    json={"build": unsliced["id"]}), 409, "not sliced")
        response = await api.post(f"{V3}/devices/{first.uuid}", headers=headers, json={"build": build["id"]})
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["state"] == "Printing" and job["ended_at"] is None

        # The agent fetched the G-code by its signed link and is printing it.
        await until(lambda: _state_is(api, headers, first.uuid, "Printing"))
        assert first.simulated.downloaded and first.simulated.downloaded[0][0].startswith("lf-bracket-")
        assert first.simulated.downloaded[0][1] > 1000
        device = (await api.get(f"{V3}/devices/{first.uuid}", headers=headers)).json()
        assert device["active_job"]["id"] == job["id"] and device["active_job"]["build"]["id"] == build["id"]
        assert device["active_job"]["printing_state"] in ("Heating", "Printing")
        # Busy: a second print on the same printer is a conflict and changes nothing.
        assert_error(await api.post(f"{V3}/devices/{first.uuid}", headers=headers, json={"build": build["id"]}),
                     409, "not ready")

        # The job follows the print: started, then completed, with a printed part.
        async def job_state(state: str) -> dict[str, Any] | None:
            body = (await api.get(f"{V3}/print_jobs/{job['id']}", headers=headers)).json()
            return dict(body) if body["state"] == state else None

        running = await until(lambda: job_state("Printing"))
        assert running["device"]["id"] == first.uuid
        done = await until(lambda: job_state("Completed"), within=90)
        assert done["started_at"] is not None and done["ended_at"] is not None
        parts = (await api.get(f"{V3}/printed_parts", headers=headers)).json()["items"]
        assert [(p["state"], p["print_job"]["id"]) for p in parts] == [("Printed", job["id"])]
        part = parts[0]

        # Its inspection report: null until generated, then a signed HTML page.
        first_ask = (await api.get(f"{V3}/printed_parts/{part['id']}/scan_report", headers=headers)).json()
        assert first_ask == {"scan_report_url": None}

        async def report() -> str | None:
            body = (await api.get(f"{V3}/printed_parts/{part['id']}/scan_report", headers=headers)).json()
            return body["scan_report_url"]

        url = await until(report, within=30)
        page = await api.get(url)
        assert page.status_code == 200 and "Inspection report: Bracket" in page.text and "Print started" in page.text
        assert (await api.get(url.replace("signature=", "signature=f"))).status_code == 403
        listed = (await api.get(f"{V3}/print_jobs/{job['id']}/scan_report", headers=headers)).json()
        assert [entry["printed_part_id"] for entry in listed] == [part["id"]] and listed[0]["scan_report_url"]

        # Print jobs by device and build; the other printer never printed.
        by_device = (await api.get(f"{V3}/print_jobs?filter[device][eq]={first.uuid}", headers=headers)).json()
        assert [j["id"] for j in by_device["items"]] == [job["id"]]
        assert (await api.get(f"{V3}/print_jobs?filter[device][eq]={second.uuid}",
                              headers=headers)).json()["items"] == []
        assert [j["id"] for j in (await api.get(f"{V3}/print_jobs?filter[build][eq]={build['id']}&filter[state][eq]"
                                                "=Completed", headers=headers)).json()["items"]] == [job["id"]]


@needs_prusaslicer
async def test_queue_order_backlog_and_job_requests(live_url: str, tmp_path: Path,
                                                    live_printers: tuple[dict[str, str], list[LivePrinter]]) -> None:
    headers, (printer, _) = live_printers
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as api:
        small = await sliced_build(api, headers, tmp_path, "Small", 8.0)
        large = await sliced_build(api, headers, tmp_path, "Large", 12.0)
        added = []
        for build in (large, small, large):
            response = await api.post(f"{V3}/devices/{printer.uuid}/queue", headers=headers,
                                      json={"build": build["id"]})
            assert response.status_code == 201, response.text
            added.append(response.json())
        assert all(entry["state"] == "Queued" for entry in added)
        queue = (await api.get(f"{V3}/devices/{printer.uuid}/queue", headers=headers)).json()
        assert [e["build"]["title"] for e in queue["queue"]] == ["Large", "Small", "Large"]
        assert queue["device"]["queue_length"] == 3
        assert queue["device"]["queue_estimated_time_seconds"] == pytest.approx(
            2 * large["estimated_print_seconds"] + small["estimated_print_seconds"])
        # Removing the middle one keeps the order of the rest.
        assert (await api.delete(f"{V3}/devices/{printer.uuid}/queue/{added[1]['id']}",
                                 headers=headers)).status_code == 204
        removed = (await api.get(f"{V3}/devices/{printer.uuid}/queue/{added[1]['id']}", headers=headers)).json()
        assert removed["state"] == "Removed"
        queue = (await api.get(f"{V3}/devices/{printer.uuid}/queue", headers=headers)).json()
        assert [e["id"] for e in queue["queue"]] == [added[0]["id"], added[2]["id"]]
        # The head starts when the operator says the bed is clear.
        started = await api.post(f"{V3}/devices/{printer.uuid}/queue/start_next", headers=headers)
        assert started.status_code == 201, started.text
        head = (await api.get(f"{V3}/devices/{printer.uuid}/queue/{added[0]['id']}", headers=headers)).json()
        assert head["state"] == "Started"
        queue = (await api.get(f"{V3}/devices/{printer.uuid}/queue", headers=headers)).json()
        assert [e["id"] for e in queue["queue"]] == [added[2]["id"]]
        await until(lambda: _state_is(api, headers, printer.uuid, "Printing"))
        assert_error(await api.post(f"{V3}/devices/{printer.uuid}/queue/start_next", headers=headers), 409)
        assert_error(await api.get(f"{V3}/devices/{printer.uuid}/queue/{small['id']}", headers=headers), 404)

        # Backlog and job requests: jobs with no printer, and a due date.
        backlogged = await api.post(f"{V3}/backlog/{small['id']}", headers=headers, json={"dueDate": "2026-12-24"})
        assert backlogged.status_code == 201, backlogged.text
        assert backlogged.json()["state"] == "Backlogged" and backlogged.json()["started_at"] is None
        requested = await api.post(f"{V3}/job-requests/{large['id']}", headers=headers)
        assert requested.status_code == 201
        assert_error(await api.post(f"{V3}/backlog/{small['id']}", headers=headers, json={"dueDate": "soon"}), 400)
        assert_error(await api.post(f"{V3}/backlog/{small['id']}", headers=headers, json={"due": "2026-12-24"}), 400)
        states = (await api.get(f"{V3}/print_jobs?filter[state][eq]=Backlogged", headers=headers)).json()["items"]
        assert sorted(j["build"]["title"] for j in states) == ["Large", "Small"]
        assert all(j["device"] is None for j in states)
        assert (await api.delete(f"{V3}/job-requests/{large['id']}", headers=headers)).status_code == 204
        states = (await api.get(f"{V3}/print_jobs?filter[state][eq]=Backlogged", headers=headers)).json()["items"]
        assert [j["build"]["title"] for j in states] == ["Small"]
        not_backlogged = (await api.get(f"{V3}/print_jobs?filter[state][ne]=Backlogged", headers=headers)).json()
        assert {j["state"] for j in not_backlogged["items"]} <= {"Printing", "Canceled", "Completed"}
