"""Printers whose agent fell silent or went away: shown offline, and PrinterOffline for a print.

A disconnect marks a printer offline at once, but a server process that crashed (or lost its
power, or was killed) never sees its agents go: their printers keep their last status, shown
as online and printing for ever if the agent does not come back. Agents send a status at least
every 50 s (the protocol's idle cadence), so a status older than ``silent_after`` means nobody
holds the printer any more; each process sweeps for such printers and marks them offline.

PrinterOffline is raised from the same sweep, from what the database holds (an offline printer
with an open print, last heard ``alert_after`` ago) rather than from a timer in the process
that saw the agent go: that process may be shut down or restarted before the timer runs. A
printer remembers the silence (its last-heard time) the alert was raised for, and the claim is
one conditional update, so however many processes sweep, a silence is told once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Text, cast, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.database import utcnow
from layerfleet.fleet.models import Printer
from layerfleet.notifications import outbox
from layerfleet.notifications.models import NotificationEvent
from layerfleet.pacing import woken_within
from layerfleet.prints.models import Print

log = logging.getLogger(__name__)

# PrinterOffline comes at most this long after its minutes are up.
DEFAULT_SWEEP_SECONDS = 30.0

# A status is stored as JSON; an offline printer's is the JSON null, not SQL NULL.
_HAS_STATUS = func.coalesce(cast(Printer.status, Text), "null") != "null"
_NOT_TOLD = or_(Printer.offline_alert_heard_at.is_(None),
                Printer.offline_alert_heard_at != Printer.status_updated_at)


async def mark_silent_offline(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    silent_after: float,
    connected_here: Callable[[int], bool],
    now: datetime | None = None,
) -> dict[int, list[int]]:
    """Mark offline the printers not heard from for ``silent_after`` seconds; their ids by
    organization. Printers connected to this process are left alone (their agent is there).
    Those in a print are then told by :func:`raise_offline_while_printing`."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=silent_after)
    marked: dict[int, list[int]] = {}
    async with sessionmaker() as session:
        silent = (await session.execute(
            select(Printer.id, Printer.organization_id, Printer.status_updated_at)
            .where(Printer.status_updated_at < cutoff, Printer.archived_at.is_(None), _HAS_STATUS)
        )).all()
        for row in silent:
            if connected_here(row.id):
                continue
            # Only if no status came meanwhile (through another process, say).
            result = await session.execute(
                update(Printer)
                .where(Printer.id == row.id, Printer.status_updated_at == row.status_updated_at)
                .values(status=None)
                .execution_options(synchronize_session=False))
            if getattr(result, "rowcount", 0) != 1:
                continue
            marked.setdefault(row.organization_id, []).append(row.id)
        await session.commit()
    return marked


async def raise_offline_while_printing(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    alert_after: float,
    connected_here: Callable[[int], bool],
    now: datetime | None = None,
) -> list[int]:
    """Raise PrinterOffline for offline printers with an open print, last heard at least
    ``alert_after`` seconds ago, once per silence; the ids of the printers it was raised for."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=alert_after)
    raised: list[int] = []
    async with sessionmaker() as session:
        offline = (await session.execute(
            select(Printer.id, Printer.organization_id, Printer.name, Printer.current_print_id,
                   Printer.status_updated_at, Print.filename)
            .join(Print, Print.id == Printer.current_print_id)
            .where(Printer.status_updated_at <= cutoff, Printer.archived_at.is_(None), ~_HAS_STATUS,
                   _NOT_TOLD)
        )).all()
        for row in offline:
            if connected_here(row.id):
                continue
            # The claim: only if nobody told this silence meanwhile and the agent is still away.
            result = await session.execute(
                update(Printer)
                .where(Printer.id == row.id, Printer.status_updated_at == row.status_updated_at,
                       Printer.current_print_id == row.current_print_id, ~_HAS_STATUS, _NOT_TOLD)
                .values(offline_alert_heard_at=row.status_updated_at)
                .execution_options(synchronize_session=False))
            if getattr(result, "rowcount", 0) != 1:
                continue
            raised.append(row.id)
            minutes = max(1, round((now - row.status_updated_at).total_seconds() / 60))
            await outbox.record(
                session, organization_id=row.organization_id, event=NotificationEvent.PRINTER_OFFLINE,
                printer_id=row.id, print_id=row.current_print_id,
                payload={"printer_name": row.name, "filename": row.filename or "",
                         "text": f"Nothing has been heard from the printer's agent for {minutes} min "
                                 "while printing."})
        await session.commit()
    return raised


class LivenessSweep:
    """Every ``interval`` seconds until closed: :func:`mark_silent_offline`, then
    :func:`raise_offline_while_printing`."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        silent_after: float,
        alert_after: float,
        connected_here: Callable[[int], bool],
        marked: Callable[[dict[int, list[int]]], None],
        interval: float = DEFAULT_SWEEP_SECONDS,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.silent_after = silent_after
        self.alert_after = alert_after
        self._connected_here = connected_here
        self._marked = marked
        self.interval = interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="agent liveness sweep")

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while not await woken_within(self._stop, self.interval):
            await self.sweep()

    async def sweep(self) -> None:
        """One look; errors are logged, never raised (the next look tries again)."""
        try:
            marked = await mark_silent_offline(
                self._sessionmaker, silent_after=self.silent_after, connected_here=self._connected_here)
        except Exception:
            log.exception("could not look for printers whose agent fell silent")
            marked = {}
        if marked:
            log.info("printers marked offline, their agents silent for %.0f s: %s",
                     self.silent_after, sorted(i for ids in marked.values() for i in ids))
            self._marked(marked)
        try:
            raised = await raise_offline_while_printing(
                self._sessionmaker, alert_after=self.alert_after, connected_here=self._connected_here)
        except Exception:
            log.exception("could not look for printers gone while printing")
            return
        if raised:
            log.info("PrinterOffline raised for printers %s", raised)
