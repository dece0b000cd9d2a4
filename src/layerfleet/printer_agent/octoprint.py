"""A printer driven by OctoPrint, through its REST API and its push socket.

The connector logs in passively with the API key (``POST /api/login {"passive": true}``),
opens OctoPrint's raw push websocket (``/sockjs/websocket``), authenticates it with
``{"auth": "name:session"}`` and subscribes to state and events. The snapshot is kept from
the ``current`` / ``history`` pushes and the events; pause, resume, cancel and printing go
through ``/api/job``, ``/api/printer/command`` and ``/api/files/local``. When OctoPrint goes
away the printer is reported OFFLINE with the reason, and the connector reconnects with
backoff (1 s doubling to 30 s, jittered).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import IO, Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from layerfleet.pacing import woken_within
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

MIN_RECONNECT_DELAY = 1.0
MAX_RECONNECT_DELAY = 30.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the `history` push carries minutes of temperature samples
MAX_GCODE_BYTES = 1024**3
TRANSFER_TIMEOUT = 10 * 60.0  # downloading and uploading G-code files
# OctoPrint pauses once the commands already sent are done: a heat-up (M190) can take many
# minutes, and only then may the head move away.
PAUSE_EFFECTIVE_TIMEOUT = 20 * 60.0
RETRACT_SPEED = 1800  # mm/min, a common retraction speed
LIFT_SPEED = 600  # mm/min, gentle enough for any Z axis
GCODE_SUFFIXES = (".gcode", ".gco", ".g")
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
REAUTH_MIN_INTERVAL = 10.0  # seconds

# Subscribing spares us OctoPrint's terminal log and firmware messages in every push.
SUBSCRIPTION = {"subscribe": {"state": {"logs": False, "messages": False}, "events": True, "plugins": False}}

# `state_id` of OctoPrint's PrinterStateChanged event.
STATE_IDS = {
    "OFFLINE": PrinterState.OFFLINE,
    "OPEN_SERIAL": PrinterState.OFFLINE,
    "DETECT_SERIAL": PrinterState.OFFLINE,
    "CONNECTING": PrinterState.OFFLINE,
    "CLOSED": PrinterState.OFFLINE,
    "OPERATIONAL": PrinterState.OPERATIONAL,
    "TRANSFERING_FILE": PrinterState.OPERATIONAL,
    "STARTING": PrinterState.PRINTING,
    "PRINTING": PrinterState.PRINTING,
    "PAUSING": PrinterState.PAUSING,
    "PAUSED": PrinterState.PAUSED,
    "RESUMING": PrinterState.RESUMING,
    "CANCELLING": PrinterState.CANCELLING,
    "FINISHING": PrinterState.FINISHING,
    "ERROR": PrinterState.ERROR,
    "CLOSED_WITH_ERROR": PrinterState.ERROR,
}
EVENTS = {event.value: event for event in Event}
PRINT_ENDS = frozenset({Event.PRINT_DONE, Event.PRINT_FAILED, Event.PRINT_CANCELLED})
EXTRUSION_MODE = re.compile(rb"^\s*(?:N\d+\s+)?M8([23])(?![0-9])", re.IGNORECASE | re.MULTILINE)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class _AuthRejected(Exception):
    """OctoPrint refused the API key: retrying soon will not help, but the key may be fixed."""


class _ReauthRequired(Exception):
    """OctoPrint keeps invalidating the push socket's login."""


@dataclass
class _PauseRestore:
    """What `pause` did beyond OctoPrint's own pause, so that `resume` can undo it."""

    retracted: float = 0.0
    relative_extrusion: bool = False  # the print's own extrusion mode, to put back after unretracting
    lifted: float = 0.0
    heater_targets: dict[str, float] = field(default_factory=dict)  # "tool0", "bed" -> °C


class OctoPrintConnector(Connector):
    kind = "octoprint"

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.url, headers={"X-Api-Key": api_key}, timeout=timeout)
        self._snapshot = PrinterSnapshot(state=PrinterState.OFFLINE, error="not connected to OctoPrint yet")
        self._emit: EventSink | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._first_contact = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._octoprint_version: str | None = None
        self._temperature_settings: dict[str, Any] | None = None
        self._webcams: list[dict[str, Any]] = []
        self._snapshot_url: str | None = None
        self._pause_restore: _PauseRestore | None = None
        self._pause_lock = asyncio.Lock()  # a resume waits for a pause still parking the printer
        self._had_state = False  # since the last (re)connection, so that backoff starts over

    # -- Connector ------------------------------------------------------------------------

    async def start(self, emit: EventSink) -> None:
        """Start watching; returns after the first attempt to reach OctoPrint (or `timeout`),
        so that the first snapshot and `snapshot_url` are meaningful."""
        self._emit = emit
        self._watcher = asyncio.create_task(self._watch(), name=f"octoprint watcher {self.url}")
        await woken_within(self._first_contact, self.timeout * 2)

    async def close(self) -> None:
        tasks = [t for t in (self._watcher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    def snapshot(self) -> PrinterSnapshot:
        return self._snapshot

    async def pause(self, options: PauseOptions) -> None:
        async with self._pause_lock:
            job = await self._job()
            if job.get("state") in ("Paused", "Pausing"):
                return  # pausing again would retract and lift twice
            await self._job_command({"command": "pause", "action": "pause"}, "pause")
            if options.retract > 0 or options.lift_z > 0 or options.tools_off or options.bed_off:
                job = await self._wait_until_paused()
                await self._park(job, options)

    async def _park(self, job: dict[str, Any], options: PauseOptions) -> None:
        """Retract, lift and turn heaters off as the pause options ask, and remember how to undo it."""
        restore = _PauseRestore()
        commands: list[str] = []
        if options.retract > 0:
            relative = await self._extrusion_is_relative(job)
            if relative is None:
                log.warning("OctoPrint %s: not retracting on pause, the print's extrusion mode is unknown", self.url)
            else:
                restore.retracted, restore.relative_extrusion = options.retract, relative
                commands += ["M83", f"G1 E-{options.retract:.3f} F{RETRACT_SPEED}"]
                if not relative:
                    commands.append("M82")
        if options.lift_z > 0:
            restore.lifted = options.lift_z
            # Slicers print in absolute positioning (G90), so that is what the print gets back.
            commands += ["G91", f"G1 Z{options.lift_z:.3f} F{LIFT_SPEED}", "G90"]
        if options.tools_off or options.bed_off:
            targets = await self._heater_targets()
            tools = sorted(name for name in targets if name.startswith("tool"))
            for name in [*tools, "bed"]:
                target = targets.get(name, 0.0)
                if target > 0 and ((options.tools_off and name != "bed") or (options.bed_off and name == "bed")):
                    restore.heater_targets[name] = target
                    commands.append(_set_temperature(name, 0, tools))
        if commands:
            await self._send_gcode(commands, "park the printer on pause")
        self._pause_restore = restore

    async def resume(self) -> None:
        async with self._pause_lock:
            state = (await self._job()).get("state")
            if state == "Pausing":
                await self._wait_until_paused()
            elif state in ("Resuming", "Printing", "Starting"):
                return
            elif state != "Paused":
                raise ConnectorError(f"cannot resume: the printer is not paused (OctoPrint: {state})")
            restore = self._pause_restore
            if restore is not None and (commands := _restore_commands(restore)):
                # Queued ahead of the print: OctoPrint reports Resuming until the heaters are
                # back at temperature and the nozzle is back in place.
                await self._send_gcode(commands, "restore the printer on resume")
            await self._job_command({"command": "pause", "action": "resume"}, "resume")
            self._pause_restore = None

    async def cancel(self) -> None:
        await self._job_command({"command": "cancel"}, "cancel")
        self._pause_restore = None

    async def print_file(self, url: str, filename: str) -> None:
        """Download the G-code, upload it to OctoPrint's local storage and have it printed."""
        name = _upload_name(filename, url)
        state = self._snapshot.state
        if state is not PrinterState.OPERATIONAL:
            raise ConnectorError(f"cannot print {name}: the printer is {state.value.lower()}")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            await _download(url, name, spool)
            spool.seek(0)
            response = await self._request(
                "POST", "/api/files/local", files={"file": (name, spool, "application/octet-stream")},
                data={"select": "true", "print": "true"}, timeout=TRANSFER_TIMEOUT,
            )
        if not response.is_success:
            raise ConnectorError(f"OctoPrint refused {name}: {_error_text(response)}")
        if not response.json().get("effectivePrint"):
            raise ConnectorError(f"OctoPrint stored {name} but did not start printing it (is the printer busy?)")

    def host_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        if self._octoprint_version:
            settings["octoprint_version"] = self._octoprint_version
        if self._temperature_settings is not None:
            settings["temperature"] = self._temperature_settings
        if self._webcams:
            settings["webcams"] = self._webcams
        return settings

    def snapshot_url(self) -> str | None:
        return self._snapshot_url

    # -- the push socket ------------------------------------------------------------------

    async def _watch(self) -> None:
        delay = MIN_RECONNECT_DELAY
        while True:
            self._had_state = False
            try:
                await self._follow_push_socket()
                reason = "OctoPrint closed the push connection"
            except _AuthRejected as exc:
                reason = str(exc)
                log.error("OctoPrint %s: %s", self.url, reason)
            except _ReauthRequired:
                reason = "OctoPrint keeps refusing the push connection's login"
            except (httpx.HTTPError, OSError, WebSocketException, TimeoutError, ConnectorError) as exc:
                reason = f"OctoPrint at {self.url} is unreachable: {_describe(exc)}"
            except ValueError as exc:  # JSON that is not what OctoPrint sends
                reason = f"OctoPrint at {self.url} answered unexpectedly: {exc}"
            except Exception as exc:  # a bug here must not leave the printer unwatched for good
                log.exception("OctoPrint %s: watching failed", self.url)
                reason = f"watching OctoPrint at {self.url} failed: {_describe(exc)}"
            if self._had_state:
                delay = MIN_RECONNECT_DELAY
            self._go_offline(reason)
            self._first_contact.set()
            log.warning("OctoPrint %s: %s; reconnecting in %.0f s", self.url, reason, delay)
            await asyncio.sleep(min(MAX_RECONNECT_DELAY, delay * random.uniform(0.75, 1.25)))
            delay = min(delay * 2, MAX_RECONNECT_DELAY)

    async def _follow_push_socket(self) -> None:
        version = await self._get_json("/api/version")
        self._octoprint_version = str(version.get("server") or "") or None
        await self._load_settings()
        socket_url = urlunsplit(urlsplit(self.url)._replace(scheme="wss" if self.url.startswith("https") else "ws"))
        async with connect(f"{socket_url}/sockjs/websocket", open_timeout=self.timeout,
                           max_size=MAX_MESSAGE_BYTES) as socket:
            await self._authenticate(socket)
            last_reauth = -REAUTH_MIN_INTERVAL
            async for raw in socket:
                message = json.loads(raw)
                if not isinstance(message, dict):
                    continue
                if "reauthRequired" in message:
                    # OctoPrint asks this when the user was modified, say; logging in again
                    # keeps the printer in view. Asked again right away, something is wrong:
                    # start over with backoff.
                    if time.monotonic() - last_reauth < REAUTH_MIN_INTERVAL:
                        raise _ReauthRequired
                    last_reauth = time.monotonic()
                    await self._authenticate(socket)
                    continue
                self._handle(message)

    async def _authenticate(self, socket: ClientConnection) -> None:
        login = await self._post_json("/api/login", {"passive": True})
        name, session = login.get("name"), login.get("session")
        if not name or not session:
            raise _AuthRejected("OctoPrint's passive login returned no user session")
        await socket.send(json.dumps({"auth": f"{name}:{session}"}))
        await socket.send(json.dumps(SUBSCRIPTION))

    def _handle(self, message: dict[str, Any]) -> None:
        for kind, payload in message.items():
            if kind in ("current", "history") and isinstance(payload, dict):
                self._take_current(payload)
            elif kind == "event" and isinstance(payload, dict):
                self._take_event(str(payload.get("type")), payload.get("payload"))

    def _take_current(self, data: dict[str, Any]) -> None:
        state = _dict(data.get("state"))
        job = _dict(data.get("job"))
        file = _dict(job.get("file"))
        progress = _dict(data.get("progress"))
        temperatures = dict(self._snapshot.temperatures)
        samples = data.get("temps")
        if isinstance(samples, list) and samples and isinstance(samples[-1], dict):
            temperatures = _temperatures(samples[-1])  # the pushes without samples keep the last ones
        self._snapshot = PrinterSnapshot(
            state=_state_from_flags(_dict(state.get("flags"))),
            state_text=_str(state.get("text")),
            error=_str(state.get("error")) or "",
            file_name=_str(file.get("name")),
            file_path=_str(file.get("path")),
            file_size=_int(file.get("size")),
            file_origin=_str(file.get("origin")),
            completion=_float(progress.get("completion")),
            print_time=_float(progress.get("printTime")),
            print_time_left=_float(progress.get("printTimeLeft")),
            file_position=_int(progress.get("filepos")),
            estimated_print_time=_float(job.get("estimatedPrintTime")),
            z=_float(data.get("currentZ")),
            temperatures=temperatures,
        )
        self._had_state = True
        self._first_contact.set()

    def _take_event(self, name: str, payload: Any) -> None:
        data = payload if isinstance(payload, dict) else {}
        event = EVENTS.get(name)
        snapshot = self._snapshot
        if event is Event.PRINTER_STATE_CHANGED and data.get("state_id") in STATE_IDS:
            snapshot = replace(snapshot, state=STATE_IDS[data["state_id"]], state_text=_str(data.get("state_string")))
        elif event is Event.PRINT_STARTED:
            # Whoever handles the event reads the snapshot right away, before the next push
            # brings the new job.
            self._pause_restore = None
            snapshot = replace(snapshot, file_name=_str(data.get("name")), file_path=_str(data.get("path")),
                               file_size=_int(data.get("size")), file_origin=_str(data.get("origin")),
                               completion=0.0, print_time=0.0, print_time_left=None, file_position=0)
        elif event in PRINT_ENDS:
            self._pause_restore = None
        elif name == "SettingsUpdated":
            self._spawn(self._reload_settings())
        if snapshot is not self._snapshot:
            self._snapshot = replace(snapshot, taken_at=time.time())
        if event is not None and self._emit is not None:
            try:
                self._emit(event, data)
            except Exception:  # the sink's trouble must not cut the push connection
                log.exception("OctoPrint %s: handling %s failed", self.url, name)

    def _go_offline(self, reason: str) -> None:
        self._snapshot = PrinterSnapshot(state=PrinterState.OFFLINE, state_text="Offline", error=reason)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- settings -------------------------------------------------------------------------

    async def _reload_settings(self) -> None:
        try:
            await self._load_settings()
        except (ConnectorError, _AuthRejected, httpx.HTTPError, ValueError) as exc:
            log.warning("OctoPrint %s: could not reload its settings: %s", self.url, _describe(exc))

    async def _load_settings(self) -> None:
        settings = await self._get_json("/api/settings")
        temperature = settings.get("temperature")
        self._temperature_settings = temperature if isinstance(temperature, dict) else None
        webcam = _dict(settings.get("webcam"))
        cameras = [c for c in webcam.get("webcams") or [] if isinstance(c, dict)]
        primary = webcam.get("defaultWebcam")
        self._webcams = [_webcam(c, primary) for c in cameras]
        # 1.11 keeps the snapshot URL in the webcam provider's settings (the classicwebcam
        # plugin); /api/settings shows it per webcam and, for the snapshot webcam, at the top.
        snapshot_camera = next((c for c in cameras if c.get("name") == webcam.get("snapshotWebcam")), None)
        candidates = [
            _dict((snapshot_camera or {}).get("compat")).get("snapshot"),
            webcam.get("snapshotUrl"),
            _dict(_dict(settings.get("plugins")).get("classicwebcam")).get("snapshot"),
        ]
        url = next((c for c in candidates if isinstance(c, str) and c.strip()), None)
        self._snapshot_url = self._reachable_url(url.strip()) if url else None

    def _reachable_url(self, url: str) -> str:
        """``url`` as seen from the agent: relative to OctoPrint, and with "localhost" meaning
        OctoPrint's host (a webcam streamer usually runs beside OctoPrint)."""
        absolute = urlsplit(urljoin(self.url + "/", url))
        octoprint_host = urlsplit(self.url).hostname or ""
        if absolute.hostname in LOCAL_HOSTS and octoprint_host not in LOCAL_HOSTS:
            netloc = octoprint_host if absolute.port is None else f"{octoprint_host}:{absolute.port}"
            if ":" in octoprint_host:  # an IPv6 address
                netloc = f"[{octoprint_host}]" + ("" if absolute.port is None else f":{absolute.port}")
            absolute = absolute._replace(netloc=netloc)
        return urlunsplit(absolute)

    # -- REST -----------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ConnectorError(f"OctoPrint at {self.url} is unreachable: {_describe(exc)}") from exc
        if response.status_code in (401, 403):
            raise _AuthRejected(f"OctoPrint at {self.url} rejected the API key (HTTP {response.status_code})")
        return response

    async def _checked(self, method: str, path: str, doing: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._request(method, path, **kwargs)
        except _AuthRejected as exc:
            raise ConnectorError(f"cannot {doing}: {exc}") from exc
        if not response.is_success:
            raise ConnectorError(f"cannot {doing}: OctoPrint answered {_error_text(response)}")
        return response

    async def _get_json(self, path: str) -> dict[str, Any]:
        response = await self._request("GET", path)
        response.raise_for_status()
        return _dict(response.json())

    async def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._request("POST", path, json=body)
        if response.status_code == 400 and "CSRF" in response.text:
            # What OctoPrint answers a request that carries no valid API key.
            raise _AuthRejected(f"OctoPrint at {self.url} rejected the API key")
        response.raise_for_status()
        return _dict(response.json())

    async def _job(self) -> dict[str, Any]:
        return _dict((await self._checked("GET", "/api/job", "read the print job")).json())

    async def _job_command(self, body: dict[str, Any], verb: str) -> None:
        try:
            response = await self._request("POST", "/api/job", json=body)
        except _AuthRejected as exc:
            raise ConnectorError(f"cannot {verb}: {exc}") from exc
        if response.status_code == 409:
            problem = "the printer is not paused" if verb == "resume" else "the printer is not printing"
            raise ConnectorError(f"cannot {verb}: {problem} (OctoPrint: {_error_text(response)})")
        if not response.is_success:
            raise ConnectorError(f"cannot {verb}: OctoPrint answered {_error_text(response)}")

    async def _wait_until_paused(self) -> dict[str, Any]:
        """The job once OctoPrint is Paused. The push socket says when to look; OctoPrint's
        /api/job has the last word (and the file position the pause stopped at)."""
        deadline = time.monotonic() + PAUSE_EFFECTIVE_TIMEOUT
        next_look = 0.0
        while True:
            if self._snapshot.state is not PrinterState.PAUSING or time.monotonic() >= next_look:
                job = await self._job()
                state = job.get("state")
                if state == "Paused":
                    return job
                if state != "Pausing":
                    raise ConnectorError(f"the pause did not take effect: OctoPrint is {state}")
                next_look = time.monotonic() + 5
            if time.monotonic() > deadline:
                raise ConnectorError(f"OctoPrint is still pausing after {PAUSE_EFFECTIVE_TIMEOUT:.0f} s")
            await asyncio.sleep(0.2)

    async def _send_gcode(self, commands: list[str], doing: str) -> None:
        await self._checked("POST", "/api/printer/command", doing, json={"commands": commands})

    async def _heater_targets(self) -> dict[str, float]:
        response = await self._checked("GET", "/api/printer", "read the temperatures",
                                       params={"exclude": "sd,state"})
        temperatures = _dict(_dict(response.json()).get("temperature"))
        targets: dict[str, float] = {}
        for name, values in temperatures.items():
            target = _float(_dict(values).get("target"))
            if (name.startswith("tool") or name == "bed") and target is not None:
                targets[name] = target
        return targets

    async def _extrusion_is_relative(self, job: dict[str, Any]) -> bool | None:
        """Whether the print extrudes in relative mode (M83) where it paused, from the last
        M82 / M83 in its G-code before that point; None when that cannot be told."""
        file = _dict(_dict(job.get("job")).get("file"))
        position = _int(_dict(job.get("progress")).get("filepos"))
        if file.get("origin") != "local" or not file.get("path") or not position:
            return None
        mode: bytes | None = None
        seen, rest = 0, b""
        try:
            async with self._http.stream("GET", f"/downloads/files/local/{quote(str(file['path']))}",
                                         headers={"Range": f"bytes=0-{position - 1}"},
                                         timeout=TRANSFER_TIMEOUT) as response:
                if response.status_code not in (200, 206):
                    return None
                async for chunk in response.aiter_bytes():
                    chunk = chunk[: position - seen]
                    seen += len(chunk)
                    lines = rest + chunk
                    cut = lines.rfind(b"\n") + 1
                    rest = lines[cut:]
                    for match in EXTRUSION_MODE.finditer(lines[:cut]):
                        mode = match.group(1)
                    if seen >= position:
                        break
        except httpx.HTTPError as exc:
            log.warning("OctoPrint %s: could not read %s: %s", self.url, file.get("path"), _describe(exc))
            return None
        for match in EXTRUSION_MODE.finditer(rest):
            mode = match.group(1)
        return None if mode is None else mode == b"3"


# -- helpers ------------------------------------------------------------------------------


def _restore_commands(restore: _PauseRestore) -> list[str]:
    tools = sorted(name for name in restore.heater_targets if name.startswith("tool"))
    # Bed first: it is the slow one, and the nozzle oozes less the later it is hot.
    heaters = sorted(restore.heater_targets.items(), key=lambda item: item[0] != "bed")
    commands = [_set_temperature(name, t, tools) for name, t in heaters]
    commands += [_wait_for_temperature(name, t, tools) for name, t in heaters]
    if restore.lifted > 0:
        commands += ["G91", f"G1 Z-{restore.lifted:.3f} F{LIFT_SPEED}", "G90"]
    if restore.retracted > 0:
        commands += ["M83", f"G1 E{restore.retracted:.3f} F{RETRACT_SPEED}"]
        if not restore.relative_extrusion:
            commands.append("M82")
    return commands


def _set_temperature(heater: str, target: float, tools: list[str]) -> str:
    if heater == "bed":
        return f"M140 S{target:g}"
    return f"M104{_tool_parameter(heater, tools)} S{target:g}"


def _wait_for_temperature(heater: str, target: float, tools: list[str]) -> str:
    if heater == "bed":
        return f"M190 S{target:g}"
    return f"M109{_tool_parameter(heater, tools)} S{target:g}"


def _tool_parameter(heater: str, tools: list[str]) -> str:
    # With one tool the firmware's active tool is the one; naming it would break firmwares
    # that take T as a tool change.
    return f" T{heater.removeprefix('tool')}" if len(tools) > 1 else ""


def _state_from_flags(flags: dict[str, Any]) -> PrinterState:
    if flags.get("error"):
        return PrinterState.ERROR
    if not flags.get("operational"):
        return PrinterState.OFFLINE
    for flag, state in (("cancelling", PrinterState.CANCELLING), ("pausing", PrinterState.PAUSING),
                        ("paused", PrinterState.PAUSED), ("resuming", PrinterState.RESUMING),
                        ("finishing", PrinterState.FINISHING), ("printing", PrinterState.PRINTING)):
        if flags.get(flag):
            return state
    return PrinterState.OPERATIONAL


def _temperatures(sample: dict[str, Any]) -> dict[str, Temperature]:
    temperatures: dict[str, Temperature] = {}
    for name, values in sample.items():
        if name == "time" or not isinstance(values, dict):
            continue
        actual, target = _float(values.get("actual")), _float(values.get("target"))
        if actual is not None or target is not None:  # OctoPrint lists a chamber even without one
            temperatures[name] = Temperature(actual=actual, target=target)
    return temperatures


def _webcam(camera: dict[str, Any], primary: Any) -> dict[str, Any]:
    compat = _dict(camera.get("compat"))
    return {
        "name": camera.get("name"),
        "displayName": camera.get("displayName"),
        "is_primary_camera": camera.get("name") == primary,
        "flipH": bool(camera.get("flipH")),
        "flipV": bool(camera.get("flipV")),
        # OctoPrint's rotate90 turns counter-clockwise; the protocol counts degrees clockwise.
        "rotation": 270 if camera.get("rotate90") else 0,
        "streamRatio": compat.get("streamRatio"),
    }


async def _download(url: str, name: str, spool: IO[bytes]) -> None:
    size = 0
    try:
        async with httpx.AsyncClient(timeout=TRANSFER_TIMEOUT, follow_redirects=True) as client, \
                client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ConnectorError(f"could not download {name}: HTTP {response.status_code}")
            declared = _int(response.headers.get("Content-Length"))
            if declared is not None and declared > MAX_GCODE_BYTES:
                raise ConnectorError(f"{name} is too large to print ({declared} bytes)")
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_GCODE_BYTES:
                    raise ConnectorError(f"{name} is too large to print (more than {MAX_GCODE_BYTES} bytes)")
                spool.write(chunk)
    except httpx.HTTPError as exc:
        raise ConnectorError(f"could not download {name}: {_describe(exc)}") from exc


def _upload_name(filename: str, url: str) -> str:
    name = filename.strip() or unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "print.gcode"
    name = name.replace("\\", "/").rsplit("/", 1)[-1] or "print.gcode"
    return name if name.lower().endswith(GCODE_SUFFIXES) else f"{name}.gcode"


def _error_text(response: httpx.Response) -> str:
    try:
        message = response.json().get("error")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {response.status_code}" + (f": {message}" if message else "")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
