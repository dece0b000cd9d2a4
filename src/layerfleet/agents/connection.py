"""One printer agent's websocket connection, as the gateway holds it (Obico protocol).

Frames read from the socket wait in the connection's inbox for its worker; messages to the agent
go out one at a time; remote calls (`passthru`) wait for the agent's answer by reference.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from layerfleet.commands.bus import AgentMessage, TokenRevoked
from layerfleet.errors import Unavailable

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
MAX_INBOX = 200
MAX_PENDING_CALLS = 100
# A message with only these keys is a plain status: of two waiting in a row only the newer counts.
PLAIN_KEYS = frozenset({"status", "current_print_ts", "octoprint_data"})


class AgentSocket(Protocol):
    """What a connection needs of the websocket the gateway accepted (Starlette's, there)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class AgentNotConnected(Unavailable):
    """The printer's agent is not connected to this server."""


class AgentCallError(Unavailable):
    """The agent answered a remote call with an error."""


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; PostgreSQL would refuse to store them.
    raise ValueError(f"{name} is not valid JSON")


def parse_frame(text: str) -> dict[str, Any] | None:
    try:
        frame = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return frame if isinstance(frame, dict) else None


@dataclass(eq=False)
class AgentConnection:
    websocket: AgentSocket
    printer_id: int
    organization_id: int
    token: str
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    replaced: bool = False
    closed: bool = False
    should_watch: bool | None = None
    # Frames wait here for the connection's worker, so reading never waits for the database
    # (an unread socket misses its keep-alive pongs and is dropped under load).
    inbox: deque[dict[str, Any]] = field(default_factory=deque)
    inbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    reading_done: bool = False
    # What the last fully applied message said, to tell a plain status from a change.
    applied_flags: tuple[bool, bool, bool] | None = None
    applied_ts: int | None = None
    # The status last received, so a heater crossing its target in a plain status is noticed.
    last_status: dict[str, Any] | None = None
    status_written: asyncio.Future[None] | None = None

    def enqueue(self, frame: dict[str, Any]) -> None:
        last = self.inbox[-1] if self.inbox else None
        if last is not None and _coalescible(last, frame):
            self.inbox[-1] = frame  # only the newest of two plain statuses matters
        else:
            if len(self.inbox) >= MAX_INBOX:
                log.warning("printer %s: the agent sends faster than the server applies; oldest frame dropped",
                            self.printer_id)
                self.inbox.popleft()
            self.inbox.append(frame)
        self.inbox_ready.set()

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise AgentNotConnected(self.printer_id)
        async with self.send_lock:
            await self.websocket.send_text(json.dumps(message))

    async def deliver(self, message: AgentMessage) -> None:
        if isinstance(message, TokenRevoked):
            await self.close(CLOSE_UNAUTHORIZED)
            return
        await self.send(message.as_message())

    async def close(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self.pending.values():
            future.cancel()
        try:
            async with self.send_lock:
                await self.websocket.close(code)
        except Exception:  # the peer may be gone already; nothing is left to tell it
            log.debug("closing the connection of printer %s failed", self.printer_id, exc_info=True)

    async def call(self, target: str, func: str, args: list[Any], kwargs: dict[str, Any], wait_seconds: float) -> Any:
        if len(self.pending) >= MAX_PENDING_CALLS:
            raise AgentCallError("too many calls waiting for this agent")
        ref = uuid.uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ref] = future
        try:
            await self.send({"passthru": {"target": target, "func": func, "args": args, "kwargs": kwargs, "ref": ref}})
            async with asyncio.timeout(wait_seconds):
                return await future
        finally:
            self.pending.pop(ref, None)

    def answer(self, reply: dict[str, Any]) -> None:
        future = self.pending.get(str(reply.get("ref")))
        if future is None or future.done():
            return
        if reply.get("error") is not None:
            future.set_exception(AgentCallError(str(reply["error"])[:1000]))
        else:
            future.set_result(reply.get("ret"))


def _coalescible(older: dict[str, Any], newer: dict[str, Any]) -> bool:
    return set(older) <= PLAIN_KEYS and set(newer) <= PLAIN_KEYS \
        and older.get("current_print_ts") == newer.get("current_print_ts")
