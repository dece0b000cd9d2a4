"""End to end: our server, a real Moonraker with Klipper's real host program (klippy), and
`layerfleet agent --moonraker` as a separate process linking the two, the way a print farm runs it.

tests/moonraker_host.py says what is simulated: the printer's micro-controller, so actual
temperatures stay 0 °C (only targets are checked here) and heater waits return at once.
"""

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
from moonraker_host import MoonrakerHost, paced_print, required_host

FILE_NAME = "e2e part.gcode"  # a space, as real file names have
# About 40 s on the simulated printer: long enough for every step below; the test cancels it.
LONG_PRINT = paced_print(40, 250)
# The seed's pause settings for a new printer (layerfleet.fleet.models), which the server sends
# with the pause command: retract 6.5 mm, lift 2.5 mm, nozzle heater off, bed heater left on.
RETRACT, LIFT = 6.5, 2.5


@pytest.fixture(scope="module")
def moonraker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoonrakerHost]:
    yield from required_host(tmp_path_factory)


async def test_the_agent_links_our_server_and_moonraker(
        live_url: str, farm: Farm, moonraker: MoonrakerHost, tmp_path: Path) -> None:
    # The host is shared by both database backends' runs: start each from an idle printer.
    await asyncio.to_thread(moonraker.reset_printer)
    owner = await farm.member()
    printer = await farm.printer(owner, "Voron 2.4")
    agent = AgentProcess(tmp_path / "agent.log", "--server", live_url, "--token", printer.auth_token,
                         "--moonraker", moonraker.url, "--moonraker-api-key", moonraker.api_key)
    try:
        async with httpx.AsyncClient(base_url=live_url, headers=owner.headers, timeout=10) as api:
            view = ServerView(api, printer.id)
            shown, state_is, our_prints = view.printer, view.state_is, view.prints

            async def klipper(*objects: str) -> dict[str, Any]:
                return await asyncio.to_thread(moonraker.query, *objects)

            async def klipper_says(state: str) -> bool:
                return bool((await klipper("print_stats"))["print_stats"]["state"] == state)

            await poll(lambda: state_is("Operational"), "the agent to report the idle printer", agent)
            assert (await shown())["settings"]["agent_name"] == "layerfleet_agent"

            # Started from Moonraker itself (as from Mainsail or Fluidd), not through our server.
            await asyncio.to_thread(moonraker.upload, FILE_NAME, LONG_PRINT, start=True)

            async def printing_with_targets() -> dict[str, Any] | None:
                status = (await shown()).get("status") or {}
                temperatures = status.get("temperatures") or {}
                # Targets only: the simulated MCU sends no readings, so actuals stay at 0 °C.
                targets = ((temperatures.get("tool0") or {}).get("target"),
                           (temperatures.get("bed") or {}).get("target"))
                printing = status.get("state", {}).get("text") == "Printing"
                return status if printing and targets == (205.0, 60.0) else None

            status = await poll(printing_with_targets, "the server to show the printer printing at its targets", agent)
            assert status["job"]["file"]["name"] == FILE_NAME
            assert status["state"]["flags"]["printing"] is True and status["state"]["flags"]["paused"] is False
            started = await poll(our_prints, "the server to record the print", agent)
            assert [(p["filename"], p["finished_at"], p["cancelled_at"]) for p in started] == [(FILE_NAME, None, None)]

            # The test print keeps the head at Z 0.2 and the filament still once primed, so the
            # pause settings' moves can be checked exactly against where the head was.
            before = (await klipper("toolhead"))["toolhead"]["position"]
            assert before[2] == pytest.approx(0.2)
            paused = await api.post(f"/api/v1/printers/{printer.id}/pause_print/")
            assert paused.status_code == 200 and paused.json()["succeeded"] is True, paused.text
            await poll(lambda: klipper_says("paused"), "Klipper to pause", agent)

            async def pause_settings_applied() -> dict[str, Any] | None:
                # The agent sends the moves and heater commands after Klipper's PAUSE, one by one.
                status = await klipper("toolhead", "extruder", "heater_bed")
                lifted = status["toolhead"]["position"][2] == pytest.approx(before[2] + LIFT)
                return status if lifted and status["extruder"]["target"] == 0.0 else None

            status = await poll(pause_settings_applied, "the pause settings to take effect in Klipper", agent)
            assert status["toolhead"]["position"][3] == pytest.approx(before[3] - RETRACT)
            assert status["heater_bed"]["target"] == 60.0  # bed_off_on_pause defaults to off
            await poll(lambda: state_is("Paused"), "the server to show Paused", agent)

            resumed = await api.post(f"/api/v1/printers/{printer.id}/resume_print/")
            assert resumed.status_code == 200 and resumed.json()["succeeded"] is True, resumed.text
            await poll(lambda: klipper_says("printing"), "Klipper to print again", agent)
            status = await klipper("toolhead", "extruder", "heater_bed")
            # The agent heated the nozzle back up and pushed the filament back; Klipper's RESUME
            # moved the head back down to where the print was.
            assert status["extruder"]["target"] == 205.0 and status["heater_bed"]["target"] == 60.0
            assert status["toolhead"]["position"][2] == pytest.approx(before[2])
            assert status["toolhead"]["position"][3] == pytest.approx(before[3])
            await poll(lambda: state_is("Printing"), "the server to show Printing", agent)

            cancelled = await api.post(f"/api/v1/printers/{printer.id}/cancel_print/")
            assert cancelled.status_code == 200 and cancelled.json()["succeeded"] is True, cancelled.text
            await poll(lambda: klipper_says("cancelled"), "Klipper to cancel", agent)

            async def print_cancelled() -> bool:
                return any(p["cancelled_at"] for p in await our_prints())

            await poll(print_cancelled, "the print to end as cancelled", agent)
            ended = await our_prints()
            assert len(ended) == 1 and ended[0]["filename"] == FILE_NAME and ended[0]["finished_at"] is None
            await poll(lambda: state_is("Operational"), "the server to show the printer idle", agent)
    finally:
        try:
            exit_code = await asyncio.to_thread(agent.stop)
        finally:
            # Whatever failed, the next run (the other database backend) finds an idle printer.
            await asyncio.to_thread(moonraker.reset_printer)
    assert exit_code == 0, agent.log()
    assert "Traceback" not in agent.log(), agent.log()
