"""The OctoPrint connector against a real OctoPrint 1.11 and its virtual printer.

One OctoPrint serves the whole module; every test leaves it idle. No database is needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from layerfleet.printer_agent.connector import (
    ConnectorError,
    Event,
    PauseOptions,
    PrinterSnapshot,
    PrinterState,
)
from layerfleet.printer_agent.octoprint import OctoPrintConnector
from octoprint_host import OctoPrintHost, StaticServer, free_port, jpeg, sample_gcode

SNAPSHOT = jpeg()
RELATIVE_PRINT = sample_gcode(relative_extrusion=True)


@pytest.fixture(scope="module")
def files() -> Iterator[StaticServer]:
    with StaticServer({"/snapshot.jpg": ("image/jpeg", SNAPSHOT),
                       "/files/7/relative%20part.gcode": ("text/x-gcode", RELATIVE_PRINT)}) as server:
        yield server


@pytest.fixture(scope="module")
def octoprint(tmp_path_factory: pytest.TempPathFactory, files: StaticServer) -> Iterator[OctoPrintHost]:
    with OctoPrintHost(tmp_path_factory.mktemp("octoprint"), snapshot_url=f"{files.url}/snapshot.jpg") as host:
        yield host


@dataclass
class Recorded:
    event: Event
    data: dict[str, Any]
    snapshot: PrinterSnapshot  # what the connector showed when it raised the event


@dataclass
class Recorder:
    connector: OctoPrintConnector
    events: list[Recorded] = field(default_factory=list)

    def __call__(self, event: Event, data: dict[str, Any]) -> None:
        self.events.append(Recorded(event, data, self.connector.snapshot()))

    def names(self) -> list[Event]:
        return [r.event for r in self.events]

    def first(self, event: Event) -> Recorded:
        return next(r for r in self.events if r.event is event)


@pytest.fixture
async def watched(octoprint: OctoPrintHost) -> AsyncIterator[Recorder]:
    connector = OctoPrintConnector(octoprint.url, octoprint.api_key, timeout=5)
    recorder = Recorder(connector)
    await connector.start(recorder)
    yield recorder
    await connector.close()
    await asyncio.to_thread(octoprint.cancel_print)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def job_state(octoprint: OctoPrintHost) -> str:
    return await asyncio.to_thread(octoprint.job_state)


async def target(octoprint: OctoPrintHost, heater: str) -> float:
    printer = await asyncio.to_thread(octoprint.printer)
    return float(printer["temperature"][heater]["target"])


async def test_snapshot_settings_and_webcam(watched: Recorder, files: StaticServer) -> None:
    connector = watched.connector
    snapshot = connector.snapshot()
    assert snapshot.state is PrinterState.OPERATIONAL, snapshot
    assert snapshot.state_text == "Operational"
    await eventually(lambda: {"tool0", "bed"} <= connector.snapshot().temperatures.keys(), "temperatures")
    temperatures = connector.snapshot().temperatures
    assert "chamber" not in temperatures  # the virtual printer has none, though OctoPrint lists one
    assert temperatures["tool0"].actual == pytest.approx(21.3, abs=5)
    assert temperatures["bed"].target == 0

    settings = connector.host_settings()
    assert settings["octoprint_version"].startswith("1.11.")
    assert {p["name"] for p in settings["temperature"]["profiles"]} >= {"PLA", "ABS"}
    assert [c["is_primary_camera"] for c in settings["webcams"]] == [True]

    assert connector.snapshot_url() == f"{files.url}/snapshot.jpg"
    async with httpx.AsyncClient() as client:
        assert (await client.get(connector.snapshot_url() or "")).content == SNAPSHOT


async def test_print_pause_resume_and_cancel(watched: Recorder, octoprint: OctoPrintHost) -> None:
    connector = watched.connector
    await asyncio.to_thread(octoprint.start_print, "cube.gcode", sample_gcode())

    await eventually(lambda: Event.PRINT_STARTED in watched.names(), "PrintStarted")
    started = watched.first(Event.PRINT_STARTED)
    assert started.data["name"] == "cube.gcode"
    assert started.snapshot.state is PrinterState.PRINTING
    assert started.snapshot.file_name == "cube.gcode"
    assert started.snapshot.file_size == len(sample_gcode())
    await eventually(lambda: (connector.snapshot().completion or 0) > 3, "the print to get past its heat-up")
    snapshot = connector.snapshot()
    assert snapshot.state is PrinterState.PRINTING and snapshot.state_text == "Printing"
    assert snapshot.file_origin == "local" and snapshot.file_path == "cube.gcode"
    assert snapshot.temperatures["tool0"].target == 60 and snapshot.temperatures["bed"].target == 40
    assert snapshot.print_time is not None and snapshot.file_position

    mark = octoprint.serial_log_mark()
    await connector.pause(PauseOptions(retract=2, lift_z=2.5, tools_off=True, bed_off=True))
    assert await job_state(octoprint) == "Paused"
    assert Event.PRINT_PAUSED in watched.names()
    await eventually(lambda: connector.snapshot().state is PrinterState.PAUSED, "the snapshot to show Paused")
    await eventually(lambda: octoprint.sent_since(mark)[-1:] == ["M140 S0"], "the pause G-code to be sent")
    sent = octoprint.sent_since(mark)
    # The print extrudes in absolute mode (M82): retract relatively, then put M82 back.
    assert sent[-8:] == ["M83", "G1 E-2.000 F1800", "M82", "G91", "G1 Z2.500 F600", "G90", "M104 S0", "M140 S0"]
    assert await target(octoprint, "tool0") == 0 and await target(octoprint, "bed") == 0

    await connector.pause(PauseOptions(retract=2, lift_z=2.5))  # already paused: nothing more happens
    assert len(octoprint.sent_since(mark)) == len(sent)

    mark = octoprint.serial_log_mark()
    await connector.resume()
    await eventually(lambda: Event.PRINT_RESUMED in watched.names(), "PrintResumed")
    await eventually(lambda: connector.snapshot().state is PrinterState.PRINTING, "Printing after the reheat")
    assert await job_state(octoprint) == "Printing"
    assert octoprint.sent_since(mark)[:10] == [
        "M140 S40", "M104 S60", "M190 S40", "M109 S60", "G91", "G1 Z-2.500 F600", "G90", "M83", "G1 E2.000 F1800",
        "M82"]
    assert await target(octoprint, "tool0") == 60 and await target(octoprint, "bed") == 40

    await connector.cancel()
    await eventually(lambda: Event.PRINT_FAILED in watched.names(), "PrintFailed")
    ended = watched.names()[watched.names().index(Event.PRINT_RESUMED):]
    assert [e for e in ended if e is not Event.PRINTER_STATE_CHANGED] == [
        Event.PRINT_RESUMED, Event.PRINT_CANCELLING, Event.PRINT_CANCELLED, Event.PRINT_FAILED]
    assert watched.first(Event.PRINT_FAILED).data["reason"] == "cancelled"
    await eventually(lambda: connector.snapshot().state is PrinterState.OPERATIONAL, "Operational after the cancel")
    assert await job_state(octoprint) == "Operational"
    changes = [r.data["state_id"] for r in watched.events if r.event is Event.PRINTER_STATE_CHANGED]
    assert changes[-1] == "OPERATIONAL" and "PAUSED" in changes and "CANCELLING" in changes


async def test_print_file_from_a_url_keeps_relative_extrusion(
        watched: Recorder, octoprint: OctoPrintHost, files: StaticServer) -> None:
    connector = watched.connector
    await connector.print_file(f"{files.url}/files/7/relative%20part.gcode", "")

    await eventually(lambda: Event.PRINT_STARTED in watched.names(), "PrintStarted")
    assert watched.first(Event.PRINT_STARTED).snapshot.file_name == "relative part.gcode"
    assert (await asyncio.to_thread(octoprint.job))["job"]["file"]["size"] == len(RELATIVE_PRINT)

    # Paused while the bed heats up (M190), OctoPrint stays Pausing until the heater is at
    # temperature; only then may the filament move.
    mark = octoprint.serial_log_mark()
    await connector.pause(PauseOptions(retract=1.5))
    assert await job_state(octoprint) == "Paused"
    await eventually(lambda: "G1 E-1.500 F1800" in octoprint.sent_since(mark), "the retraction")
    sent = octoprint.sent_since(mark)
    assert "M114" in sent and sent.index("M114") < sent.index("M83")  # OctoPrint's own pause came first
    assert sent[-2:] == ["M83", "G1 E-1.500 F1800"]  # and no M82 after it: the print extrudes relatively
    assert await target(octoprint, "tool0") == 60  # tools_off was not asked for

    mark = octoprint.serial_log_mark()
    await connector.resume()
    await eventually(lambda: "G1 E1.500 F1800" in octoprint.sent_since(mark), "the unretraction")
    assert octoprint.sent_since(mark)[:2] == ["M83", "G1 E1.500 F1800"]
    await eventually(lambda: connector.snapshot().state is PrinterState.PRINTING, "Printing again")

    await connector.cancel()
    await eventually(lambda: Event.PRINT_CANCELLED in watched.names(), "PrintCancelled")
    await eventually(lambda: connector.snapshot().state is PrinterState.OPERATIONAL, "Operational after the cancel")


async def test_commands_the_printer_cannot_carry_out_say_why(watched: Recorder, files: StaticServer) -> None:
    connector = watched.connector
    with pytest.raises(ConnectorError, match="cannot pause: the printer is not printing"):
        await connector.pause(PauseOptions())
    with pytest.raises(ConnectorError, match="cannot resume: the printer is not paused"):
        await connector.resume()
    with pytest.raises(ConnectorError, match="cannot cancel: the printer is not printing"):
        await connector.cancel()
    with pytest.raises(ConnectorError, match=r"could not download missing\.gcode: HTTP 404"):
        await connector.print_file(f"{files.url}/missing.gcode", "missing.gcode")
    with pytest.raises(ConnectorError, match="could not download"):
        await connector.print_file(f"http://127.0.0.1:{free_port()}/x.gcode", "x.gcode")
    assert connector.snapshot().state is PrinterState.OPERATIONAL


async def test_a_wrong_api_key_is_reported_not_fatal(octoprint: OctoPrintHost) -> None:
    connector = OctoPrintConnector(octoprint.url, "not-the-key", timeout=5)
    events: list[Event] = []
    try:
        await connector.start(lambda event, data: events.append(event))
        snapshot = connector.snapshot()
        assert snapshot.state is PrinterState.OFFLINE
        assert "rejected the API key" in snapshot.error
        with pytest.raises(ConnectorError, match="rejected the API key"):
            await connector.pause(PauseOptions())
        assert events == []
    finally:
        await connector.close()


async def test_an_unreachable_octoprint_is_offline_with_the_reason() -> None:
    connector = OctoPrintConnector(f"http://127.0.0.1:{free_port()}", "key", timeout=5)
    try:
        await connector.start(lambda event, data: None)
        snapshot = connector.snapshot()
        assert snapshot.state is PrinterState.OFFLINE
        assert "unreachable" in snapshot.error
        with pytest.raises(ConnectorError, match="unreachable"):
            await connector.cancel()
    finally:
        await connector.close()


async def test_a_printer_disconnected_from_octoprint_is_offline(watched: Recorder, octoprint: OctoPrintHost) -> None:
    connector = watched.connector
    await asyncio.to_thread(octoprint.request, "POST", "/api/connection", json={"command": "disconnect"})
    await eventually(lambda: connector.snapshot().state is PrinterState.OFFLINE, "the snapshot to show Offline")
    assert connector.snapshot().state_text == "Offline"
    assert watched.events[-1].event is Event.PRINTER_STATE_CHANGED
    assert watched.events[-1].data["state_id"] == "OFFLINE"
    with pytest.raises(ConnectorError, match="cannot pause: the printer is not printing"):
        await connector.pause(PauseOptions())

    await asyncio.to_thread(octoprint.connect_printer)
    await eventually(lambda: connector.snapshot().state is PrinterState.OPERATIONAL, "Operational again")


async def test_the_connector_recovers_when_octoprint_restarts(watched: Recorder, octoprint: OctoPrintHost) -> None:
    connector = watched.connector
    assert connector.snapshot().state is PrinterState.OPERATIONAL
    await asyncio.to_thread(octoprint.stop)
    await eventually(lambda: connector.snapshot().state is PrinterState.OFFLINE, "the connector to notice", 10)
    assert "OctoPrint" in connector.snapshot().error

    await asyncio.to_thread(octoprint.start)  # also reconnects the virtual printer
    await eventually(lambda: connector.snapshot().state is PrinterState.OPERATIONAL, "the connector to reconnect", 45)
    await eventually(lambda: "tool0" in connector.snapshot().temperatures, "temperatures again")
    assert connector.snapshot().error == ""
    assert connector.host_settings()["octoprint_version"].startswith("1.11.")

