"""Printing a build through the Eiger v3 dialect on a real OctoPrint 1.11 and its virtual printer,
linked to our live server by `layerfleet agent`: upload an STL → slice → build → print on the
device → OctoPrint prints the job's G-code → the job completes with a printed part.

The same flow on a simulated printer is in tests/test_eiger_printing.py; OctoPrint is started
(or the test skipped, or failed in CI) as in tests/test_octoprint_agent.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from agent_helpers import AgentProcess
from agent_helpers import poll_agent as poll
from conftest import Farm
from octoprint_host import OctoPrintHost
from test_eiger_api import V3, basic
from test_eiger_printing import _state_is, sliced_build
from test_octoprint_agent import camera, octoprint  # noqa: F401  (module-scoped fixtures: one OctoPrint here)
from test_slicing import needs_prusaslicer

# A few layers that the virtual printer (~10× real time) prints in about 10 s once hot, plus ~20 s to
# heat from cold: long enough to see it printing, short enough for a test. (`M220 S1000` would
# cut the moves to ~4 s, too short a window to watch the job printing on a loaded machine.)
CUBE_EDGE_MM = 5.0
PRINT_WITHIN = 120.0  # seconds from the job printing to it completed


@needs_prusaslicer
async def test_a_build_printed_on_octoprint_through_our_agent(
        live_url: str, farm: Farm, octoprint: OctoPrintHost, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    owner = await farm.member()
    headers = await basic(farm, owner)
    printer = await farm.printer(owner, "OctoPrint MK3")
    agent = AgentProcess(tmp_path / "agent.log", "--server", live_url, "--token", printer.auth_token,
                         "--octoprint", octoprint.url, "--octoprint-api-key", octoprint.api_key)
    try:
        async with httpx.AsyncClient(base_url=live_url, timeout=30) as api:
            async def device() -> dict[str, Any]:
                return dict((await api.get(f"{V3}/devices/{printer.uuid}", headers=headers)).json())

            await poll(lambda: _state_is(api, headers, printer.uuid, "Ready"), "the device to be Ready", agent)
            build = await sliced_build(api, headers, tmp_path, "Tiny cube", CUBE_EDGE_MM)

            response = await api.post(f"{V3}/devices/{printer.uuid}", headers=headers, json={"build": build["id"]})
            assert response.status_code == 201, response.text
            job = response.json()
            assert job["state"] == "Printing" and job["started_at"] is None and job["ended_at"] is None

            async def job_in(state: str) -> dict[str, Any] | None:
                body = (await api.get(f"{V3}/print_jobs/{job['id']}", headers=headers)).json()
                return dict(body) if body["state"] == state else None

            # The agent fetched the G-code by its signed link, uploaded it to OctoPrint under the
            # job's file name and had it printed.
            async def octoprint_in(*states: str) -> dict[str, Any] | None:
                body = await asyncio.to_thread(octoprint.job)
                return body if body["state"] in states else None

            printing = await poll(lambda: octoprint_in("Starting", "Printing"), "OctoPrint to print the G-code", agent)
            assert printing["job"]["file"]["name"] == f"lf-tiny-cube-{job['id'][:8]}.gcode", printing
            assert printing["job"]["file"]["origin"] == "local" and printing["job"]["file"]["size"] > 1000, printing

            # Our device follows: Printing, with the job as its active job.
            async def device_printing() -> dict[str, Any] | None:
                shown = await device()
                return shown if shown["state"] == "Printing" and shown.get("active_job") else None

            shown = await poll(device_printing, "the device to show the job printing", agent)
            assert shown["active_job"]["id"] == job["id"], shown
            assert shown["active_job"]["build"]["id"] == build["id"], shown

            # The job is "Printing" from the dispatch on; it starts once the agent reports the print.
            async def job_started() -> dict[str, Any] | None:
                body = await job_in("Printing")
                return body if body and body["started_at"] else None

            running = await poll(job_started, "the job to be linked to OctoPrint's print", agent)
            assert running["device"]["id"] == printer.uuid and running["ended_at"] is None, running

            # The print ends in OctoPrint, and the job is completed with its printed part.
            done = await poll(lambda: job_in("Completed"), "the job to complete", agent, within=PRINT_WITHIN)
            assert done["started_at"] is not None and done["ended_at"] is not None, done
            assert done["started_at"] <= done["ended_at"], done
            # OctoPrint raises PrintDone while still "Finishing"; it is idle right after.
            finished = await poll(lambda: octoprint_in("Operational"), "OctoPrint to finish the print", agent)
            assert finished["job"]["file"]["name"] == printing["job"]["file"]["name"], finished
            assert finished["progress"]["completion"] == 100, finished
            parts = (await api.get(f"{V3}/printed_parts", headers=headers)).json()["items"]
            assert [(p["state"], p["print_job"]["id"]) for p in parts] == [("Printed", job["id"])], parts
    finally:
        await asyncio.to_thread(octoprint.cancel_print)
        exit_code = await asyncio.to_thread(agent.stop)
    assert exit_code == 0, agent.log()
    assert "Traceback" not in agent.log(), agent.log()
