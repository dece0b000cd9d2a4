"""A Klipper printer through Moonraker's JSON-RPC websocket.

The connector keeps one websocket to Moonraker (``ws://HOST/websocket``), identifies itself
as an agent, subscribes to the Klipper objects a print status needs and keeps their merged
state from ``notify_status_update``. The snapshot is computed from that state, and print
events from the transitions of ``print_stats.state``. Pause, resume and cancel go through
``printer.print.pause|resume|cancel``. When Moonraker goes away the connector reports the
printer OFFLINE with the reason and reconnects with backoff (1 s doubling to 30 s, jittered);
when Klipper restarts, it subscribes again once Moonraker says Klipper is ready.

Events follow ``print_stats.state``: standby/complete/cancelled/error → printing is PrintStarted,
printing → paused PrintPaused, paused → printing PrintResumed, → complete PrintDone,
→ cancelled PrintCancelled, → error (or Klipper shutting down mid-print) PrintFailed; every
change of the snapshot's state is also a PrinterStateChanged. A print that went by between two
status updates is still reported as started and ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from layerfleet import __version__
from layerfleet.pacing import woken_within
from layerfleet.printer_agent import frontend_presets
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

log = logging.getLogger(__name__)

CLIENT_NAME = "layerfleet-agent"
# Klipper objects the snapshot is built from; those the printer lacks are left out.
WATCHED_OBJECTS = ("webhooks", "print_stats", "virtual_sdcard", "display_status", "pause_resume", "toolhead",
                   "gcode_move", "heater_bed")
CHAMBER_OBJECTS = ("heater_generic chamber", "temperature_sensor chamber")
MAX_EXTRUDERS = 10  # extruder, extruder1 … extruder9
GCODE_SUFFIXES = (".gcode", ".g", ".gco", ".ufp")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Heating a bed from cold can take many minutes; the resume that waits for it must not time out.
HEAT_WAIT_TIMEOUT = 30 * 60.0
UPLOAD_TIMEOUT = 10 * 60.0
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
# While Klipper is not ready Moonraker does not say when it starts failing (a config error,
# say), only when it becomes ready or shuts down, so the connector asks now and then.
KLIPPY_POLL_SECONDS = 2.0
# Mainsail and Fluidd write their preheat presets to Moonraker's database and Moonraker tells no
# one, so they are read again now and then (one small request).
PRESETS_REFRESH_SECONDS = 300.0
RETRACT_SPEED = 1800  # mm/min, a common retraction speed
LIFT_SPEED = 600  # mm/min, gentle enough for any Z axis

IN_JOB = ("printing", "paused")
JOB_ENDS = {"complete": Event.PRINT_DONE, "cancelled": Event.PRINT_CANCELLED, "error": Event.PRINT_FAILED}


class MoonrakerRefused(ConnectorError):
    """Moonraker answered a request with an error (as opposed to not answering at all)."""


@dataclass
class _PauseRestore:
    """What `resume` must bring back beyond what Klipper's own RESUME does."""

    retracted: float = 0.0  # mm of filament pulled back by `pause`
    heater_targets: dict[str, float] = field(default_factory=dict)  # the heaters' targets before the pause


class MoonrakerConnector(Connector):
    kind = "moonraker"

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0,
                 client_name: str = CLIENT_NAME, reconnect_delay: float = 1.0,
                 max_reconnect_delay: float = 30.0, presets_refresh_seconds: float = PRESETS_REFRESH_SECONDS) -> None:
        self.http_url = _http_base(url)
        self.websocket_url = _websocket_url(self.http_url)
        self.api_key = api_key
        self.timeout = timeout
        self.client_name = client_name
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.presets_refresh_seconds = presets_refresh_seconds

        self._emit: EventSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._helpers: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._command_lock = asyncio.Lock()  # one pause or resume at a time
        self._closing = False
        self._first_attempt = asyncio.Event()

        self._ws: ClientConnection | None = None
        self._next_id = 0
        self._pending: dict[int, tuple[asyncio.Future[Any], Callable[[Any], None] | None]] = {}

        self._connection_error = "not connected to Moonraker yet"
        self._klippy_state = "disconnected"  # Moonraker's word: ready, startup, shutdown, error, disconnected
        self._klippy_message = ""
        self._subscribed = False
        self._objects: dict[str, dict[str, Any]] = {}  # Klipper object → its merged status
        self._moonraker_version: str | None = None
        self._klipper_version: str | None = None
        self._webcam_snapshot_url: str | None = None
        self._webcams: list[dict[str, Any]] = []  # as the protocol's settings carry them
        self._temperature_profiles: list[dict[str, Any]] = []  # the front ends' preheat presets
        self._metadata: dict[str, dict[str, Any]] = {}  # file name → Moonraker's metadata
        self._metadata_wanted: set[str] = set()

        self._print_state: str | None = None  # print_stats.state last seen
        self._job: dict[str, Any] = {}  # the current job's file, for events
        self._pause_restore: _PauseRestore | None = None
        self._snapshot = self._build_snapshot()

    # -- Connector -----------------------------------------------------------------------

    async def start(self, emit: EventSink) -> None:
        """Begin watching; return after the first connection attempt (or `timeout`)."""
        self._emit = emit
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"moonraker {self.http_url}")
        await woken_within(self._first_attempt, self.timeout)

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in (self._task, *self._helpers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self._ws is not None:
            await self._ws.close()

    def snapshot(self) -> PrinterSnapshot:
        return self._snapshot

    async def pause(self, options: PauseOptions) -> None:
        async with self._command_lock:
            await self._pause(options)

    async def _pause(self, options: PauseOptions) -> None:
        self._require_ready()
        state = self._objects.get("print_stats", {}).get("state")
        if state == "paused" or self._objects.get("pause_resume", {}).get("is_paused"):
            return  # already paused (or pausing): applying the options again would retract and lift twice
        if state != "printing":
            raise ConnectorError(f"nothing to pause: the printer is {state or 'not printing'}")
        targets = {name: self._target(name) for name in self._heaters()}
        await self.call("printer.print.pause")
        # Resume heats back to these, whoever lowered them meanwhile: this agent, a user, or
        # Klipper's idle_timeout, which turns the heaters off after a while in a paused print.
        restore = _PauseRestore(heater_targets={name: t for name, t in targets.items() if t > 0})
        self._pause_restore = restore
        failures: list[str] = []

        # Klipper's own PAUSE has saved the G-code state (position, modes) under PAUSE_STATE and
        # its RESUME moves back to that position, so a lift made here is undone by resume. The
        # filament is not: resume pushes back what was retracted here. Klipper's PAUSE macro is
        # often user-defined and may retract or lift itself; these options come on top of it.
        if options.retract > 0:
            try:
                await self._relative_moves(f"G1 E-{options.retract:.3f} F{RETRACT_SPEED}")
                restore.retracted = options.retract
            except ConnectorError as exc:
                failures.append(f"retract: {exc}")
        lift = self._safe_lift(options.lift_z)
        if lift > 0:
            try:
                await self._relative_moves(f"G1 Z{lift:.3f} F{LIFT_SPEED}")
            except ConnectorError as exc:
                failures.append(f"lift: {exc}")

        # Heaters go off in scripts of their own: a move that failed must not keep them on.
        off = [name for name in restore.heater_targets
               if (options.tools_off and name.startswith("extruder")) or (options.bed_off and name == "heater_bed")]
        for name in off:
            try:
                await self.gcode(f"SET_HEATER_TEMPERATURE HEATER={name} TARGET=0")
            except ConnectorError as exc:
                failures.append(f"{name} off: {exc}")
        if failures:
            raise ConnectorError("paused, but " + "; ".join(failures))

    async def resume(self) -> None:
        async with self._command_lock:
            await self._resume()

    async def _resume(self) -> None:
        """Undo what `pause` did, then let Klipper's RESUME carry on. Without a record of the
        pause (the agent restarted meanwhile, or the print was paused elsewhere) this is just
        Klipper's RESUME, with whatever the printer's own macros do."""
        self._require_ready()
        restore, self._pause_restore = self._pause_restore, None
        if restore is not None and self._objects.get("print_stats", {}).get("state") == "paused":
            try:
                await self._undo_pause(restore)
            except ConnectorError:
                self._pause_restore = restore  # still paused: a later resume tries again
                raise
        await self.call("printer.print.resume")

    async def _undo_pause(self, restore: _PauseRestore) -> None:
        # Heat back up before anything moves: extruding through a cold nozzle grinds the
        # filament (Klipper refuses it), and printing on a cold bed loses adhesion. All targets
        # first so that the heaters warm up together, then wait for each: TEMPERATURE_WAIT
        # blocks Klipper's G-code queue, so nothing after it runs until the heater is there.
        cold = {name: target for name, target in restore.heater_targets.items()
                if name in self._objects and self._target(name) < target - 0.5}
        if cold:
            settings = [f"SET_HEATER_TEMPERATURE HEATER={name} TARGET={target:.1f}" for name, target in cold.items()]
            waits = [f"TEMPERATURE_WAIT SENSOR={name} MINIMUM={max(target - 2.0, 0.0):.1f}"
                     for name, target in cold.items()]
            await self.gcode("\n".join(settings + waits), reply_within=HEAT_WAIT_TIMEOUT)
        if restore.retracted > 0:
            await self._relative_moves(f"G1 E{restore.retracted:.3f} F{RETRACT_SPEED}")

    async def cancel(self) -> None:
        # Not behind the pause/resume lock: a resume may be waiting minutes for heaters, and a
        # cancel must not wait for it (Klipper runs the cancel once that wait is over).
        self._require_ready()
        self._pause_restore = None
        await self.call("printer.print.cancel")

    async def print_file(self, url: str, filename: str) -> None:
        """Download the G-code, upload it to Moonraker's gcodes root and have it printed."""
        self._require_ready()
        stats = self._objects.get("print_stats", {})
        if stats.get("state") in IN_JOB:
            raise ConnectorError(f"the printer is busy with {stats.get('filename') or 'a print'}")
        name = _upload_name(filename)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            try:
                async with httpx.AsyncClient(timeout=UPLOAD_TIMEOUT, follow_redirects=True) as client:
                    async with client.stream("GET", url) as response:
                        if response.status_code != 200:
                            raise ConnectorError(f"could not download {filename}: HTTP {response.status_code}")
                        async for chunk in response.aiter_bytes():
                            spool.write(chunk)
                    spool.seek(0)
                    response = await client.post(
                        f"{self.http_url}/server/files/upload", headers=self._headers(),
                        data={"root": "gcodes", "print": "true"},
                        files={"file": (name, spool, "application/octet-stream")},
                    )
            except httpx.HTTPError as exc:
                raise ConnectorError(f"could not send {filename} to Moonraker: {_describe(exc)}") from exc
        if response.status_code not in (200, 201):
            raise ConnectorError(f"Moonraker refused {name}: {_http_error(response)}")
        body = response.json()
        result = body.get("result", body) if isinstance(body, dict) else {}
        if not result.get("print_started"):
            queued = " (it was queued instead)" if result.get("print_queued") else ""
            raise ConnectorError(f"Moonraker stored {name} but did not start printing it{queued}")

    def host_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        if self._moonraker_version:
            settings["moonraker_version"] = self._moonraker_version
        if self._klipper_version:
            settings["klipper_version"] = self._klipper_version
        if self._webcams:
            settings["webcams"] = self._webcams
        if self._temperature_profiles:
            settings["temperature"] = {"profiles": self._temperature_profiles}
        return settings

    def snapshot_url(self) -> str | None:
        return self._webcam_snapshot_url

    # -- requests ------------------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any] | None = None, *, reply_within: float | None = None,
                   on_result: Callable[[Any], None] | None = None) -> Any:
        """One JSON-RPC request; Moonraker's error message becomes a `ConnectorError`.

        ``on_result`` runs in the reader, before any later message is handled: a subscription's
        full status must be in place before the updates that follow it are merged."""
        ws = self._ws
        if ws is None:
            raise ConnectorError(f"not connected to Moonraker at {self.http_url}: {self._connection_error}")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, on_result)
        message = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            message["params"] = params
        try:
            await ws.send(json.dumps(message))
            async with asyncio.timeout(self.timeout if reply_within is None else reply_within):
                return await future
        except ConnectionClosed as exc:
            raise ConnectorError(f"connection to Moonraker lost during {method}") from exc
        except TimeoutError as exc:
            raise ConnectorError(f"Moonraker did not answer {method} in time") from exc
        finally:
            self._pending.pop(request_id, None)

    async def gcode(self, script: str, *, reply_within: float | None = None) -> None:
        await self.call("printer.gcode.script", {"script": script}, reply_within=reply_within)

    async def _relative_moves(self, *moves: str) -> None:
        # Relative moves inside a saved G-code state: the print's absolute/relative modes and its
        # E coordinate come back as they were (RESTORE_GCODE_STATE carries the E change over
        # into its base position instead of moving), and the head stays where the moves left it.
        await self.gcode("\n".join(["SAVE_GCODE_STATE NAME=LAYERFLEET_MOVE", "G91", *moves,
                                    "RESTORE_GCODE_STATE NAME=LAYERFLEET_MOVE"]))

    def _headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key} if self.api_key else {}

    def _require_ready(self) -> None:
        if self._ws is None:
            raise ConnectorError(f"not connected to Moonraker at {self.http_url}: {self._connection_error}")
        klippy = self._klippy_now()
        if klippy != "ready" or not self._subscribed:
            message = self._snapshot.error or self._klippy_message
            raise ConnectorError(f"Klipper is not ready ({klippy})" + (f": {message}" if message else ""))

    # -- connection ----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_delay
        while not self._closing:
            was_up = False
            try:
                was_up = await self._session()
                self._connection_error = "Moonraker closed the connection"
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason = "the API key was refused" if status in (401, 403) else f"HTTP {status}"
                self._connection_error = f"Moonraker refused the connection: {reason}"
            except (OSError, WebSocketException, ConnectorError, TimeoutError) as exc:
                self._connection_error = _describe(exc)
            except Exception as exc:  # a bug or a surprise from Moonraker: keep the agent alive
                log.exception("Moonraker connection at %s failed", self.http_url)
                self._connection_error = _describe(exc)
            self._disconnected()
            self._first_attempt.set()
            if was_up:
                delay = self.reconnect_delay
            log.info("Moonraker at %s: %s; reconnecting in %.0f s", self.http_url, self._connection_error, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.max_reconnect_delay)

    async def _session(self) -> bool:
        """Connect, then read until the websocket closes. True once it had been set up."""
        async with connect(self.websocket_url, additional_headers=self._headers(), open_timeout=self.timeout,
                           max_size=MAX_MESSAGE_BYTES, proxy=None) as ws:
            self._ws = ws
            reader = asyncio.create_task(self._read(ws))
            follower: asyncio.Task[None] | None = None
            try:
                await self._set_up()
                self._first_attempt.set()
                follower = asyncio.create_task(self._follow_temperature_profiles())
                await reader
                return True
            finally:
                tasks = [t for t in (reader, follower) if t is not None]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._ws = None

    async def _set_up(self) -> None:
        try:
            await self.call("server.connection.identify", {
                "client_name": self.client_name, "version": __version__, "type": "agent", "url": "",
            })
        except ConnectorError as exc:
            # Moonraker opens the websocket for anyone and refuses the first request instead.
            if "unauthorized" in str(exc).lower():
                missing = "the API key was refused" if self.api_key else "it needs an API key (--moonraker-api-key)"
                raise ConnectorError(f"Moonraker refused the connection: {missing}") from exc
            raise
        info = await self.call("server.info")
        self._moonraker_version = info.get("moonraker_version") or self._moonraker_version
        await self._load_webcams()
        with contextlib.suppress(ConnectorError):  # a slow database is no reason to drop the printer
            await self._load_temperature_profiles()
        self._connection_error = ""
        await self._klippy_changed(str(info.get("klippy_state", "disconnected")))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._dispatch(raw)
        finally:
            # Whatever was asked on this connection will not be answered now.
            self._fail_pending("connection to Moonraker lost")

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("Moonraker sent something that is not JSON: %.200r", raw)
            return
        if not isinstance(message, dict):
            return
        if "method" in message:
            params = message.get("params")
            self._notification(str(message["method"]), params if isinstance(params, list) else [])
            return
        entry = self._pending.get(message.get("id", -1))
        if entry is None or entry[0].done():
            return
        future, on_result = entry
        if "error" in message:
            error = message["error"]
            text = error.get("message") if isinstance(error, dict) else str(error)
            future.set_exception(MoonrakerRefused(text or "Moonraker reported an error"))
            return
        result = message.get("result")
        if on_result is not None:
            on_result(result)
        future.set_result(result)

    def _fail_pending(self, reason: str) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(ConnectorError(reason))
        self._pending.clear()

    def _disconnected(self) -> None:
        self._ws = None
        self._subscribed = False
        self._klippy_state = "disconnected"
        self._klippy_message = ""
        self._fail_pending(f"connection to Moonraker lost: {self._connection_error}")
        self._refresh()

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._helpers.add(task)
        task.add_done_callback(self._helper_done)

    def _helper_done(self, task: asyncio.Task[Any]) -> None:
        self._helpers.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None and not isinstance(exc, ConnectorError):
            log.error("Moonraker connector task failed", exc_info=exc)

    # -- Klipper's state -----------------------------------------------------------------

    def _notification(self, method: str, params: list[Any]) -> None:
        if method == "notify_status_update" and params and isinstance(params[0], dict):
            if self._subscribed:
                self._merge(params[0])
        elif method == "notify_klippy_ready":
            self._spawn(self._klippy_changed("ready"))
        elif method == "notify_klippy_shutdown":
            self._spawn(self._klippy_changed("shutdown"))
        elif method == "notify_klippy_disconnected":
            self._spawn(self._klippy_changed("disconnected"))
        elif method == "notify_webcams_changed":
            # Added, edited or removed in Mainsail or Fluidd: the agent must not keep the old one.
            self._spawn(self._load_webcams())

    async def _klippy_changed(self, state: str) -> None:
        """Follow Klipper through Moonraker: subscribe when it is ready, watch it when not."""
        self._klippy_state = state
        if state in ("ready", "shutdown"):
            # A shut-down Klipper still answers queries, and its objects say what went wrong.
            try:
                await self._subscribe()
            except ConnectorError as exc:
                log.warning("Moonraker at %s: could not subscribe to Klipper's state: %s", self.http_url, exc)
                self._subscribed = False
        else:
            self._subscribed = False
            self._objects = {}
        if state != "ready":
            await self._read_klippy_message()
        if not (state == "ready" and self._subscribed) and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.create_task(self._watch_klippy())
            self._helpers.add(self._watcher)
            self._watcher.add_done_callback(self._helper_done)
        self._refresh()

    async def _read_klippy_message(self) -> None:
        try:
            info = await self.call("printer.info")
        except ConnectorError as exc:
            self._klippy_message = str(exc)
            return
        self._klippy_message = str(info.get("state_message", "")).strip()
        self._klipper_version = info.get("software_version") or self._klipper_version

    async def _watch_klippy(self) -> None:
        """Ask Moonraker now and then until Klipper is ready and subscribed to: a Klipper that
        fails to start, or a subscription that failed, gets no notification."""
        ws = self._ws
        while ws is not None and self._ws is ws and not (self._klippy_state == "ready" and self._subscribed):
            await asyncio.sleep(KLIPPY_POLL_SECONDS)
            if self._ws is not ws:
                return
            try:
                info = await self.call("server.info")
            except ConnectorError:
                continue
            state = str(info.get("klippy_state", "disconnected"))
            if state == "ready" or state != self._klippy_state:
                await self._klippy_changed(state)

    async def _subscribe(self) -> None:
        available = set((await self.call("printer.objects.list")).get("objects", []))
        wanted = [name for name in WATCHED_OBJECTS if name in available]
        wanted += [f"extruder{n}" if n else "extruder" for n in range(MAX_EXTRUDERS)
                   if (f"extruder{n}" if n else "extruder") in available]
        wanted += [name for name in CHAMBER_OBJECTS if name in available][:1]

        def replace(result: Any) -> None:
            self._objects = {name: dict(fields) for name, fields in result.get("status", {}).items()}
            self._subscribed = True
            self._refresh()

        await self.call("printer.objects.subscribe", {"objects": {name: None for name in wanted}},
                        on_result=replace)
        info = await self.call("printer.info")
        self._klipper_version = info.get("software_version") or self._klipper_version
        self._klippy_message = str(info.get("state_message", "")).strip()
        self._refresh()

    def _merge(self, status: dict[str, Any]) -> None:
        for name, fields in status.items():
            if isinstance(fields, dict):
                self._objects.setdefault(name, {}).update(fields)
        self._refresh()

    def _target(self, heater: str) -> float:
        return _float_or_none(self._objects.get(heater, {}).get("target")) or 0.0

    def _heaters(self) -> list[str]:
        return [name for name in self._objects if name.startswith("extruder") or name == "heater_bed"]

    def _safe_lift(self, lift: float) -> float:
        """The lift, cut so that the head stays inside the Z travel Klipper knows."""
        if lift <= 0:
            return 0.0
        toolhead = self._objects.get("toolhead", {})
        low, high = _vector(toolhead.get("axis_minimum")), _vector(toolhead.get("axis_maximum"))
        position = _vector(toolhead.get("position"))
        if low is not None and high is not None and position is not None and high[2] > low[2]:
            return max(0.0, min(lift, high[2] - position[2]))
        return lift  # a printer without Z limits (kinematics: none) has nothing to run into

    async def _load_webcams(self) -> None:
        try:
            listed = (await self.call("server.webcams.list")).get("webcams", [])
        except ConnectorError:
            listed = []  # Moonraker without the webcam component
        cameras = [c for c in listed if isinstance(c, dict)] if isinstance(listed, list) else []
        # The first enabled webcam with a snapshot URL is the one pictures are taken from.
        primary = next((c for c in cameras if c.get("enabled", True) and c.get("snapshot_url")), None)
        self._webcam_snapshot_url = self._front_end_url(str(primary["snapshot_url"])) if primary else None
        self._webcams = [_webcam(c, is_primary=c is primary) for c in cameras]

    async def _load_temperature_profiles(self) -> None:
        profiles: list[dict[str, Any]] = []
        for (namespace, key), read in ((frontend_presets.MAINSAIL, frontend_presets.mainsail_profiles),
                                       (frontend_presets.FLUIDD, frontend_presets.fluidd_profiles)):
            try:
                item = await self.call("server.database.get_item", {"namespace": namespace, "key": key})
            except MoonrakerRefused:
                continue  # that front end was never opened on this printer: its namespace does not exist
            named = {p["name"] for p in profiles}
            profiles += [p for p in read(item.get("value") if isinstance(item, dict) else None)
                         if p["name"] not in named]
        self._temperature_profiles = profiles[:frontend_presets.MAX_PRESETS]

    async def _follow_temperature_profiles(self) -> None:
        while True:
            await asyncio.sleep(self.presets_refresh_seconds)
            with contextlib.suppress(ConnectorError):  # no answer: the ones read last stay till the next try
                await self._load_temperature_profiles()

    def _front_end_url(self, url: str) -> str:
        # Relative webcam URLs are written for the web front end (Mainsail, Fluidd) that serves
        # the camera from the same host's web server, not from Moonraker's own port.
        parts = urlsplit(self.http_url)
        return urljoin(urlunsplit((parts.scheme, parts.hostname or "", "/", "", "")), url)

    # -- snapshot and events -------------------------------------------------------------

    def _refresh(self) -> None:
        """Rebuild the snapshot from the merged state, then report what changed."""
        before = self._snapshot.state
        events = self._job_events()
        self._snapshot = self._build_snapshot()
        if self._snapshot.state is not before and self._print_state is not None:
            self._send(Event.PRINTER_STATE_CHANGED,
                       {"state_id": self._snapshot.state.name, "state_string": self._snapshot.state.value})
        for event, data in events:
            self._send(event, data)
        filename = self._objects.get("print_stats", {}).get("filename")
        if self._subscribed and filename and filename not in self._metadata and filename not in self._metadata_wanted:
            if len(self._metadata) > 100:
                self._metadata.clear()
            self._metadata_wanted.add(filename)
            self._spawn(self._fetch_metadata(filename))

    def _klippy_now(self) -> str:
        """Klipper's state: its own webhooks object is fresher than Moonraker's notifications."""
        if self._ws is None:
            return "unknown"  # Moonraker is away; Klipper may well be printing on
        if self._subscribed:
            return str(self._objects.get("webhooks", {}).get("state") or self._klippy_state)
        return self._klippy_state

    def _job_events(self) -> list[tuple[Event, dict[str, Any]]]:
        klippy = self._klippy_now()
        if klippy in ("shutdown", "error") and self._print_state in IN_JOB:
            # A Klipper that shuts down loses the print it was running. ("disconnected" is not
            # enough: a Moonraker that just started says so until it has reached Klipper, which
            # may be printing on; a Klipper restart shows as "standby" once it is back.)
            self._print_state = "error"
            self._pause_restore = None
            reason = self._klippy_message or self._objects.get("webhooks", {}).get("state_message") or klippy
            return [(Event.PRINT_FAILED, {**self._job, "reason": f"Klipper {klippy}: {reason}".strip()})]
        if klippy != "ready" or not self._subscribed:
            return []
        stats = self._objects.get("print_stats", {})
        new = stats.get("state")
        old = self._print_state
        if not isinstance(new, str):
            return []
        self._print_state = new
        if old is None or old == new:
            return []  # the first state seen is where watching starts, not an event
        events: list[tuple[Event, dict[str, Any]]] = []
        if new in IN_JOB and old not in IN_JOB:
            self._job = self._job_payload()
            events.append((Event.PRINT_STARTED, self._job))
            if new == "paused":
                events.append((Event.PRINT_PAUSED, self._job))
        elif new == "paused":
            events.append((Event.PRINT_PAUSED, self._job))
        elif new == "printing":
            events.append((Event.PRINT_RESUMED, self._job))
        elif new in JOB_ENDS:
            if old not in IN_JOB:  # the whole job went by between two updates
                self._job = self._job_payload()
                events.append((Event.PRINT_STARTED, self._job))
            payload = {**self._job, "time": stats.get("print_duration")}
            if new == "error":
                payload["reason"] = stats.get("message") or "error"
            events.append((JOB_ENDS[new], payload))
            self._pause_restore = None
        elif new == "standby" and old in IN_JOB:
            # Klipper restarted (or the SD card was reset) under a running print.
            events.append((Event.PRINT_FAILED, {**self._job, "time": stats.get("print_duration"),
                                                "reason": "the print stopped: Klipper restarted"}))
            self._pause_restore = None
        return events

    def _job_payload(self) -> dict[str, Any]:
        path = str(self._objects.get("print_stats", {}).get("filename") or "")
        return {"name": posixpath.basename(path), "path": path, "origin": "local",
                "size": self._objects.get("virtual_sdcard", {}).get("file_size")}

    def _send(self, event: Event, data: dict[str, Any]) -> None:
        if self._emit is None:
            return
        try:
            self._emit(event, dict(data))
        except Exception:
            log.exception("event sink failed on %s", event.value)

    async def _fetch_metadata(self, filename: str) -> None:
        try:
            self._metadata[filename] = await self.call("server.files.metadata", {"filename": filename})
        except ConnectorError:
            self._metadata[filename] = {}  # not analysed (yet): the estimate falls back on progress
        finally:
            self._metadata_wanted.discard(filename)
        self._refresh()

    def _build_snapshot(self) -> PrinterSnapshot:
        if self._ws is None:
            return PrinterSnapshot(state=PrinterState.OFFLINE,
                                   error=f"Moonraker at {self.http_url}: {self._connection_error}")
        webhooks = self._objects.get("webhooks", {})
        klippy_state = str(webhooks.get("state") or self._klippy_state) if self._subscribed else self._klippy_state
        message = str(webhooks.get("state_message") or self._klippy_message or "").strip()
        if klippy_state in ("shutdown", "error"):
            snapshot = PrinterSnapshot(state=PrinterState.ERROR, error=message or f"Klipper {klippy_state}")
        elif klippy_state != "ready" or not self._subscribed:
            reason = {"startup": "Klipper is starting", "disconnected": "Klipper is not connected to Moonraker",
                      "ready": "subscribing to Klipper's state"}
            text = message if klippy_state == "startup" and message else reason.get(klippy_state, klippy_state)
            return PrinterSnapshot(state=PrinterState.OFFLINE, error=text)
        else:
            snapshot = self._job_snapshot()
        snapshot.temperatures = self._temperatures()
        snapshot.z = self._z()
        return snapshot

    def _job_snapshot(self) -> PrinterSnapshot:
        stats = self._objects.get("print_stats", {})
        sdcard = self._objects.get("virtual_sdcard", {})
        state = str(stats.get("state") or "standby")
        paused = bool(self._objects.get("pause_resume", {}).get("is_paused"))
        if state == "printing":
            printer_state = PrinterState.PAUSING if paused else PrinterState.PRINTING
        elif state == "paused":
            printer_state = PrinterState.PAUSED
        else:
            printer_state = PrinterState.OPERATIONAL
        snapshot = PrinterSnapshot(state=printer_state)
        if state == "error":
            # The print failed; the printer itself is usable, so it stays Operational.
            snapshot.error = str(stats.get("message") or "the print failed")
        path = str(stats.get("filename") or "")
        if not path:
            return snapshot
        metadata = self._metadata.get(path, {})
        progress = sdcard.get("progress")
        duration = stats.get("print_duration")
        estimate = metadata.get("estimated_time")
        snapshot.file_name = posixpath.basename(path)
        snapshot.file_path = path
        snapshot.file_origin = "local"
        snapshot.file_size = _int_or_none(sdcard.get("file_size") or metadata.get("size"))
        snapshot.file_position = _int_or_none(sdcard.get("file_position"))
        snapshot.completion = None if progress is None else round(float(progress) * 100.0, 2)
        snapshot.print_time = None if duration is None else float(duration)
        snapshot.estimated_print_time = None if estimate is None else float(estimate)
        snapshot.print_time_left = _time_left(state, progress, duration, estimate)
        info = stats.get("info") or {}
        snapshot.layer = _int_or_none(info.get("current_layer"))
        snapshot.total_layers = _int_or_none(info.get("total_layer") or metadata.get("layer_count"))
        return snapshot

    def _temperatures(self) -> dict[str, Temperature]:
        temps: dict[str, Temperature] = {}
        for name, fields in self._objects.items():
            if name.startswith("extruder"):
                key = "tool" + (name[len("extruder"):] or "0")
            elif name == "heater_bed":
                key = "bed"
            elif name in CHAMBER_OBJECTS:
                key = "chamber"
            else:
                continue
            temps[key] = Temperature(actual=_float_or_none(fields.get("temperature")),
                                     target=_float_or_none(fields.get("target")))
        return temps

    def _z(self) -> float | None:
        for name, key in (("gcode_move", "gcode_position"), ("toolhead", "position")):
            position = _vector(self._objects.get(name, {}).get(key))
            if position is not None:
                return round(position[2], 3)
        return None


# -- helpers -------------------------------------------------------------------------------


def _http_base(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` from what a user may type: a bare host, a ws URL…"""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not a Moonraker URL: {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/websocket"):
        path = path[: -len("/websocket")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _websocket_url(http_url: str) -> str:
    parts = urlsplit(http_url)
    return urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, parts.path + "/websocket", "", ""))


def _upload_name(filename: str) -> str:
    """A safe name in Moonraker's gcodes root: no directories, and a suffix it will print."""
    name = posixpath.basename(unquote(filename).replace("\\", "/")).strip() or "print.gcode"
    if not name.lower().endswith(GCODE_SUFFIXES):
        name += ".gcode"
    return name


def _time_left(state: str, progress: Any, duration: Any, estimate: Any) -> float | None:
    if state not in IN_JOB or duration is None:
        return None
    done = float(duration)
    if estimate:
        return max(float(estimate) - done, 0.0)  # the slicer's estimate
    if progress and float(progress) > 0:
        return max(done / float(progress) - done, 0.0)  # the pace so far, carried to the end
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is Moonraker running?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectorError):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _http_error(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {response.status_code}: {message or response.text[:200]}"


def _vector(value: Any) -> list[float] | None:
    """X, Y, Z (and more) of a Klipper position, or None when it is not one."""
    if isinstance(value, list | tuple) and len(value) >= 3 and all(_float_or_none(v) is not None for v in value):
        return [float(v) for v in value]
    return None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _webcam(camera: dict[str, Any], *, is_primary: bool) -> dict[str, Any]:
    """One of Moonraker's webcams as the protocol's settings describe a camera (OctoPrint's words)."""
    rotation = camera.get("rotation")
    ratio = camera.get("aspect_ratio")
    return {
        "name": str(camera.get("name") or "")[:64],
        "is_primary_camera": is_primary,
        "flipH": camera.get("flip_horizontal") is True,
        "flipV": camera.get("flip_vertical") is True,
        "rotation": rotation if rotation in (0, 90, 180, 270) and not isinstance(rotation, bool) else 0,
        "streamRatio": ratio if ratio in ("4:3", "16:9") else None,
    }
