"""The simulator and the agent runner against a real Uvicorn server: linking by one-time code,
realistic status, commands obeyed, pictures, and `layerfleet simulate` as a real process."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from agent_helpers import prints_of, until
from conftest import Farm
from layerfleet.printer_agent.connector import Event, PauseOptions, PrinterState
from layerfleet.printer_agent.runner import AgentRunner, Cadence, Stopped
from layerfleet.simulator.farm import TokenStore, link_printers, wait_for_server
from layerfleet.simulator.printer import SimulatedCamera, SimulatedPrinter, SimulationOptions

FAST = Cadence(idle_status=1.0, active_status=0.3, watched_picture=0.5, unwatched_picture=5.0,
               min_backoff=0.1, max_backoff=0.5, http_timeout=5.0)
QUICK_PRINTS = SimulationOptions(speed=10.0, min_print_minutes=3, max_print_minutes=3, idle_seconds=(5.0, 5.0),
                                 heating_rate=20.0)


async def poll(check: Any, within: float = 30.0) -> Any:
    return await until(check, within)


# --- the simulated printer on its own ------------------------------------------------------------

def test_a_simulated_print_heats_prints_and_finishes() -> None:
    printer = SimulatedPrinter("sim", SimulationOptions(min_print_minutes=10, max_print_minutes=10), seed=3)
    events: list[Event] = []
    printer._emit = lambda event, data: events.append(event)
    printer.idle_left = 0
    printer.advance(1)
    assert printer.state is PrinterState.PRINTING and events == [Event.PRINT_STARTED]
    assert printer.snapshot().completion == 0  # heating first
    for _ in range(200):
        printer.advance(1)
    heated = printer.snapshot()
    assert heated.temperatures["tool0"].actual == pytest.approx(heated.temperatures["tool0"].target, abs=1)
    assert heated.completion is not None and 0 < heated.completion < 100
    assert heated.layer is not None and heated.z == pytest.approx(heated.layer * 0.2, abs=0.01)
    while Event.PRINT_DONE not in events:
        printer.advance(1)
        assert printer.elapsed_seconds < 700, "a 10-minute print must be done within 700 s, heating included"
    assert printer.state is PrinterState.OPERATIONAL and printer.job is None


async def test_pause_applies_the_pause_settings_and_resume_reheats_first() -> None:
    printer = SimulatedPrinter("sim", SimulationOptions(min_print_minutes=10, max_print_minutes=10), seed=4)
    printer._emit = lambda event, data: None
    printer.idle_left = 0
    for _ in range(300):
        printer.advance(1)
    done = printer.progress
    await printer.pause(PauseOptions(retract=6.5, lift_z=2.5, tools_off=True, bed_off=False))
    assert printer.gcode_received == ["G1 E-6.5", "G1 Z+2.5", "M104 S0"]
    assert printer.snapshot().state is PrinterState.PAUSED and printer.bed.target != 0
    for _ in range(120):
        printer.advance(1)
    assert printer.progress == done and (printer.tool.actual or 0) < 150
    await printer.resume()
    printer.advance(1)
    assert printer.state is PrinterState.RESUMING and printer.progress == done
    for _ in range(120):
        printer.advance(1)
    assert printer.state is PrinterState.PRINTING and printer.progress > done
    await printer.cancel()
    assert printer.state is PrinterState.OPERATIONAL and printer.job is None


def test_the_camera_shows_spaghetti_only_on_a_failing_print() -> None:
    printer = SimulatedPrinter("sim", SimulationOptions(fail_rate=1.0, min_print_minutes=10, max_print_minutes=10),
                               seed=5)
    printer._emit = lambda event, data: None
    printer.idle_left = 0
    printer.advance(1)
    assert printer.job is not None and printer.job.fails_at is not None
    assert printer.spaghetti == 0
    camera = SimulatedCamera(printer)
    frame = Image.open(io.BytesIO(camera.render()))
    assert frame.size == (640, 480) and frame.format == "JPEG"
    printer.heated = True
    printer.printed_seconds = printer.job.duration * (printer.job.fails_at + 0.1)
    assert printer.spaghetti > 0.5


# --- simulated printers linked to a real server ---------------------------------------------------

async def test_simulated_printers_link_report_and_obey_commands(live_url: str, farm: Farm, tmp_path: Path) -> None:
    owner = await farm.member()
    store = TokenStore(tmp_path / "tokens.json")
    links = await link_printers(live_url, owner.token, 2, store)
    assert [link.name for link in links] == ["Simulated printer 1", "Simulated printer 2"]
    again = await link_printers(live_url, owner.token, 2, store)
    assert again == links  # a second run brings back the same printers
    printers = [SimulatedPrinter(link.name, QUICK_PRINTS, seed=n) for n, link in enumerate(links)]
    runners = [AgentRunner(live_url, link.token, p, SimulatedCamera(p), cadence=FAST, label=link.name)
               for link, p in zip(links, printers, strict=True)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        async with httpx.AsyncClient(base_url=live_url, headers=owner.headers, timeout=10) as api:
            listed = (await api.get("/api/v1/printers/")).json()
            assert sorted(p["name"] for p in listed) == ["Simulated printer 1", "Simulated printer 2"]
            printer_id = next(p["id"] for p in listed if p["name"] == "Simulated printer 1")

            async def printing() -> dict[str, Any] | None:
                found = (await api.get(f"/api/v1/printers/{printer_id}/")).json()
                status = found.get("status") or {}
                progress = (status.get("progress") or {}).get("completion") or 0
                return found if status.get("state", {}).get("text") == "Printing" and progress > 0 else None

            shown = await poll(printing)
            assert shown["settings"]["agent_name"] == "layerfleet_agent"
            tool = shown["status"]["temperatures"]["tool0"]
            assert tool["target"] > 150 and abs(tool["actual"] - tool["target"]) < 5
            assert shown["status"]["currentZ"] is not None
            assert (await poll(lambda: _picture(api, printer_id))).startswith("http")
            prints = await prints_of(farm, printer_id)
            job = printers[0].job
            assert job is not None and prints and prints[-1].filename == job.file_name
            assert prints[-1].finished_at is None and prints[-1].cancelled_at is None

            paused = await api.post(f"/api/v1/printers/{printer_id}/pause_print/")
            assert paused.json()["succeeded"] is True
            await poll(lambda: _state_is(api, printer_id, "Paused"))
            assert printers[0].state is PrinterState.PAUSED
            # The printer's own pause settings travelled with the command (seed defaults).
            assert printers[0].gcode_received == ["G1 E-6.5", "G1 Z+2.5", "M104 S0"]
            assert runners[0].commands_received[-1]["args"] == {
                "retract": 6.5, "lift_z": 2.5, "tools_off": True, "bed_off": False}

            assert (await api.post(f"/api/v1/printers/{printer_id}/resume_print/")).json()["succeeded"] is True
            await poll(lambda: _state_is(api, printer_id, "Printing"))

            cancelled_print = (await prints_of(farm, printer_id))[-1]
            assert (await api.post(f"/api/v1/printers/{printer_id}/cancel_print/")).json()["succeeded"] is True

            async def ended() -> bool:
                latest = {p.id: p for p in await prints_of(farm, printer_id)}[cancelled_print.id]
                return latest.cancelled_at is not None

            await poll(ended)
            assert printers[0].state is PrinterState.OPERATIONAL
    finally:
        for runner in runners:
            runner.stop()
        assert await asyncio.gather(*tasks) == [Stopped.REQUESTED, Stopped.REQUESTED]


async def _picture(api: httpx.AsyncClient, printer_id: int) -> str | None:
    pic = (await api.get(f"/api/v1/printers/{printer_id}/")).json().get("pic") or {}
    url = pic.get("img_url")
    if not url:
        return None
    image = await api.get(url)
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (640, 480)
    return str(url)


async def _state_is(api: httpx.AsyncClient, printer_id: int, text: str) -> bool:
    found = (await api.get(f"/api/v1/printers/{printer_id}/")).json()
    return bool((found.get("status") or {}).get("state", {}).get("text") == text)


async def test_a_refused_token_stops_the_agent(live_url: str) -> None:
    printer = SimulatedPrinter("sim", QUICK_PRINTS)
    runner = AgentRunner(live_url, "not-a-token", printer, cadence=FAST)
    assert await asyncio.wait_for(runner.run(), 10) is Stopped.UNAUTHORIZED


async def test_two_agents_with_one_token_the_older_is_told_it_is_a_duplicate(live_url: str, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    first = AgentRunner(live_url, printer.auth_token, SimulatedPrinter("a", QUICK_PRINTS), cadence=FAST)
    first_task = asyncio.create_task(first.run())
    await poll(lambda: _true(first.connected))
    second = AgentRunner(live_url, printer.auth_token, SimulatedPrinter("b", QUICK_PRINTS), cadence=FAST)
    second_task = asyncio.create_task(second.run())
    try:
        assert await asyncio.wait_for(first_task, 15) is Stopped.DUPLICATE
        assert second.connected and not second_task.done()
    finally:
        second.stop()
        await second_task


async def _true(value: bool) -> bool:
    return value


# --- `layerfleet simulate` as a real process -------------------------------------------------------

def _simulate(live_url: str, token: str, state: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LAYERFLEET_LOG_LEVEL": "warning"}
    return subprocess.Popen(
        [sys.executable, "-m", "layerfleet", "simulate", "--server", live_url, "--token", token, "--printers", "2",
         "--speed", "30", "--print-minutes", "2-3", "--state", str(state), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


async def test_the_simulate_command_runs_printers_and_reuses_them(live_url: str, farm: Farm, tmp_path: Path) -> None:
    owner = await farm.member()
    state = tmp_path / "sim.json"
    async with httpx.AsyncClient(base_url=live_url, headers=owner.headers, timeout=10) as api:
        for _ in range(2):  # the second run brings back the same two printers
            process = _simulate(live_url, owner.token, state)
            try:
                async def all_online() -> list[dict[str, Any]] | None:
                    listed = (await api.get("/api/v1/printers/")).json()
                    texts = [(p.get("status") or {}).get("state", {}).get("text") for p in listed]
                    return listed if len(listed) == 2 and all(texts) else None

                listed = await poll(all_online, within=30)
                assert {p["name"] for p in listed} == {"Simulated printer 1", "Simulated printer 2"}
            finally:
                process.send_signal(signal.SIGINT)
                output, _ = process.communicate(timeout=20)
            assert process.returncode == 0, output
            assert "simulator stopped" in output
    assert state.stat().st_mode & 0o777 == 0o600


async def test_the_simulate_command_gives_each_printer_the_cameras_asked_for(
        live_url: str, farm: Farm, tmp_path: Path) -> None:
    owner = await farm.member()
    process = _simulate(live_url, owner.token, tmp_path / "sim.json", "--cameras", "2", "--preheated",
                        "--picture-interval", "1")
    try:
        async with httpx.AsyncClient(base_url=live_url, headers=owner.headers, timeout=10) as api:
            async def both_cameras_seen() -> list[list[dict[str, Any]]] | None:
                listed = (await api.get("/api/v1/printers/")).json()
                if len(listed) != 2:
                    return None
                cameras = [(await api.get(f"/api/v1/printers/{p['id']}/cameras/")).json() for p in listed]
                seen = all(sorted((c["name"] or "") for c in each if c["pic"]) == ["", "side-1"] for each in cameras)
                return cameras if seen else None

            cameras = await poll(both_cameras_seen, within=90)
            side = next(c for c in cameras[0] if c["name"] == "side-1")
            assert side["primary"] is False and side["nozzle"] is False
            printer_id = (await api.get("/api/v1/printers/")).json()[0]["id"]

            async def side_picture() -> bytes | None:
                # The latest picture replaces the one before (a second apart): ask again if it went.
                listed = (await api.get(f"/api/v1/printers/{printer_id}/cameras/")).json()
                url = next(c for c in listed if c["name"] == "side-1")["pic"]["img_url"]
                answer = await api.get(url)
                return answer.content if answer.status_code == 200 else None

            picture = await poll(side_picture, within=30)
            assert Image.open(io.BytesIO(picture)).size == (640, 480)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output


def test_another_simulated_camera_sees_the_same_bed_from_elsewhere() -> None:
    printer = SimulatedPrinter("views", seed=3)
    main, side = SimulatedCamera(printer).render(), SimulatedCamera(printer, view=1).render()
    main_image, side_image = Image.open(io.BytesIO(main)), Image.open(io.BytesIO(side))
    assert main_image.size == side_image.size
    difference = sum(abs(a - b) for a, b in zip(main_image.convert("L").tobytes(), side_image.convert("L").tobytes(),
                                                strict=True))
    assert difference / (main_image.width * main_image.height) > 2  # another view, not the same picture


def test_simulate_refuses_a_bad_camera_count() -> None:
    result = subprocess.run([sys.executable, "-m", "layerfleet", "simulate", "--server", "http://x", "--token", "t",
                             "--cameras", "9"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cameras per printer are 1 to 4" in result.stderr


def test_simulate_refuses_a_bad_fail_rate() -> None:
    result = subprocess.run([sys.executable, "-m", "layerfleet", "simulate", "--server", "http://x", "--token", "t",
                             "--fail-rate", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "fail rate" in result.stderr


async def test_simulate_with_a_token_that_cannot_link_says_why(live_url: str, farm: Farm, tmp_path: Path) -> None:
    from layerfleet.accounts.models import Role

    viewer = await farm.member(Role.VIEWER)
    process = _simulate(live_url, viewer.token, tmp_path / "sim.json")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "refused the API token (403)" in output


def test_the_demo_hands_its_simulator_the_api_token_out_of_sight_of_ps(tmp_path: Path) -> None:
    from layerfleet.cli import TOKEN_VARIABLE, demo_simulator_command
    from layerfleet.config import Settings

    command, environment = demo_simulator_command(Settings(data_dir=tmp_path), "secret-api-token")
    assert not any("secret-api-token" in part for part in command)
    assert environment[TOKEN_VARIABLE] == "secret-api-token"


async def test_simulate_takes_its_token_from_a_file_or_the_environment(live_url: str, farm: Farm,
                                                                       tmp_path: Path) -> None:
    from layerfleet.accounts.models import Role

    viewer = await farm.member(Role.VIEWER)  # refused at linking: proof that the token was read
    base = [sys.executable, "-m", "layerfleet", "simulate", "--server", live_url, "--state", str(tmp_path / "s.json")]
    environment = {k: v for k, v in os.environ.items() if k != "LAYERFLEET_TOKEN"}
    missing = await asyncio.to_thread(subprocess.run, base, capture_output=True, text=True, timeout=60,
                                      env=environment)
    assert missing.returncode == 2 and "LAYERFLEET_TOKEN" in missing.stderr
    token_file = tmp_path / "token"
    token_file.write_text(viewer.token + "\n")
    for extra, env in ((["--token-file", str(token_file)], environment),
                       ([], {**environment, "LAYERFLEET_TOKEN": viewer.token})):
        taken = await asyncio.to_thread(subprocess.run, base + extra, capture_output=True, text=True, timeout=60,
                                        env=env)
        assert taken.returncode == 2 and "refused the API token (403)" in taken.stdout + taken.stderr


async def test_the_simulator_waits_while_a_proxy_answers_for_servers_not_up_yet() -> None:
    answers = iter([502, 503, 504, 401])
    asked: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(1)
        return httpx.Response(next(answers))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://proxy") as client:
        await wait_for_server(client, within=10)
    assert len(asked) == 4  # returned at the first answer from a server itself (401: not linked yet)
