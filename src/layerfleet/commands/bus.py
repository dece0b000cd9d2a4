"""The command path from the domain to printer agents.

Domain actions (pause, resume, cancel, …) hand an :class:`AgentCommand` to a
:class:`CommandBus`; the agent gateway, wherever the agent's connection lives, registers
a delivery function for the printers it holds. The in-process bus serves a single server
process; a Redis-backed bus (scale-out mode) implements the same interface.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

CommandName = Literal["pause", "resume", "cancel", "print"]
Initiator = Literal["system", "api"]


@dataclass(frozen=True)
class AgentCommand:
    cmd: CommandName
    args: dict[str, Any] = field(default_factory=dict)
    initiator: Initiator = "api"

    def as_message(self) -> dict[str, Any]:
        return {"commands": [{"cmd": self.cmd, "args": self.args, "initiator": self.initiator}]}


@dataclass(frozen=True)
class RemoteStatus:
    """What the server wants the agent to know about watching (`remote_status`)."""

    should_watch: bool
    viewing: bool = False

    def as_message(self) -> dict[str, Any]:
        return {"remote_status": {"viewing": self.viewing, "should_watch": self.should_watch}}


@dataclass(frozen=True)
class TokenRevoked:
    """The printer's token was replaced: whoever holds the old one is disconnected, wherever
    its connection lives (it closes with 4401, the code for a refused token)."""


AgentMessage = AgentCommand | RemoteStatus | TokenRevoked
Deliver = Callable[[AgentMessage], Awaitable[None]]


class CommandBus(abc.ABC):
    @abc.abstractmethod
    async def is_connected(self, printer_id: int) -> bool:
        """Whether an agent for this printer is connected to some server process."""

    @abc.abstractmethod
    async def send(self, printer_id: int, message: AgentMessage) -> bool:
        """Hand a message to the printer's agent; False when no agent took it."""

    async def start(self) -> None:  # noqa: B027  (optional hook)
        """Open connections the bus needs; called when the server starts."""

    async def close(self) -> None:  # noqa: B027  (optional hook)
        """Release connections the bus holds."""


class InProcessCommandBus(CommandBus):
    """Delivers to agents connected to this process. Default for a single-process server."""

    def __init__(self, delivery_timeout: float = 5.0) -> None:
        self._receivers: dict[int, Deliver] = {}
        self._delivery_timeout = delivery_timeout

    def register(self, printer_id: int, deliver: Deliver) -> None:
        self._receivers[printer_id] = deliver

    def unregister(self, printer_id: int, deliver: Deliver | None = None) -> None:
        # A newer connection may already have replaced this one; only remove our own.
        if deliver is None or self._receivers.get(printer_id) is deliver:
            self._receivers.pop(printer_id, None)

    def unregister_all(self) -> None:
        self._receivers.clear()

    async def is_connected(self, printer_id: int) -> bool:
        return printer_id in self._receivers

    async def send(self, printer_id: int, message: AgentMessage) -> bool:
        deliver = self._receivers.get(printer_id)
        if deliver is None:
            return False
        try:
            async with asyncio.timeout(self._delivery_timeout):
                await deliver(message)
        except Exception:
            log.warning("delivery to printer %s failed", printer_id, exc_info=True)
            return False
        return True
