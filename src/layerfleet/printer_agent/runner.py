"""The agent's side of the Obico agent protocol, for any connector.

One `AgentRunner` per printer: it checks its token over HTTP, keeps a websocket to the server
open (reconnecting with backoff), sends status on the protocol's cadence, posts webcam
pictures, carries out the server's commands and answers its remote calls.

Print events are never lost to a server restart: event messages wait in an outbox while the
websocket is down and go out, in order and with the status they were raised with, once it is
back. Plain status messages are not queued; only the newest matters, and it is built fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from layerfleet import __version__
from layerfleet.pacing import woken_within
from layerfleet.printer_agent.camera import Camera, NamedCamera, SnapshotUrlCamera
from layerfleet.printer_agent.connector import (
    PRINT_END_EVENTS,
    Connector,
    ConnectorError,
    Event,
    PauseOptions,
    PrinterState,
    obico_status,
)

log = logging.getLogger(__name__)

AGENT_NAME = "layerfleet_agent"
CLOSE_DUPLICATE = 4321  # the server says another agent uses this token: stop for good
CLOSE_UNAUTHORIZED = 4401  # the token was reset (printer relinked) or is unknown
# The server going away or restarting is routine: the agent reconnects without alarming anyone.
CLOSE_SERVER_STOPPING = {1001, 1012}
NOT_PRINTING = -1
MAX_OUTBOX = 1000
MAX_FRAME_BYTES = 1024 * 1024


class Stopped(Enum):
    """Why `AgentRunner.run` returned."""

    REQUESTED = "stopped"
    DUPLICATE = "another agent is connected with this printer's token (server closed with 4321)"
    UNAUTHORIZED = "the server does not accept this printer token; link the printer again"


@dataclass(frozen=True)
class Cadence:
    """How often the agent talks; the defaults are the OctoPrint-Obico plugin's."""

    idle_status: float = 50.0
    active_status: float = 10.0
    active_updates: int = 15  # status messages at the active pace after an event or a server message
    watched_picture: float = 10.0  # printing and watched (or someone is viewing)
    unwatched_picture: float = 120.0
    min_backoff: float = 1.0
    max_backoff: float = 60.0
    http_timeout: float = 15.0


def websocket_url(server: str) -> str:
    base = server.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + "/ws/dev/"
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):] + "/ws/dev/"
    raise ValueError(f"the server URL must start with http:// or https://, not {server!r}")


class Backoff:
    """Exponential backoff with jitter, so a farm of agents does not reconnect in lockstep."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.current = low

    def next_delay(self) -> float:
        delay = self.current
        self.current = min(self.high, self.current * 2)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.current = self.low


class AgentRunner:
    def __init__(
        self,
        server: str,
        token: str,
        connector: Connector,
        camera: Camera | None = None,
        *,
        cameras: Sequence[NamedCamera] = (),
        cadence: Cadence | None = None,
        name: str = AGENT_NAME,
        label: str = "",
    ) -> None:
        self.server = server.rstrip("/")
        self.ws_url = websocket_url(server)
        self.token = token
        self.connector = connector
        self.camera = camera
        self.cameras = list(cameras)
        self._host_camera: SnapshotUrlCamera | None = None
        self.cadence = cadence or Cadence()
        self.name = name
        self.label = label or connector.kind
        self.printer_id: int | None = None
        self.should_watch = True
        self.viewing = False
        self.print_ts = NOT_PRINTING
        self.gcode_file_id: int | None = None
        self._outbox: deque[dict[str, Any]] = deque()
        self._settings_sent: dict[str, Any] | None = None
        self._wake_sender = asyncio.Event()
        self._wake_status = asyncio.Event()
        self._wake_picture = asyncio.Event()
        self._active_left = 0
        self._events: asyncio.Queue[tuple[Event, dict[str, Any], float]] = asyncio.Queue()
        self._events_in_flight = 0  # raised but not yet queued: the print time stamp is theirs to change
        self._socket: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopped_because = Stopped.REQUESTED
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.commands_received: list[dict[str, Any]] = []

    # -- public -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> Stopped:
        """Run until `stop()` or until the server tells the agent to give up."""
        self._http = httpx.AsyncClient(
            base_url=self.server, timeout=self.cadence.http_timeout,
            headers={"Authorization": f"Token {self.token}", "User-Agent": f"{self.name}/{__version__}"},
        )
        try:
            await self.connector.start(self._on_event)
            if not await self._fetch_printer():
                return self._stopped_because
            workers = [self._keep_connected(), self._send_outbox(), self._status_pacer(),
                       self._event_worker(), self._picture_pacer()]
            tasks = [asyncio.create_task(w) for w in workers]
            stop_wait = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("%s: agent task failed", self.label, exc_info=task.exception())
            for task in [*tasks, stop_wait]:
                task.cancel()
            await asyncio.gather(*tasks, stop_wait, return_exceptions=True)
            return self._stopped_because
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._socket is not None:
                await self._socket.close()
            await self.connector.close()
            await self._http.aclose()

    # -- HTTP ---------------------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None, "run() has not started"
        return self._http

    async def _fetch_printer(self) -> bool:
        """GET /api/v1/octo/printer/ until the server answers; False when the token is refused."""
        backoff = Backoff(self.cadence.min_backoff, self.cadence.max_backoff)
        while not self._stop.is_set():
            try:
                response = await self.http.get("/api/v1/octo/printer/")
            except httpx.HTTPError as exc:
                log.warning("%s: server %s unreachable (%s)", self.label, self.server, exc)
            else:
                if response.status_code in (401, 403):
                    log.error("%s: %s", self.label, Stopped.UNAUTHORIZED.value)
                    self._stopped_because = Stopped.UNAUTHORIZED
                    return False
                if response.is_success:
                    printer = response.json().get("printer") or {}
                    self.printer_id = printer.get("id")
                    log.info("%s: linked to printer %s (%s) on %s", self.label, self.printer_id,
                             printer.get("name"), self.server)
                    return True
                log.warning("%s: server answered %s to the printer lookup", self.label, response.status_code)
            await self._sleep(backoff.next_delay())
        return False

    async def _post_gcode_file(self, data: dict[str, Any]) -> int | None:
        snapshot = self.connector.snapshot()
        name = str(data.get("name") or snapshot.file_name or "")
        if not name:
            return None
        path = str(data.get("path") or snapshot.file_path or name)
        size = data.get("size") if isinstance(data.get("size"), int) else snapshot.file_size
        fields = {
            "filename": name,
            "safe_filename": path.rsplit("/", 1)[-1],
            "num_bytes": str(size or 0),
            # Without a hash of the file, the name, size and origin tell versions apart well enough.
            "agent_signature": f"ts:{path}:{size or 0}:{data.get('origin') or snapshot.file_origin or ''}"[:256],
            "url": "",
        }
        try:
            response = await self.http.post("/api/v1/octo/g_code_files/", data=fields)
            if response.is_success:
                value = response.json().get("id")
                return value if isinstance(value, int) else None
            log.warning("%s: g_code_files answered %s", self.label, response.status_code)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("%s: could not record the G-code file: %s", self.label, exc)
        return None

    async def post_printer_event(self, title: str, text: str, event_class: str = "ERROR") -> None:
        fields = {"event_title": title, "event_text": text, "event_class": event_class,
                  "event_type": "AGENT", "info_url": ""}
        try:
            await self.http.post("/api/v1/octo/printer_events/", data=fields)
        except httpx.HTTPError as exc:
            log.warning("%s: could not report %r: %s", self.label, title, exc)

    async def post_picture(self, *, viewing_boost: bool = False) -> bool:
        """A picture of every camera; whether the primary camera's went through."""
        sent = False
        camera = self.primary_camera()
        if camera is not None:
            sent = await self._post_camera(camera, {"is_primary_camera": "true"}, viewing_boost, "camera")
        for other in self.cameras:
            fields = {"is_primary_camera": "false", "is_nozzle_camera": "true" if other.nozzle else "false",
                      "camera_name": other.name}
            await self._post_camera(other.camera, fields, viewing_boost, f"camera {other.name!r}")
        return sent

    def primary_camera(self) -> Camera | None:
        """The camera configured for the agent, else the host's webcam as the host says now: a host
        that was still starting when the agent did, or whose webcam was set up later, tells it only then."""
        if self.camera is not None:
            return self.camera
        url = self.connector.snapshot_url()
        if url is None:
            return None
        if self._host_camera is None or self._host_camera.url != url:
            self._host_camera = SnapshotUrlCamera(url)
        return self._host_camera

    async def _post_camera(self, camera: Camera, fields: dict[str, str], viewing_boost: bool, which: str) -> bool:
        try:
            picture = await camera.snapshot()
        except Exception as exc:  # a broken camera must not stop the agent
            log.warning("%s: %s failed: %s", self.label, which, exc)
            return False
        if not picture:
            return False
        fields = {**fields, "viewing_boost": "true" if viewing_boost else "false"}
        try:
            response = await self.http.post(
                "/api/v1/octo/pic/", data=fields, files={"pic": ("snapshot.jpg", picture, "image/jpeg")})
        except httpx.HTTPError as exc:
            log.warning("%s: picture upload failed: %s", self.label, exc)
            return False
        if not response.is_success:
            log.warning("%s: the server refused a picture (%s): %s", self.label, response.status_code,
                        response.text[:200])
        return response.is_success

    # -- status and events ------------------------------------------------------------------

    def _current_print_ts(self) -> int | None:
        snapshot = self.connector.snapshot()
        if snapshot.state is PrinterState.OFFLINE:
            return None  # the printer cannot be seen: the server must not end or start anything
        if snapshot.state.in_print and self.print_ts == NOT_PRINTING:
            # Started (or the agent restarted) in the middle of a print: date it back.
            self.print_ts = int(time.time() - (snapshot.print_time or 0))
        elif not snapshot.state.in_print and snapshot.state is not PrinterState.ERROR \
                and self.print_ts != NOT_PRINTING and self._events_in_flight == 0:
            self.print_ts = NOT_PRINTING
            self.gcode_file_id = None
        return self.print_ts

    def status_message(self, *, with_settings: bool = False, print_ts: int | None = None) -> dict[str, Any]:
        ts = self._current_print_ts() if print_ts is None else print_ts
        status = obico_status(self.connector.snapshot())
        if self.gcode_file_id is not None:
            status["job"]["file"]["obico_g_code_file_id"] = self.gcode_file_id
        message: dict[str, Any] = {"status": status}
        if ts is not None:
            message["current_print_ts"] = ts
        settings = self.settings()
        # Besides on demand, settings go whenever they changed since the connection last carried
        # them: OctoPrint reloads its own when a user saves them (a webcam turned, profiles edited),
        # and a host that answered after the agent reached the server only then has its versions.
        if with_settings or settings != self._settings_sent:
            message["settings"] = settings
            self._settings_sent = settings
        return message

    def settings(self) -> dict[str, Any]:
        """Who this agent is and what it runs on (the Printer object's settings, seed 001)."""
        return {"agent": {"name": self.name, "version": __version__}, **self.connector.host_settings()}

    def _on_event(self, event: Event, data: dict[str, Any]) -> None:
        # Called by the connector, possibly from a callback; the worker does the async part.
        self._events_in_flight += 1
        self._events.put_nowait((event, dict(data), time.time()))

    async def _event_worker(self) -> None:
        while True:
            event, data, at = await self._events.get()
            try:
                if event is Event.PRINT_STARTED:
                    self.print_ts = int(at)
                    self.gcode_file_id = await self._post_gcode_file(data)
                elif self.print_ts == NOT_PRINTING and event in PRINT_END_EVENTS:
                    # The start was before the agent's time; the server still needs to know which print.
                    self.print_ts = int(at - (self.connector.snapshot().print_time or 0))
                message = self.status_message(print_ts=self.print_ts)
                message["event"] = {"event_type": event.value, "data": data}
                self._queue(message)
                if event in PRINT_END_EVENTS:
                    self.print_ts = NOT_PRINTING
                    self.gcode_file_id = None
            finally:
                self._events_in_flight -= 1
            self._become_active()
            self._wake_picture.set()
            log.info("%s: %s", self.label, event.value)

    def _queue(self, message: dict[str, Any]) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self._outbox.popleft()  # a very long outage: the oldest event goes, the newest state stays
        self._outbox.append(message)
        self._wake_sender.set()

    def _become_active(self) -> None:
        self._active_left = self.cadence.active_updates
        self._wake_status.set()

    async def _status_pacer(self) -> None:
        while True:
            await self._connected.wait()
            if self._active_left > 0:
                self._active_left -= 1
                delay = self.cadence.active_status
            else:
                delay = self.cadence.idle_status
            self._wake_status.clear()
            if await woken_within(self._wake_status, delay):
                continue  # woken by an event or a server message: restart at the active pace
            if self.connected:
                self._queue(self.status_message())

    async def _picture_pacer(self) -> None:
        while True:
            # Cleared before the upload, so a remote_status arriving meanwhile is not lost.
            self._wake_picture.clear()
            if self.connector.snapshot().state is PrinterState.PRINTING and self.connected:
                await self.post_picture()
            # In a print but not printing (resuming while the nozzle reheats, heating up): look again at
            # the watched cadence, as nothing else wakes this loop when the printer moves on to printing.
            in_print = self.connector.snapshot().state.in_print
            watched = self.should_watch or self.viewing
            delay = self.cadence.watched_picture if in_print and watched else self.cadence.unwatched_picture
            await woken_within(self._wake_picture, delay)

    # -- websocket ---------------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        backoff = Backoff(self.cadence.min_backoff, self.cadence.max_backoff)
        # Checked here, not only by cancellation: `_sleep` returns at once once stopping, so a
        # loop that missed its cancellation would reconnect as fast as the CPU allows.
        while not self._stop.is_set():
            try:
                async with connect(
                    self.ws_url, additional_headers={"Authorization": f"bearer {self.token}"},
                    max_size=MAX_FRAME_BYTES, open_timeout=self.cadence.http_timeout,
                    ping_interval=None,  # the protocol has no pings; the server decides liveness
                ) as socket:
                    self._socket = socket
                    self._connected.set()
                    backoff.reset()
                    log.info("%s: connected to %s", self.label, self.ws_url)
                    self._introduce()
                    self._wake_sender.set()
                    self._become_active()
                    await self._receive(socket)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                if code == CLOSE_DUPLICATE:
                    log.error("%s: %s", self.label, Stopped.DUPLICATE.value)
                    self._stopped_because = Stopped.DUPLICATE
                    return
                if code == CLOSE_UNAUTHORIZED:
                    log.error("%s: %s", self.label, Stopped.UNAUTHORIZED.value)
                    self._stopped_because = Stopped.UNAUTHORIZED
                    return
                if code in CLOSE_SERVER_STOPPING:
                    log.info("%s: the server is stopping or restarting (%s); reconnecting", self.label, code)
                else:
                    log.warning("%s: connection closed (%s); reconnecting", self.label, code)
            except InvalidStatus as refused:
                if refused.response.status_code in (401, 403):
                    self._stopped_because = Stopped.UNAUTHORIZED
                    log.error("%s: %s", self.label, Stopped.UNAUTHORIZED.value)
                    return
                log.warning("%s: websocket refused (%s)", self.label, refused.response.status_code)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                log.warning("%s: cannot reach %s (%s)", self.label, self.ws_url, exc)
            finally:
                self._socket = None
                self._connected.clear()
                self._drop_plain_statuses()
            await self._sleep(backoff.next_delay())

    def _introduce(self) -> None:
        # Events kept while away go first, in order, then the state now: the server must see the
        # old print end before it hears of the new one. The first of them carries the settings too,
        # so the server never shows a state it got from this agent without knowing the agent.
        now = self.status_message(with_settings=True)
        if self._outbox:
            self._outbox[0]["settings"] = now["settings"]
        self._queue(now)

    def _drop_plain_statuses(self) -> None:
        # A status without an event is stale by the time the server is back; events are kept.
        kept = [m for m in self._outbox if "event" in m]
        self._outbox.clear()
        self._outbox.extend(kept)

    async def _send_outbox(self) -> None:
        while True:
            await self._wake_sender.wait()
            self._wake_sender.clear()
            while self._outbox:
                socket = self._socket
                if socket is None:
                    break
                message = self._outbox[0]
                try:
                    await socket.send(json.dumps(message, default=str))
                except ConnectionClosed:
                    break  # kept at the head of the outbox for the next connection
                if self._outbox and self._outbox[0] is message:
                    self._outbox.popleft()

    async def _receive(self, socket: ClientConnection) -> None:
        async for raw in socket:
            try:
                message = json.loads(raw)
            except (TypeError, ValueError):
                log.warning("%s: the server sent a frame that is not JSON", self.label)
                continue
            if not isinstance(message, dict):
                continue
            self._become_active()
            remote = message.get("remote_status")
            if isinstance(remote, dict):
                self._apply_remote_status(remote)
            commands = message.get("commands")
            if isinstance(commands, list):
                for command in commands:
                    if isinstance(command, dict):
                        self._spawn(self._run_command(command))
            passthru = message.get("passthru")
            if isinstance(passthru, dict) and "ref" in passthru:
                self._spawn(self._answer_call(socket, passthru))

    def _apply_remote_status(self, remote: dict[str, Any]) -> None:
        if isinstance(remote.get("should_watch"), bool):
            self.should_watch = remote["should_watch"]
        if isinstance(remote.get("viewing"), bool):
            was_viewing, self.viewing = self.viewing, remote["viewing"]
            if self.viewing and not was_viewing:
                self._spawn(self.post_picture(viewing_boost=True))
        self._wake_picture.set()

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_command(self, command: dict[str, Any]) -> None:
        self.commands_received.append(command)
        name = command.get("cmd")
        args = command.get("args") if isinstance(command.get("args"), dict) else {}
        assert isinstance(args, dict)
        log.info("%s: command %s %s from %s", self.label, name, json.dumps(args, sort_keys=True),
                 command.get("initiator"))
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "pause": lambda: self.connector.pause(PauseOptions.from_args(args)),
            "resume": self.connector.resume,
            "cancel": self.connector.cancel,
            "print": lambda: self.connector.print_file(str(args.get("url", "")), str(args.get("filename", ""))),
        }
        action = actions.get(str(name))
        if action is None:
            log.warning("%s: unknown command %r", self.label, name)
            return
        try:
            await action()
        except ConnectorError as exc:
            log.warning("%s: %s failed: %s", self.label, name, exc)
            await self.post_printer_event(f"{str(name).capitalize()} failed", str(exc))
        self._become_active()
        self._queue(self.status_message())

    async def _answer_call(self, socket: ClientConnection, call: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"ref": call["ref"]}
        target, func = call.get("target"), call.get("func")
        if target == "_printer" and func == "get_current_data":
            reply["ret"] = self.status_message()["status"]
        elif target == "_printer" and func in ("pause_print", "resume_print", "cancel_print"):
            try:
                await {"pause_print": lambda: self.connector.pause(PauseOptions()),
                       "resume_print": self.connector.resume,
                       "cancel_print": self.connector.cancel}[str(func)]()
                reply["ret"] = "ok"
            except ConnectorError as exc:
                reply["error"] = str(exc)
        else:
            reply["error"] = f"{target}.{func} is not supported by {self.name}"
        with contextlib.suppress(ConnectionClosed):
            await socket.send(json.dumps({"passthru": reply}, default=str))

    async def _sleep(self, seconds: float) -> None:
        await woken_within(self._stop, seconds)
