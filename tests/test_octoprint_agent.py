"""End to end: our server, a real OctoPrint 1.11 with its virtual printer, and `layerfleet agent`
as a separate process linking the two, the way a print farm runs it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_helpers import AgentProcess, ServerView
from agent_helpers import poll_agent as poll
from conftest import Farm
from octoprint_host import OctoPrintHost, StaticServer, jpeg, sample_gcode

CAMERA_FRAME = jpeg((640, 480))
# Long enough for every step below; the test cancels it.
LONG_PRINT = sample_gcode(moves=2000)


@pytest.fixture(scope="module")
def camera() -> Iterator[StaticServer]:
    with StaticServer({"/snapshot.jpg": ("image/jpeg", CAMERA_FRAME)}) as server:
        yield server


@pytest.fixture(scope="module")
def octoprint(tmp_path_factory: pytest.TempPathFactory, camera: StaticServer) -> Iterator[OctoPrintHost]:
    with OctoPrintHost(tmp_path_factory.mktemp("octoprint"), snapshot_url=f"{camera.url}/snapshot.jpg") as host:
        yield host


async def test_the_agent_links_our_server_and_octoprint(
        live_url: str, farm: Farm, octoprint: OctoPrintHost, tmp_path: Path) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "OctoPrint MK3")
    agent = AgentProcess(tmp_path / "agent.log", "--server", live_url, "--token", printer.auth_token,
                         "--octoprint", octoprint.url, "--octoprint-api-key", octoprint.api_key)
    try:
        async with httpx.AsyncClient(base_url=live_url, headers=owner.headers, timeout=10) as api:
            view = ServerView(api, printer.id)
            shown, state_is, our_prints = view.printer, view.state_is, view.prints

            async def octoprint_says(text: str) -> bool:
                return await asyncio.to_thread(octoprint.job_state) == text

            await poll(lambda: state_is("Operational"), "the agent to report the idle printer", agent)
            assert (await shown())["settings"]["agent_name"] == "layerfleet_agent"

            # A webcam flipped in OctoPrint's settings reaches the server without a reconnect.
            # Toggled: the OctoPrint host is shared by both database backends' runs.
            flipped = not (await shown())["settings"]["webcam_flipH"]
            await asyncio.to_thread(octoprint.request, "POST", "/api/settings",
                                    json={"plugins": {"classicwebcam": {"flipH": flipped}}})

            async def shown_flipped() -> bool:
                return bool((await shown())["settings"]["webcam_flipH"] is flipped)

            await poll(shown_flipped, "the webcam flipped in OctoPrint to reach the server", agent)

            await asyncio.to_thread(octoprint.start_print, "e2e part.gcode", LONG_PRINT)

            async def printing_hot() -> dict[str, Any] | None:
                status = (await shown()).get("status") or {}
                tool = (status.get("temperatures") or {}).get("tool0") or {}
                hot = tool.get("target") == 60 and (tool.get("actual") or 0) > 50
                return status if status.get("state", {}).get("text") == "Printing" and hot else None

            status = await poll(printing_hot, "the server to show the printer printing and hot", agent)
            assert status["job"]["file"]["name"] == "e2e part.gcode"
            assert status["temperatures"]["bed"]["target"] == 40
            started = await poll(our_prints, "the server to record the print", agent)
            assert [(p["filename"], p["finished_at"], p["cancelled_at"]) for p in started] == [
                ("e2e part.gcode", None, None)]

            async def camera_picture() -> str | None:
                url = ((await shown()).get("pic") or {}).get("img_url")
                return str(url) if url else None

            async def camera_frame_served() -> bool:
                # A newer picture may replace (delete) the one just listed: read the current one.
                url = await camera_picture()
                return url is not None and (await api.get(url)).content == CAMERA_FRAME

            await poll(camera_frame_served, "OctoPrint's webcam frame served as the printer's picture", agent)

            mark = octoprint.serial_log_mark()
            paused = await api.post(f"/api/v1/printers/{printer.id}/pause_print/")
            assert paused.status_code == 200 and paused.json()["succeeded"] is True, paused.text
            await poll(lambda: octoprint_says("Paused"), "OctoPrint to pause", agent)
            # The printer's pause settings (seed defaults) travel with the command.
            await poll(lambda: asyncio.to_thread(lambda: "M104 S0" in octoprint.sent_since(mark)),
                       "the nozzle heater to be turned off", agent)
            assert {"G1 E-6.500 F1800", "G1 Z2.500 F600", "M104 S0"} <= set(octoprint.sent_since(mark))
            await poll(lambda: state_is("Paused"), "the server to show Paused", agent)

            resumed = await api.post(f"/api/v1/printers/{printer.id}/resume_print/")
            assert resumed.status_code == 200 and resumed.json()["succeeded"] is True, resumed.text
            await poll(lambda: octoprint_says("Printing"), "OctoPrint to print again after reheating", agent)
            await poll(lambda: state_is("Printing"), "the server to show Printing", agent)

            cancelled = await api.post(f"/api/v1/printers/{printer.id}/cancel_print/")
            assert cancelled.status_code == 200 and cancelled.json()["succeeded"] is True, cancelled.text
            await poll(lambda: octoprint_says("Operational"), "OctoPrint to cancel", agent)

            async def print_cancelled() -> bool:
                return any(p["cancelled_at"] for p in await our_prints())

            await poll(print_cancelled, "the print to end as cancelled", agent)
            ended = await our_prints()
            assert len(ended) == 1 and ended[0]["filename"] == "e2e part.gcode" and ended[0]["finished_at"] is None
            await poll(lambda: state_is("Operational"), "the server to show the printer idle", agent)
    finally:
        await asyncio.to_thread(octoprint.cancel_print)
        exit_code = await asyncio.to_thread(agent.stop)
    assert exit_code == 0, agent.log()
    assert "Traceback" not in agent.log(), agent.log()
