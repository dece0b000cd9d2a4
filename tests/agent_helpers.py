"""Helpers for the agent-protocol tests: pictures, status frames, a server under TestClient."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import select

from conftest import Farm
from layerfleet.fleet.models import Printer, PrinterEvent
from layerfleet.prints.models import Print


def jpeg(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG", quality=80)
    return out.getvalue()


def status(text: str = "Operational", *, printing: bool = False, paused: bool = False,
           file: str | None = None, gcode_id: int | None = None) -> dict[str, Any]:
    job_file: dict[str, Any] = {"name": file, "path": file, "display": file, "origin": "local" if file else None}
    if gcode_id is not None:
        job_file["obico_g_code_file_id"] = gcode_id
    return {
        "state": {"text": text, "flags": {
            "operational": True, "printing": printing, "paused": paused, "pausing": False,
            "cancelling": False, "resuming": False, "finishing": False, "closedOrError": False,
            "error": False, "ready": not printing, "sdReady": True}, "error": ""},
        "job": {"file": job_file, "estimatedPrintTime": None, "lastPrintTime": None, "filament": None},
        "progress": {"completion": None, "filepos": None, "printTime": None},
        "temperatures": {"tool0": {"actual": 200.0, "target": 200.0, "offset": 0}},
        "_ts": int(time.time()),
    }


def frame(st: dict[str, Any], ts: int = -1, event: str | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"status": st, "current_print_ts": ts, **extra}
    if event is not None:
        message["event"] = {"event_type": event, "data": {"name": st["job"]["file"]["name"]}}
    return message


SETTINGS = {
    "temperature": {"profiles": [{"name": "ABS", "extruder": 210, "bed": 100},
                                 {"name": "PLA", "extruder": 180, "bed": 60}]},
    "agent": {"name": "octoprint_obico", "version": "2.6.1"},
    "octoprint_version": "1.11.8",
    "webcams": [{"name": "classic", "is_primary_camera": True, "flipH": True, "flipV": False, "rotation": 90,
                 "streamRatio": "16:9"}],
}


def bearer(printer: Printer) -> dict[str, str]:
    return {"Authorization": f"bearer {printer.auth_token}"}


def agent_headers(printer: Printer) -> dict[str, str]:
    return {"Authorization": f"Token {printer.auth_token}"}


async def until(check: Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    """Wait for the gateway, which runs in TestClient's own thread, to have done something."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("the server did not get there in time")
        await asyncio.sleep(0.02)


async def load_printer(farm: Farm, printer_id: int) -> Printer:
    async def get(session: Any) -> Printer:
        found = (await session.execute(select(Printer).where(Printer.id == printer_id))).scalar_one()
        return found  # type: ignore[no-any-return]

    return await farm.run(get)  # type: ignore[no-any-return]


async def prints_of(farm: Farm, printer_id: int) -> list[Print]:
    async def get(session: Any) -> list[Print]:
        return list((await session.execute(
            select(Print).where(Print.printer_id == printer_id).order_by(Print.id))).scalars())

    return await farm.run(get)  # type: ignore[no-any-return]


async def events_of(farm: Farm, printer_id: int) -> list[PrinterEvent]:
    async def get(session: Any) -> list[PrinterEvent]:
        return list((await session.execute(
            select(PrinterEvent).where(PrinterEvent.printer_id == printer_id).order_by(PrinterEvent.id))).scalars())

    return await farm.run(get)  # type: ignore[no-any-return]


def next_command(ws: Any) -> dict[str, Any]:
    """The next frame that is not a remote_status (those follow watching changes)."""
    while True:
        message: dict[str, Any] = ws.receive_json()
        if "remote_status" not in message:
            return message


class AgentProcess:
    """`layerfleet agent` in a subprocess, its output in a log file for failure messages."""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "layerfleet", "agent", *args],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"the agent did not stop on SIGTERM:\n{self.log()}") from None


async def poll_agent(check: Callable[[], Awaitable[Any]], what: str, agent: AgentProcess, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if agent.process.poll() is not None:
            raise AssertionError(f"the agent exited with {agent.process.returncode}:\n{agent.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; agent log:\n{agent.log()[-4000:]}")
        await asyncio.sleep(0.2)


class ServerView:
    """One printer and its prints as the v1 API shows them, for the end-to-end agent tests."""

    def __init__(self, api: Any, printer_id: int) -> None:
        self.api, self.printer_id = api, printer_id

    async def printer(self) -> dict[str, Any]:
        return dict((await self.api.get(f"/api/v1/printers/{self.printer_id}/")).json())

    async def state_is(self, text: str) -> bool:
        return bool(((await self.printer()).get("status") or {}).get("state", {}).get("text") == text)

    async def prints(self) -> list[dict[str, Any]]:
        listed = (await self.api.get("/api/v1/prints/")).json()
        return [p for p in listed if p["printer"] == self.printer_id]
