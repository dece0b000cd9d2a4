"""What the agent needs from a printer, whatever firmware host drives it.

A connector keeps a current `PrinterSnapshot` (cheap to read), reports print events as
they happen, and carries out pause / resume / cancel. The agent turns snapshots into the
OctoPrint-shaped status that the Obico protocol sends (`obico_status`).
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class PrinterState(enum.Enum):
    OFFLINE = "Offline"  # the host (OctoPrint, Moonraker) is reachable but the printer is not
    OPERATIONAL = "Operational"
    PRINTING = "Printing"
    PAUSING = "Pausing"
    PAUSED = "Paused"
    RESUMING = "Resuming"
    CANCELLING = "Cancelling"
    FINISHING = "Finishing"
    ERROR = "Error"

    @property
    def in_print(self) -> bool:
        """A print job is under way (printing or paused on its way)."""
        return self in IN_PRINT


IN_PRINT = frozenset({PrinterState.PRINTING, PrinterState.PAUSING, PrinterState.PAUSED,
                      PrinterState.RESUMING, PrinterState.CANCELLING, PrinterState.FINISHING})


@dataclass
class Temperature:
    actual: float | None = None
    target: float | None = None


@dataclass
class PrinterSnapshot:
    """The printer as the connector last saw it."""

    state: PrinterState = PrinterState.OFFLINE
    state_text: str | None = None  # the host's own wording, when it has one
    error: str = ""
    file_name: str | None = None
    file_path: str | None = None
    file_size: int | None = None
    file_origin: str | None = None  # "local" / "sdcard"
    completion: float | None = None  # percent, 0–100
    print_time: float | None = None  # seconds printed so far
    print_time_left: float | None = None
    file_position: int | None = None
    estimated_print_time: float | None = None
    z: float | None = None
    layer: int | None = None
    total_layers: int | None = None
    temperatures: dict[str, Temperature] = field(default_factory=dict)  # "tool0", "bed", "chamber"
    taken_at: float = field(default_factory=time.time)


class Event(enum.StrEnum):
    """Print events, named as OctoPrint names them (the protocol's `event_type`)."""

    PRINTER_STATE_CHANGED = "PrinterStateChanged"
    PRINT_STARTED = "PrintStarted"
    PRINT_DONE = "PrintDone"
    PRINT_PAUSED = "PrintPaused"
    PRINT_RESUMED = "PrintResumed"
    PRINT_CANCELLING = "PrintCancelling"
    PRINT_CANCELLED = "PrintCancelled"
    PRINT_FAILED = "PrintFailed"
    FILAMENT_CHANGE = "FilamentChange"


PRINT_END_EVENTS = frozenset({Event.PRINT_DONE, Event.PRINT_CANCELLED, Event.PRINT_FAILED})

EventSink = Callable[[Event, dict[str, Any]], None]


@dataclass(frozen=True)
class PauseOptions:
    """What the server asks the printer to do on pause (the printer's pause settings)."""

    retract: float = 0.0  # mm of filament
    lift_z: float = 0.0  # mm
    tools_off: bool = False
    bed_off: bool = False

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> PauseOptions:
        def number(key: str) -> float:
            value = args.get(key)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0

        return cls(retract=number("retract"), lift_z=number("lift_z"),
                   tools_off=args.get("tools_off") is True, bed_off=args.get("bed_off") is True)


class ConnectorError(Exception):
    """The printer host refused or could not carry out a request; the message says why."""


class Connector(ABC):
    """One printer host. `start` returns once watching has begun (it may keep reconnecting
    to the host in the background); `snapshot` must never block."""

    kind: str = "printer"

    @abstractmethod
    async def start(self, emit: EventSink) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def snapshot(self) -> PrinterSnapshot: ...

    @abstractmethod
    async def pause(self, options: PauseOptions) -> None: ...

    @abstractmethod
    async def resume(self) -> None: ...

    @abstractmethod
    async def cancel(self) -> None: ...

    async def print_file(self, url: str, filename: str) -> None:
        """Fetch G-code from ``url`` and print it (the protocol's `print` command)."""
        raise ConnectorError(f"{self.kind} cannot print files sent by the server")

    def host_settings(self) -> dict[str, Any]:
        """Extra `settings` for the server: host version, temperature profiles, webcams."""
        return {}

    def snapshot_url(self) -> str | None:
        """The webcam snapshot URL the host is configured with, if any (used when the agent is
        not given a camera of its own)."""
        return None


def obico_status(snapshot: PrinterSnapshot) -> dict[str, Any]:
    """The snapshot in the shape of OctoPrint's current data, which the protocol's `status` is."""
    state = snapshot.state
    printing = state in (PrinterState.PRINTING, PrinterState.RESUMING, PrinterState.FINISHING,
                         PrinterState.PAUSING, PrinterState.CANCELLING)
    flags = {
        "operational": state not in (PrinterState.OFFLINE, PrinterState.ERROR),
        "printing": printing,
        "paused": state in (PrinterState.PAUSED, PrinterState.PAUSING),
        "pausing": state is PrinterState.PAUSING,
        "cancelling": state is PrinterState.CANCELLING,
        "resuming": state is PrinterState.RESUMING,
        "finishing": state is PrinterState.FINISHING,
        "closedOrError": state in (PrinterState.OFFLINE, PrinterState.ERROR),
        "error": state is PrinterState.ERROR,
        "ready": state is PrinterState.OPERATIONAL,
        "sdReady": False,
    }
    return {
        "state": {"text": snapshot.state_text or state.value, "flags": flags, "error": snapshot.error},
        "job": {
            "file": {"name": snapshot.file_name, "path": snapshot.file_path, "display": snapshot.file_name,
                     "size": snapshot.file_size, "origin": snapshot.file_origin, "date": None},
            "estimatedPrintTime": snapshot.estimated_print_time,
            "lastPrintTime": None,
            "filament": None,
        },
        "progress": {
            "completion": snapshot.completion,
            "filepos": snapshot.file_position,
            "printTime": None if snapshot.print_time is None else int(snapshot.print_time),
            "printTimeLeft": None if snapshot.print_time_left is None else int(snapshot.print_time_left),
            "printTimeLeftOrigin": "estimate" if snapshot.print_time_left is not None else None,
        },
        "currentZ": snapshot.z,
        "currentLayerHeight": snapshot.layer,
        "temperatures": {name: {"actual": t.actual, "target": t.target, "offset": 0}
                         for name, t in snapshot.temperatures.items()},
        "_ts": int(snapshot.taken_at),
    }
