"""`layerfleet agent`'s own parts: print events kept across a server restart, cameras, the
configuration file and the command line."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from agent_helpers import prints_of, until
from conftest import Farm
from layerfleet.config import Settings
from layerfleet.fleet.models import Printer
from layerfleet.printer_agent.camera import MjpegStreamCamera, SnapshotUrlCamera
from layerfleet.printer_agent.config import AgentConfig, ConfigError
from layerfleet.printer_agent.connector import Event, PauseOptions, PrinterState
from layerfleet.printer_agent.runner import AgentRunner, Backoff, Cadence, Stopped, websocket_url
from layerfleet.simulator.printer import SimulatedPrinter, SimulationOptions
from live_server import LiveServer
from octoprint_host import StaticServer, jpeg

FAST = Cadence(idle_status=1.0, active_status=0.3, watched_picture=0.5, unwatched_picture=5.0,
               min_backoff=0.1, max_backoff=0.5, http_timeout=5.0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_print_events_survive_a_server_restart(settings: Settings, farm: Farm) -> None:
    owner = await farm.member()
    record = await farm.printer(owner)
    port = _free_port()
    printer = SimulatedPrinter("sim", SimulationOptions(speed=10, min_print_minutes=30, max_print_minutes=30,
                                                        idle_seconds=(1, 1), heating_rate=50), seed=7)
    events: list[Event] = []
    runner = AgentRunner(f"http://127.0.0.1:{port}", record.auth_token, printer, cadence=FAST)
    original_sink = runner._on_event

    def watch(event: Event, data: dict[str, object]) -> None:
        events.append(event)
        original_sink(event, data)

    runner._on_event = watch  # type: ignore[method-assign]
    server = LiveServer(settings, port=port)
    server.__enter__()
    task = asyncio.create_task(runner.run())
    try:
        first = await until(lambda: _open_print(farm, record.id), within=30)
        server.__exit__(None, None, None)
        await until(lambda: _is(not runner.connected), within=15)
        # While the server is away the print ends and the next one starts.
        assert printer.job is not None
        printer.printed_seconds = printer.job.duration
        await until(lambda: _is(events.count(Event.PRINT_STARTED) >= 2), within=15)
        second_file = printer.job.file_name
        server = LiveServer(settings, port=port)
        server.__enter__()

        async def both_known() -> bool:
            prints = {p.id: p for p in await prints_of(farm, record.id)}
            return prints[first.id].finished_at is not None and any(
                p.filename == second_file and p.finished_at is None for p in prints.values() if p.id != first.id)

        try:
            await until(both_known, within=30)
        except AssertionError:
            found = [(p.ext_id, p.filename, p.finished_at, p.cancelled_at) for p in await prints_of(farm, record.id)]
            raise AssertionError(f"prints {found}, expected {second_file} open, agent events {events}") from None
        assert events.count(Event.PRINT_DONE) == 1
        assert runner.connected
    finally:
        runner.stop()
        assert await asyncio.wait_for(task, 15) is Stopped.REQUESTED
        server.__exit__(None, None, None)


async def _open_print(farm: Farm, printer_id: int) -> object:
    prints = await prints_of(farm, printer_id)
    return next((p for p in prints if p.finished_at is None and p.cancelled_at is None), None)


async def _is(value: bool) -> bool:
    return value


class RecordingServer:
    """A server that only looks the printer up and records what arrives on the websocket."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    def lookup(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/api/v1/octo/printer/"):
            return connection.respond(HTTPStatus.OK, json.dumps({"printer": {"id": 1, "name": "sim"}}))
        return None

    async def websocket(self, connection: ServerConnection) -> None:
        async for raw in connection:
            self.frames.append(json.loads(raw))
            self._arrived.set()

    async def frame_where(self, check: Callable[[dict[str, Any]], bool], within: float = 15) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                found = next((f for f in self.frames if check(f)), None)
                if found is not None:
                    return found
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def agent_on_recording_server(printer: SimulatedPrinter,
                                    before_start: Callable[[AgentRunner], None] = lambda runner: None,
                                    ) -> AsyncIterator[tuple[RecordingServer, AgentRunner]]:
    recording = RecordingServer()
    async with serve(recording.websocket, "127.0.0.1", 0, process_request=recording.lookup) as server:
        port = server.sockets[0].getsockname()[1]
        runner = AgentRunner(f"http://127.0.0.1:{port}", "token", printer, cadence=FAST)
        before_start(runner)
        task = asyncio.create_task(runner.run())
        try:
            yield recording, runner
        finally:
            runner.stop()
            assert await asyncio.wait_for(task, 15) is Stopped.REQUESTED


def _idle_printer() -> SimulatedPrinter:
    return SimulatedPrinter("sim", SimulationOptions(idle_seconds=(3600, 3600)), seed=1)


async def test_the_first_frame_of_a_connection_says_who_the_agent_is_even_behind_kept_events() -> None:
    def hear_an_event_before_reaching_the_server(runner: AgentRunner) -> None:
        runner._on_event(Event.PRINTER_STATE_CHANGED, {"state": "Operational"})

    async with agent_on_recording_server(_idle_printer(), hear_an_event_before_reaching_the_server) as (server, _):
        await server.frame_where(lambda frame: "event" not in frame)
    first, second = server.frames[:2]
    # The kept event goes first, and it carries who the agent is.
    assert first["event"]["event_type"] == Event.PRINTER_STATE_CHANGED.value
    assert first["settings"]["agent"]["name"] == "layerfleet_agent"
    assert "event" not in second and second["settings"]["agent"]["name"] == "layerfleet_agent"


async def test_settings_changed_on_the_host_reach_the_server_without_a_reconnect() -> None:
    printer = _idle_printer()
    async with agent_on_recording_server(printer) as (server, runner):
        await server.frame_where(lambda frame: "settings" in frame)
        # Plain statuses at the idle pace carry no settings while nothing changed.
        count = len(server.frames)
        await server.frame_where(lambda frame: len(server.frames) > count)
        assert all("settings" not in frame for frame in server.frames[count:])
        turned = [{**printer.host_settings()["webcams"][0], "rotation": 90}]  # type: ignore[index]
        printer.host_settings = lambda: {"webcams": turned}  # type: ignore[method-assign]
        runner._become_active()
        changed = await server.frame_where(lambda frame: "webcams" in frame.get("settings", {})
                                           and frame["settings"]["webcams"] == turned)
        assert changed["settings"]["agent"]["name"] == "layerfleet_agent"
        assert runner.connected


def test_backoff_grows_to_its_ceiling_with_jitter() -> None:
    backoff = Backoff(1, 8)
    delays = [backoff.next_delay() for _ in range(6)]
    assert 0.5 <= delays[0] <= 1 and 4 <= delays[-1] <= 8
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_websocket_url_follows_the_server_scheme() -> None:
    assert websocket_url("https://farm.example.com/") == "wss://farm.example.com/ws/dev/"
    assert websocket_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws/dev/"
    with pytest.raises(ValueError, match="http"):
        websocket_url("farm.example.com")


# --- cameras -------------------------------------------------------------------------------------

def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(out, "JPEG")
    return out.getvalue()


async def test_a_frame_is_grabbed_from_an_mjpeg_stream() -> None:
    first, second = _jpeg((255, 0, 0)), _jpeg((0, 0, 255))

    async def stream() -> AsyncIterator[bytes]:
        for frame in (first, second):
            part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(frame) + frame + b"\r\n"
            for start in range(0, len(part), 100):  # the frame arrives in pieces
                yield part[start:start + 100]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"},
                              content=stream())

    camera = MjpegStreamCamera("http://cam/stream", client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    grabbed = await camera.snapshot()
    assert grabbed == first
    assert Image.open(io.BytesIO(grabbed)).getpixel((5, 5))[0] > 200


async def test_snapshot_cameras_refuse_what_is_not_a_jpeg() -> None:
    answers = {"/ok": httpx.Response(200, content=_jpeg((0, 255, 0))),
               "/html": httpx.Response(200, content=b"<html>login</html>"),
               "/gone": httpx.Response(404)}
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: answers[request.url.path]))
    assert (await SnapshotUrlCamera("http://cam/ok", client=client).snapshot() or b"").startswith(b"\xff\xd8")
    assert await SnapshotUrlCamera("http://cam/html", client=client).snapshot() is None
    with pytest.raises(OSError, match="404"):
        await SnapshotUrlCamera("http://cam/gone", client=client).snapshot()


# --- configuration and command line -------------------------------------------------------------------

def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('server = "http://farm:8000"\ntoken = "abc"\n[octoprint]\nurl = "http://op"\napi_key = "k"\n'
                    '[camera]\nsnapshot_url = "http://cam/snap"\n')
    config = AgentConfig.from_file(path)
    assert (config.server, config.octoprint_url, config.octoprint_api_key, config.snapshot_url) == (
        "http://farm:8000", "http://op", "k", "http://cam/snap")
    overridden = config.overridden(server="https://other", token=None)
    assert overridden.server == "https://other" and overridden.token == "abc"
    overridden.validate()
    path.write_text('server = "http://farm"\n[printer]\nurl = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown section \[printer\]"):
        AgentConfig.from_file(path)
    path.write_text('server = "http://farm"\nservre = "x"\n')
    with pytest.raises(ConfigError, match="servre"):
        AgentConfig.from_file(path)
    path.write_text("server = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        AgentConfig.from_file(path)
    with pytest.raises(ConfigError, match="exactly one printer host"):
        AgentConfig(server="http://farm", token="t").validate()
    with pytest.raises(ConfigError, match="API key"):
        AgentConfig(server="http://farm", token="t", octoprint_url="http://op").validate()
    with pytest.raises(ConfigError, match="--code"):
        AgentConfig(server="http://farm", moonraker_url="http://mr").validate()


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layerfleet", "agent", *args], capture_output=True, text=True,
                          timeout=60)


def test_agent_help_explains_linking_and_the_config_file() -> None:
    result = _agent("--help")
    assert result.returncode == 0
    for needle in ("--code", "--octoprint", "--moonraker", "--snapshot-url", "[octoprint]", "Exit codes"):
        assert needle in result.stdout


def test_agent_with_incomplete_settings_says_what_is_missing(tmp_path: Path) -> None:
    missing = _agent("--server", "http://127.0.0.1:9", "--token", "t")
    assert missing.returncode == 2 and "--octoprint URL or --moonraker URL" in missing.stderr
    absent = _agent("--config", str(tmp_path / "nope.toml"))
    assert absent.returncode == 2 and "cannot read" in absent.stderr
    odd_url = _agent("--server", "http://127.0.0.1:9", "--token", "t", "--moonraker", "ftp://printer")
    assert odd_url.returncode == 2 and "ftp://printer" in odd_url.stderr


async def test_agent_with_a_wrong_code_says_so(live_url: str) -> None:
    result = await asyncio.to_thread(_agent, "--server", live_url, "--code", "000000", "--moonraker", "http://mr")
    assert result.returncode == 2 and "did not accept code 000000" in result.stderr


async def test_stopping_while_the_server_is_away_ends_at_once(settings: Settings, farm: Farm) -> None:
    owner = await farm.member()
    record = await farm.printer(owner)
    port = _free_port()
    server = LiveServer(settings, port=port)
    server.__enter__()
    runner = AgentRunner(f"http://127.0.0.1:{port}", record.auth_token, SimulatedPrinter("sim"), cadence=FAST)
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: _is(runner.connected), within=20)
    finally:
        server.__exit__(None, None, None)
    await until(lambda: _is(not runner.connected), within=15)
    started = asyncio.get_running_loop().time()
    runner.stop()
    assert await asyncio.wait_for(task, 10) is Stopped.REQUESTED
    assert asyncio.get_running_loop().time() - started < 3


async def test_pictures_resume_at_the_watched_cadence_once_a_resumed_print_has_reheated(
        settings: Settings, farm: Farm) -> None:
    """The server says "watch" while the printer is still resuming (reheating); nothing else
    happens when it moves on to printing, so the agent itself must look again soon."""
    owner = await farm.member()
    record = await farm.printer(owner)
    printer = SimulatedPrinter("sim", SimulationOptions(speed=10, min_print_minutes=60, max_print_minutes=60,
                                                        idle_seconds=(0, 0), heating_rate=2,
                                                        first_print_preheated=True), seed=3)
    with LiveServer(settings) as url:
        # Unwatched pictures far apart, so only the watched cadence can post within the test.
        cadence = dataclasses.replace(FAST, unwatched_picture=60.0)
        runner = AgentRunner(url, record.auth_token, printer, cadence=cadence)
        posted: list[PrinterState] = []
        original_post = runner.post_picture

        async def post() -> None:
            posted.append(printer.state)
            await original_post()

        runner.post_picture = post  # type: ignore[method-assign]
        task = asyncio.create_task(runner.run())
        try:
            await until(lambda: _is(printer.state is PrinterState.PRINTING and len(posted) >= 2), within=30)
            await printer.pause(PauseOptions(tools_off=True))
            await until(lambda: _is(not runner.should_watch), within=15)
            assert printer.tool.actual is not None
            printer.tool.actual -= 80  # cooled down while paused: resuming reheats for seconds
            await printer.resume()
            await until(lambda: _is(runner.should_watch), within=15)
            assert printer.state is PrinterState.RESUMING
            await until(lambda: _is(printer.state is PrinterState.PRINTING), within=30)
            before = len(posted)
            await asyncio.sleep(2.5)
            # Watched cadence 0.5 s; the unwatched one (60 s) would give none.
            assert len(posted) - before >= 2, posted
        finally:
            runner.stop()
            assert await asyncio.wait_for(task, 15) is Stopped.REQUESTED


async def test_a_host_webcam_that_appears_after_the_agent_started_is_watched(settings: Settings, farm: Farm) -> None:
    # On a printer's own computer the agent often starts before OctoPrint or Moonraker answers,
    # or the webcam is set up later: the host's snapshot URL is looked up again, not once.
    owner = await farm.member()
    record = await farm.printer(owner)
    printer = SimulatedPrinter("sim", SimulationOptions(speed=10, min_print_minutes=60, max_print_minutes=60,
                                                        idle_seconds=(0, 0), first_print_preheated=True), seed=5)
    host_says: list[str | None] = [None]
    printer.snapshot_url = lambda: host_says[0]  # type: ignore[method-assign]
    with StaticServer({"/snapshot.jpg": ("image/jpeg", jpeg((640, 480)))}) as webcam, LiveServer(settings) as url:
        runner = AgentRunner(url, record.auth_token, printer, cadence=FAST)
        sent: list[bool] = []
        original_post = runner.post_picture

        async def post(*, viewing_boost: bool = False) -> bool:
            sent.append(await original_post(viewing_boost=viewing_boost))
            return sent[-1]

        runner.post_picture = post  # type: ignore[method-assign]
        task = asyncio.create_task(runner.run())
        try:
            await until(lambda: _is(printer.state is PrinterState.PRINTING and len(sent) >= 2), within=30)
            assert not any(sent)  # no camera known yet
            host_says[0] = f"{webcam.url}/snapshot.jpg"
            await until(lambda: _is(any(sent)), within=15)

            async def picture_shown() -> bool:
                async with farm.sessionmaker() as session:
                    shown = await session.get(Printer, record.id, populate_existing=True)
                    return shown is not None and shown.pic_path is not None

            await until(picture_shown, within=15)
        finally:
            runner.stop()
            assert await asyncio.wait_for(task, 15) is Stopped.REQUESTED
