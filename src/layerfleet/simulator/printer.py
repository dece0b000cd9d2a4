"""A simulated printer behind the agent's connector interface, and its webcam.

It idles, heats up, prints with progress, layers and Z, finishes, cools down and starts the
next job, and obeys pause (with the server's pause settings), resume and cancel like a real
printer would. With failure injection a print turns to spaghetti from some point on, and
the webcam frames show it growing until someone pauses or cancels.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import time
from dataclasses import dataclass, replace

import httpx
from PIL import ImageOps

from layerfleet.printer_agent.connector import (
    Connector,
    ConnectorError,
    Event,
    EventSink,
    PauseOptions,
    PrinterSnapshot,
    PrinterState,
    Temperature,
)
from layerfleet.simulator.render import Scene, render_frame

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
AMBIENT = 24.0
LAYER_HEIGHT = 0.2
# Simulated seconds of printing before a preheated first print may fail: about the heating a
# cold demo printer does, in which the detector sees its first 30 frames of a clean print.
PREHEATED_FAILURE_AFTER_SECONDS = 90.0
PART_NAMES = ("benchy", "bracket", "gear_40t", "phone_stand", "cable_clip", "enclosure_lid", "vase", "hinge")


@dataclass(frozen=True)
class Job:
    file_name: str
    duration: float  # printing seconds, heating excluded
    layers: int
    size: int
    tool_target: float
    bed_target: float
    fails_at: float | None  # progress (0–1) from which the print turns to spaghetti


@dataclass(frozen=True)
class SimulationOptions:
    speed: float = 1.0  # simulated seconds per real second
    fail_rate: float = 0.0  # share of prints that fail
    min_print_minutes: float = 20.0
    max_print_minutes: float = 60.0
    idle_seconds: tuple[float, float] = (20.0, 90.0)
    heating_rate: float = 2.5  # °C per simulated second, nozzle; the bed heats at a third
    start_printing: bool = True  # start the first job soon (False: wait idle)
    # The first print fails early: a demo shows the detector at work within minutes.
    first_print_fails: bool = False
    # The first print starts with the heaters at temperature: the pages rightly say "Heating" for
    # the minute or two a cold printer takes, and a demo should show printing at once.
    first_print_preheated: bool = False


class SimulatedPrinter(Connector):
    kind = "simulator"

    def __init__(self, name: str, options: SimulationOptions | None = None, *, seed: int | None = None) -> None:
        self.name = name
        self.options = options or SimulationOptions()
        self.downloaded: list[tuple[str, int]] = []  # (name, bytes) of each G-code file fetched
        self.rng = random.Random(seed)
        self.scene = Scene.random(self.rng)
        self.state = PrinterState.OPERATIONAL
        self.tool = Temperature(AMBIENT, 0.0)
        self.bed = Temperature(AMBIENT, 0.0)
        self.job: Job | None = None
        self._jobs_started = 0
        self.printed_seconds = 0.0  # progress clock of the current job
        self.elapsed_seconds = 0.0  # since the job started, heating and pauses included
        self.heated = False
        self.frame_seed = 0  # per job, so a failure's strands stay where they are and grow
        self.failure_shown = False
        self.idle_left = self.rng.uniform(2.0, 8.0) if self.options.start_printing else float("inf")
        self.paused_targets: tuple[float, float] | None = None
        self.z_lift = 0.0
        self.gcode_received: list[str] = []
        self._emit: EventSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_tick = time.monotonic()

    # -- Connector -------------------------------------------------------------------------

    async def start(self, emit: EventSink) -> None:
        self._emit = emit
        self._last_tick = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def snapshot(self) -> PrinterSnapshot:
        job = self.job
        completion = self.progress * 100 if job else None
        layer = self.layer if job else None
        left = max(0.0, job.duration - self.printed_seconds) if job else None
        return PrinterSnapshot(
            state=self.state,
            file_name=job.file_name if job else None,
            file_path=job.file_name if job else None,
            file_size=job.size if job else None,
            file_origin="local" if job else None,
            completion=round(completion, 2) if completion is not None else None,
            print_time=self.elapsed_seconds if job else None,
            print_time_left=left,
            file_position=int(job.size * self.progress) if job else None,
            estimated_print_time=job.duration if job else None,
            z=round((layer or 0) * LAYER_HEIGHT + self.z_lift, 2) if job else None,
            layer=layer,
            total_layers=job.layers if job else None,
            temperatures={"tool0": Temperature(round(self.tool.actual or 0, 1), self.tool.target),
                          "bed": Temperature(round(self.bed.actual or 0, 1), self.bed.target)},
        )

    async def pause(self, options: PauseOptions) -> None:
        if self.state is not PrinterState.PRINTING:
            raise ConnectorError(f"cannot pause: the printer is {self.state.value.lower()}")
        self.state = PrinterState.PAUSED
        self.paused_targets = (self.tool.target or 0.0, self.bed.target or 0.0)
        if options.retract:
            self.gcode_received.append(f"G1 E-{options.retract:g}")
        if options.lift_z:
            self.z_lift = options.lift_z
            self.gcode_received.append(f"G1 Z+{options.lift_z:g}")
        if options.tools_off:
            self.tool.target = 0.0
            self.gcode_received.append("M104 S0")
        if options.bed_off:
            self.bed.target = 0.0
            self.gcode_received.append("M140 S0")
        self._raise(Event.PRINT_PAUSED)

    async def resume(self) -> None:
        if self.state is not PrinterState.PAUSED:
            raise ConnectorError(f"cannot resume: the printer is {self.state.value.lower()}")
        if self.paused_targets is not None:
            self.tool.target, self.bed.target = self.paused_targets
        self.paused_targets = None
        self.z_lift = 0.0
        # Like a real resume with heaters off: wait for the nozzle before moving on.
        self.state = PrinterState.RESUMING
        self._raise(Event.PRINT_RESUMED)

    async def cancel(self) -> None:
        if not self.state.in_print:
            raise ConnectorError(f"cannot cancel: the printer is {self.state.value.lower()}")
        self.state = PrinterState.CANCELLING
        self._raise(Event.PRINT_CANCELLING)
        self._raise(Event.PRINT_CANCELLED)
        self._raise(Event.PRINT_FAILED, reason="cancelled")
        self._end_job()

    async def print_file(self, url: str, filename: str) -> None:
        if self.state is not PrinterState.OPERATIONAL:
            raise ConnectorError(f"cannot print: the printer is {self.state.value.lower()}")
        if url.startswith(("http://", "https://")):
            # Fetched as a real host would: a link the printer cannot use is a failed print command.
            try:
                async with httpx.AsyncClient(timeout=30) as client:
                    response = await client.get(url)
            except httpx.HTTPError as exc:
                raise ConnectorError(f"cannot download {filename or url}: {exc}") from None
            if response.status_code != 200 or not response.content:
                raise ConnectorError(f"cannot download {filename or url}: HTTP {response.status_code}")
            self.downloaded.append((filename, len(response.content)))
        self._start_job(filename or url.rsplit("/", 1)[-1] or "job.gcode")

    def host_settings(self) -> dict[str, object]:
        return {
            "temperature": {"profiles": [{"name": "PLA", "extruder": 215, "bed": 60},
                                         {"name": "PETG", "extruder": 240, "bed": 80}]},
            "webcams": [{"name": "simulated", "is_primary_camera": True, "flipH": False, "flipV": False,
                         "rotation": 0, "streamRatio": "4:3"}],
        }

    # -- the printer ---------------------------------------------------------------------------

    @property
    def progress(self) -> float:
        if self.job is None:
            return 0.0
        return min(1.0, self.printed_seconds / self.job.duration)

    @property
    def layer(self) -> int:
        if self.job is None:
            return 0
        return int(self.progress * self.job.layers)

    @property
    def spaghetti(self) -> float:
        """How much of a failure shows (0: none, 1: a big tangle)."""
        job = self.job
        if job is None or job.fails_at is None or self.progress < job.fails_at:
            return 0.0
        return min(1.0, 0.35 + (self.progress - job.fails_at) * 6)

    def _raise(self, event: Event, **extra: object) -> None:
        if self._emit is not None and self.job is not None:
            self._emit(event, {"name": self.job.file_name, "path": self.job.file_name, "origin": "local",
                               "size": self.job.size, **extra})

    def _new_job(self, file_name: str | None = None) -> Job:
        minutes = self.rng.uniform(self.options.min_print_minutes, self.options.max_print_minutes)
        first_fails = self.options.first_print_fails and not self._jobs_started
        first_preheated = self.options.first_print_preheated and not self._jobs_started
        self._jobs_started += 1
        fails = first_fails or self.rng.random() < self.options.fail_rate
        job = Job(
            file_name=file_name or f"{self.rng.choice(PART_NAMES)}_{self.rng.randint(1, 99):02d}.gcode",
            duration=minutes * 60,
            layers=self.rng.randint(80, 400),
            size=self.rng.randint(400_000, 12_000_000),
            tool_target=float(self.rng.choice((205, 210, 215, 220, 240))),
            bed_target=float(self.rng.choice((55, 60, 65, 80))),
            fails_at=(self.rng.uniform(0.02, 0.04) if first_fails else self.rng.uniform(0.08, 0.3))
            if fails else None,
        )
        if job.fails_at is not None and first_preheated:
            # The detector learns the clean print from its first frames, which a cold printer
            # takes while heating; a preheated one fails no sooner than heating would have ended.
            job = replace(job, fails_at=max(job.fails_at, PREHEATED_FAILURE_AFTER_SECONDS / job.duration))
        return job

    def _start_job(self, file_name: str | None = None) -> None:
        self.job = self._new_job(file_name)
        if self.options.first_print_preheated and self._jobs_started == 1:
            self.tool.actual, self.bed.actual = self.job.tool_target, self.job.bed_target
        self.printed_seconds = self.elapsed_seconds = 0.0
        self.heated = False
        self.frame_seed = self.rng.randint(0, 2**31)
        self.failure_shown = False
        self.state = PrinterState.PRINTING
        self.tool.target, self.bed.target = self.job.tool_target, self.job.bed_target
        self._raise(Event.PRINT_STARTED)

    def _end_job(self) -> None:
        self.state = PrinterState.OPERATIONAL
        self.job = None
        self.paused_targets = None
        self.z_lift = 0.0
        self.tool.target = self.bed.target = 0.0
        low, high = self.options.idle_seconds
        self.idle_left = self.rng.uniform(low, high)

    def _approach(self, temperature: Temperature, rate: float, seconds: float) -> None:
        actual = temperature.actual if temperature.actual is not None else AMBIENT
        target = temperature.target or AMBIENT
        if abs(target - actual) <= rate * seconds:
            actual = target + self.rng.uniform(-0.4, 0.4) if temperature.target else target
        else:
            cooling = rate * 0.4  # cooling is slower than heating
            actual += rate * seconds if target > actual else -cooling * seconds
        temperature.actual = actual

    def _at_temperature(self) -> bool:
        return abs((self.tool.actual or 0) - (self.tool.target or 0)) < 3 \
            and abs((self.bed.actual or 0) - (self.bed.target or 0)) < 3

    def advance(self, seconds: float) -> None:
        """Move the printer on by ``seconds`` of simulated time."""
        rate = self.options.heating_rate
        self._approach(self.tool, rate, seconds)
        self._approach(self.bed, rate / 3, seconds)
        if self.state is PrinterState.OPERATIONAL:
            self.idle_left -= seconds
            if self.idle_left <= 0:
                self._start_job()
            return
        if self.job is None:
            return
        if self.state in (PrinterState.PRINTING, PrinterState.RESUMING, PrinterState.PAUSED):
            self.elapsed_seconds += seconds
        if self.state is PrinterState.RESUMING and self._at_temperature():
            self.state = PrinterState.PRINTING
        if self.state is not PrinterState.PRINTING:
            return
        if not self.heated:
            self.heated = self._at_temperature()
            return
        self.printed_seconds += seconds
        if self.job.fails_at is not None and not self.failure_shown and self.spaghetti > 0:
            self.failure_shown = True
            # Machine-readable on purpose: the end-to-end tests time the detector against it.
            log.info("%s: failure injected at %.3f (print %s)", self.name, time.time(), self.job.file_name)
        if self.printed_seconds >= self.job.duration:
            self._raise(Event.PRINT_DONE, time=self.elapsed_seconds)
            self._end_job()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            self.advance((now - self._last_tick) * self.options.speed)
            self._last_tick = now


class SimulatedCamera:
    """Frames of the simulated printer's bed: the part grows with progress; spaghetti shows
    when the print is failing. Rendering runs in a worker thread, off the event loop.

    ``view`` 0 is the printer's main camera; another view looks at the same bed from the other
    side and closer (mirrored, cropped by a tenth a side per view), as a second camera would."""

    def __init__(self, printer: SimulatedPrinter, *, quality: int = 80, view: int = 0) -> None:
        self.printer = printer
        self.quality = quality
        self.view = view
        self.frames = 0

    def render(self) -> bytes:
        self.frames += 1
        image, _ = render_frame(self.printer.scene, self.printer.progress, spaghetti=self.printer.spaghetti,
                                seed=self.printer.frame_seed)
        if self.view:
            width, height = image.size
            crop = min(0.1 * self.view, 0.3)
            box = (round(width * crop), round(height * crop), round(width * (1 - crop)), round(height * (1 - crop)))
            image = ImageOps.mirror(image.crop(box).resize((width, height)))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=self.quality)
        return out.getvalue()

    async def snapshot(self) -> bytes | None:
        return await asyncio.to_thread(self.render)
