"""Printer actions: every pause, resume, cancel, mute and acknowledgement goes through here,
whatever API or page it came from.

An action checks that it makes sense for the printer's state, hands its command to the
:class:`CommandBus`, and records on the current print what the domain needs. An action
that cannot be carried out changes nothing and reports ``False``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.commands.bus import AgentCommand, CommandBus, Initiator, RemoteStatus
from layerfleet.database import utcnow
from layerfleet.fleet.models import Printer
from layerfleet.fleet.watch_reasons import should_watch
from layerfleet.prints.models import AlertOverwrite


def pause_args(printer: Printer) -> dict[str, object]:
    return {
        "retract": printer.retract_on_pause,
        "lift_z": printer.lift_z_on_pause,
        "tools_off": printer.tools_off_on_pause,
        "bed_off": printer.bed_off_on_pause,
    }


def _is_printing(printer: Printer) -> bool:
    flags = printer.state_flags
    return bool(flags.get("printing")) and not flags.get("paused") and not flags.get("pausing")


def _is_paused(printer: Printer) -> bool:
    flags = printer.state_flags
    return bool(flags.get("paused") or flags.get("pausing"))


def is_ready(printer: Printer) -> bool:
    """Online, connected to its printer, and neither printing, paused nor in error."""
    if printer.status is None:
        return False
    flags = printer.state_flags
    busy = ("printing", "paused", "pausing", "cancelling", "resuming", "finishing", "error", "closedOrError")
    return bool(flags.get("operational")) and not any(flags.get(flag) for flag in busy)


@dataclass
class PrinterActions:
    session: AsyncSession
    bus: CommandBus

    async def _send(self, printer: Printer, command: AgentCommand) -> bool:
        if not await self.bus.is_connected(printer.id):
            return False
        return await self.bus.send(printer.id, command)

    async def pause(self, printer: Printer, *, initiator: Initiator = "api") -> bool:
        if not _is_printing(printer):
            return False
        sent = await self._send(printer, AgentCommand("pause", pause_args(printer), initiator))
        if sent and initiator == "system" and printer.current_print is not None:
            # paused_at marks pauses made by the detector, never a user's own pause.
            printer.current_print.paused_at = utcnow()
        return sent

    async def resume(self, printer: Printer, *, initiator: Initiator = "api") -> bool:
        if not _is_paused(printer):
            return False
        sent = await self._send(printer, AgentCommand("resume", {}, initiator))
        if sent:
            self._overwrite_alert(printer, AlertOverwrite.NOT_FAILED)
        return sent

    async def cancel(self, printer: Printer, *, initiator: Initiator = "api") -> bool:
        if not (_is_printing(printer) or _is_paused(printer)):
            return False
        sent = await self._send(printer, AgentCommand("cancel", {}, initiator))
        if sent:
            self._overwrite_alert(printer, AlertOverwrite.FAILED)
        return sent

    async def start_print(self, printer: Printer, url: str, filename: str, *, initiator: Initiator = "api") -> bool:
        """Have the agent fetch G-code from ``url`` and print it as ``filename``."""
        if not is_ready(printer):
            return False
        return await self._send(printer, AgentCommand("print", {"url": url, "filename": filename}, initiator))

    async def mute_current_print(self, printer: Printer, *, muted: bool = True) -> bool:
        current = printer.current_print
        if current is None:
            return False
        current.alert_muted_at = utcnow() if muted else None
        # An offline agent learns should_watch from remote_status when it reconnects.
        await self.bus.send(printer.id, RemoteStatus(should_watch=should_watch(printer)))
        return True

    async def acknowledge_alert(self, printer: Printer, overwrite: AlertOverwrite | None = None) -> bool:
        current = printer.current_print
        if current is None:
            return False
        current.alert_acknowledged_at = utcnow()
        if overwrite is not None:
            current.alert_overwrite = overwrite.value
        return True

    def _overwrite_alert(self, printer: Printer, overwrite: AlertOverwrite) -> None:
        current = printer.current_print
        if current is None:
            return
        current.alert_overwrite = overwrite.value
        if current.alerted_at is not None:
            current.alert_acknowledged_at = utcnow()
