"""The agent gateway: the websocket connections of printer agents (Obico protocol).

One connection per printer. Its frames are read at once and applied in order by the
connection's own worker, so a slow database never keeps the socket unread (an agent whose
pings go unanswered is dropped). A plain status (only numbers changed) is handed to the
``StatusWriter``, which writes all printers' statuses in one batch; any other message is
applied in its own transaction, so a bad message is dropped with a log line and never
disturbs the connection or other printers.
Commands reach the agent through the command bus, where the gateway registers each
connection's delivery function.

Duplicates: the newest connection for a token wins at once. The older one is asked a
harmless remote call; if its agent still answers within ``probe_timeout`` it is a real
duplicate (two agents share a token) and is closed with 4321, which makes that agent stop.
Otherwise it was a dead connection of the same agent reconnecting and is closed quietly
(1001), so an agent is never told to shut down because of its own reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.websockets import WebSocket, WebSocketDisconnect

from layerfleet import metrics
from layerfleet.agents import lifecycle
from layerfleet.agents.connection import (
    CLOSE_UNAUTHORIZED,
    AgentCallError,
    AgentConnection,
    AgentNotConnected,
    parse_frame,
)
from layerfleet.agents.linking import printer_for_token
from layerfleet.agents.liveness import LivenessSweep
from layerfleet.agents.status_writer import StatusWriter
from layerfleet.commands.bus import AgentMessage, RemoteStatus
from layerfleet.database import utcnow
from layerfleet.fleet.events import FleetEvents
from layerfleet.fleet.models import Printer, status_flags
from layerfleet.fleet.watch_reasons import should_watch

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1024 * 1024
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_DUPLICATE = 4321
DEFAULT_PROBE_TIMEOUT = 2.0
DEFAULT_CALL_TIMEOUT = 10.0
DRAIN_SECONDS = 10.0
STATUS_WAIT_SECONDS = 10.0
KNOWN_KEYS = frozenset({
    "status", "settings", "event", "current_print_ts", "passthru",
    "octoprint_data", "octoprint_settings", "octoprint_event",
})
# The liveness probe: read-only, and answered by OctoPrint-Obico (seen in the capture).
PROBE_TARGET, PROBE_FUNC = "_printer", "get_current_data"


@runtime_checkable
class AgentRegistry(Protocol):
    def register(self, printer_id: int, deliver: Callable[[AgentMessage], Awaitable[None]]) -> None: ...

    def unregister(self, printer_id: int, deliver: Callable[[AgentMessage], Awaitable[None]] | None = None) -> None:
        ...


def token_from_header(header: str | None) -> str | None:
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() not in {"bearer", "token"} or not token:
        return None
    return token


def _watch_flags(status: dict[str, Any]) -> tuple[bool, bool, bool]:
    flags = status_flags(status)
    return bool(flags.get("printing")), bool(flags.get("paused")), bool(flags.get("pausing"))


class AgentGateway:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        registry: object,
        *,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        events: FleetEvents | None = None,
        offline_alert_seconds: float = 180.0,
        silent_after_seconds: float = 300.0,
    ) -> None:
        """``offline_alert_seconds``: an agent gone this long while printing raises PrinterOffline;
        ``silent_after_seconds``: a printer not heard from this long is offline (see `liveness`)."""
        self._sessionmaker = sessionmaker
        self.events = events or FleetEvents()
        self._registry = registry if isinstance(registry, AgentRegistry) else None
        if self._registry is None:
            log.warning("the command bus takes no local agents; commands will not reach agents connected here")
        self.probe_timeout = probe_timeout
        self._connections: dict[int, AgentConnection] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.status_writer = StatusWriter(sessionmaker, written=self._statuses_written)
        self.liveness_sweep = LivenessSweep(sessionmaker, silent_after=silent_after_seconds,
                                            alert_after=offline_alert_seconds,
                                            connected_here=self.is_connected, marked=self._marked_silent)

    def start(self) -> None:
        self.liveness_sweep.start()

    def _marked_silent(self, marked: dict[int, list[int]]) -> None:
        for organization_id, printer_ids in marked.items():
            self.events.publish(organization_id, printer_ids)

    def is_connected(self, printer_id: int) -> bool:
        return printer_id in self._connections

    def _statuses_written(self, printer_ids: list[int]) -> None:
        by_organization: dict[int, list[int]] = {}
        for printer_id in printer_ids:
            connection = self._connections.get(printer_id)
            if connection is not None:  # one gone since is announced by its offline mark
                by_organization.setdefault(connection.organization_id, []).append(printer_id)
        for organization_id, ids in by_organization.items():
            self.events.publish(organization_id, ids)

    async def call(
        self, printer_id: int, func: str, *args: Any, target: str = PROBE_TARGET,
        wait_seconds: float = DEFAULT_CALL_TIMEOUT, **kwargs: Any,
    ) -> Any:
        """Call ``target.func(*args, **kwargs)`` on the printer's agent and return its answer."""
        connection = self._connections.get(printer_id)
        if connection is None:
            raise AgentNotConnected(printer_id)
        return await connection.call(target, func, list(args), kwargs, wait_seconds)

    async def disconnect(self, printer_id: int, code: int = CLOSE_UNAUTHORIZED) -> None:
        connection = self._connections.get(printer_id)
        if connection is not None:
            self._forget(connection)
            await connection.close(code)

    async def close_all(self) -> None:
        await self.liveness_sweep.close()
        for connection in list(self._connections.values()):
            self._forget(connection)
            await connection.close(CLOSE_GOING_AWAY)
        # Let offline marks and duplicate probes finish (briefly): cancelling one mid-query
        # would leave its database connection half closed while the engine is disposed.
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.probe_timeout + 3)
        for task in list(self._background):
            task.cancel()
        await self.status_writer.close()

    async def serve(self, websocket: WebSocket) -> None:
        token = token_from_header(websocket.headers.get("authorization"))
        printer = None
        if token is not None:
            async with self._sessionmaker() as session:
                printer = await printer_for_token(session, token)
        if printer is None or token is None:
            # Refused before the handshake completes; never an error page.
            await websocket.close(CLOSE_UNAUTHORIZED)
            return
        await websocket.accept()
        connection = AgentConnection(websocket, printer.id, printer.organization_id, token)
        connection.should_watch = should_watch(printer)
        previous = self._connections.get(printer.id)
        self._connections[printer.id] = connection
        if previous is None:  # a reconnect replaces its printer's connection: still one agent
            metrics.AGENTS_CONNECTED.inc()
        if self._registry is not None:
            self._registry.register(printer.id, connection.deliver)
        if previous is not None:
            previous.replaced = True
            self._spawn(self._retire(previous))
        log.info("agent of printer %s connected", printer.id)
        worker = asyncio.create_task(self._apply_frames(connection), name=f"agent-{printer.id}")
        try:
            await connection.send(RemoteStatus(should_watch=connection.should_watch).as_message())
            await self._receive(connection, websocket)
        except (WebSocketDisconnect, AgentNotConnected):
            pass
        except Exception:
            log.exception("agent connection of printer %s failed", printer.id)
            await connection.close(CLOSE_GOING_AWAY)
        finally:
            # What the agent said before it went (a PrintDone, say) is still applied, then it is
            # offline. Every wait here is bounded, and a cancellation of this task (a server
            # shutting down) is never swallowed: it ends the worker at once.
            connection.reading_done = True
            connection.inbox_ready.set()
            try:
                await asyncio.wait({worker}, timeout=DRAIN_SECONDS)
                if not worker.done():
                    log.warning("printer %s: frames not applied within %.0f s of the disconnect; dropped",
                                connection.printer_id, DRAIN_SECONDS)
            finally:
                worker.cancel()
                await self._disconnected(connection)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retire(self, old: AgentConnection) -> None:
        alive = True
        try:
            await old.call(PROBE_TARGET, PROBE_FUNC, [], {}, self.probe_timeout)
        except AgentCallError:
            pass  # an error answer still proves an agent is there
        except (TimeoutError, asyncio.CancelledError, Exception):
            alive = False
        if alive:
            log.warning("printer %s: a second agent uses the same token; the older one is told to stop",
                        old.printer_id)
        await old.close(CLOSE_DUPLICATE if alive else CLOSE_GOING_AWAY)

    def _forget(self, connection: AgentConnection) -> bool:
        """Drop ``connection`` if it is still the printer's; whether it was."""
        if self._connections.get(connection.printer_id) is not connection:
            return False
        del self._connections[connection.printer_id]
        metrics.AGENTS_CONNECTED.dec()
        if self._registry is not None:
            self._registry.unregister(connection.printer_id, connection.deliver)
        return True

    async def _disconnected(self, connection: AgentConnection) -> None:
        connection.closed = True
        for future in connection.pending.values():
            future.cancel()
        if not self._forget(connection) and connection.replaced:
            return  # a newer connection holds the printer now: leave its state alone
        log.info("agent of printer %s disconnected", connection.printer_id)
        # Its own task: a server that cancels the connection's task on disconnect must not
        # leave the printer looking online.
        task = asyncio.ensure_future(
            self._mark_offline(connection.printer_id, connection.organization_id, connection.status_written))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)

    async def _mark_offline(
        self, printer_id: int, organization_id: int, status_written: asyncio.Future[None] | None
    ) -> None:
        if status_written is not None:
            # A status still waiting in the writer would otherwise land after this and show
            # the printer online again.
            await asyncio.wait({status_written}, timeout=STATUS_WAIT_SECONDS)
        if printer_id in self._connections:
            return  # the agent is back already
        try:
            async with self._sessionmaker() as session:
                await session.execute(
                    update(Printer).where(Printer.id == printer_id).values(status=None)
                    .execution_options(synchronize_session=False)
                )
                await session.commit()
        except Exception:
            log.exception("could not mark printer %s offline", printer_id)
            return
        self.events.publish(organization_id, [printer_id])

    @staticmethod
    def _is_plain_status(connection: AgentConnection, update_: lifecycle.AgentUpdate) -> bool:
        """Only numbers changed: no event, no settings, the same print, the same watching state."""
        if update_.status is None or update_.settings is not None or update_.event_type is not None:
            return False
        if connection.applied_flags is None or _watch_flags(update_.status) != connection.applied_flags:
            return False
        if lifecycle.heater_events(connection.last_status, update_.status):
            return False  # a notification to raise: the full path records it with its cause
        return update_.current_print_ts is None or update_.current_print_ts == connection.applied_ts

    async def _receive(self, connection: AgentConnection, websocket: WebSocket) -> None:
        while True:
            try:
                message = await websocket.receive()
            except RuntimeError:
                return  # closed by us while waiting
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                if len(data) > MAX_FRAME_BYTES:
                    log.warning("printer %s: binary frame of %d bytes; closing", connection.printer_id, len(data))
                    await connection.close(CLOSE_TOO_BIG)
                    return
                log.info("printer %s: binary frame ignored", connection.printer_id)
                continue
            if len(text) > MAX_FRAME_BYTES or len(text.encode("utf-8", "replace")) > MAX_FRAME_BYTES:
                log.warning("printer %s: frame larger than %d bytes; closing", connection.printer_id, MAX_FRAME_BYTES)
                await connection.close(CLOSE_TOO_BIG)
                return
            frame = parse_frame(text)
            if frame is None:
                log.info("printer %s: frame that is not a JSON object ignored", connection.printer_id)
                continue
            passthru = frame.get("passthru")
            # printer_event copies are for the reference server's web app; the HTTP call stores them.
            if isinstance(passthru, dict) and "ref" in passthru:
                connection.answer(passthru)  # answers to our calls: at once, not behind the queue
            if not connection.replaced:
                connection.enqueue(frame)
            if connection.closed:
                return

    async def _apply_frames(self, connection: AgentConnection) -> None:
        """The connection's worker: applies its frames in order, one at a time."""
        while True:
            if not connection.inbox:
                if connection.reading_done:
                    return
                connection.inbox_ready.clear()
                await connection.inbox_ready.wait()
                continue
            frame = connection.inbox.popleft()
            try:
                await self._handle(connection, frame)
            except (WebSocketDisconnect, AgentNotConnected):
                pass  # gone while we answered it; what it sent is applied
            except Exception:
                log.exception("printer %s: frame could not be applied; ignored", connection.printer_id)

    async def _handle(self, connection: AgentConnection, frame: dict[str, Any]) -> None:
        if connection.replaced:
            return
        unknown = set(frame) - KNOWN_KEYS
        if unknown:
            log.info("printer %s: unknown keys ignored: %s", connection.printer_id, sorted(unknown)[:10])
        try:
            update_ = lifecycle.parse_update(frame)
        except lifecycle.BadFrame as exc:
            log.info("printer %s: frame ignored: %s", connection.printer_id, exc)
            return
        if update_.empty:
            return
        plain = self._is_plain_status(connection, update_)
        if update_.status is not None:
            connection.last_status = update_.status
        if plain:
            assert update_.status is not None
            connection.status_written = self.status_writer.submit(
                connection.printer_id, connection.token, update_.status, utcnow())
            return
        if connection.status_written is not None:
            # An earlier plain status must not land after this message. Bounded: the writer
            # resolves its futures even when it fails, but a stuck database must not stall this.
            await asyncio.wait({connection.status_written}, timeout=STATUS_WAIT_SECONDS)
            connection.status_written = None
        async with self._sessionmaker() as session:
            printer = await session.get(Printer, connection.printer_id)
            if printer is None or printer.archived_at is not None or printer.auth_token != connection.token:
                # Deleted, archived or relinked since the agent connected: its token is no longer good.
                self._forget(connection)
                await connection.close(CLOSE_UNAUTHORIZED)
                return
            await lifecycle.apply_update(session, printer, update_, utcnow())
            await session.commit()
            watch = should_watch(printer)
        self.events.publish(connection.organization_id, [connection.printer_id])
        if update_.status is not None:
            connection.applied_flags = _watch_flags(update_.status)
        if update_.current_print_ts is not None:
            connection.applied_ts = update_.current_print_ts
        if watch != connection.should_watch:
            connection.should_watch = watch
            await connection.send(RemoteStatus(should_watch=watch).as_message())
