"""Sending committed print jobs to their printers' agents, off the request (the Eiger spec's
print-to-printer is asynchronous), and failing jobs their printer never started."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.commands.bus import CommandBus
from layerfleet.fleet.actions import PrinterActions
from layerfleet.fleet.models import Printer
from layerfleet.scheduling import service as scheduling
from layerfleet.scheduling.models import JobState, PrintJob
from layerfleet.signed_links import signed_link

log = logging.getLogger(__name__)

SWEEP_SECONDS = 15.0


class Dispatcher:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], bus: CommandBus, secret: str) -> None:
        self._sessionmaker = sessionmaker
        self._bus = bus
        self._secret = secret
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def dispatch(self, job_id: int, base_url: str) -> None:
        """Send job ``job_id`` (committed) to its printer in the background."""
        task = asyncio.create_task(self._send(job_id, base_url), name=f"dispatch-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, job_id: int, base_url: str) -> None:
        try:
            async with self._sessionmaker() as session:
                job = await session.get(PrintJob, job_id)
                if job is None or job.state != JobState.PRINTING.value or job.printer_id is None:
                    return
                printer = await session.get(Printer, job.printer_id)
                assert printer is not None and job.remote_filename is not None
                url = signed_link(self._secret, base_url, scheduling.gcode_link_path(job),
                                             scheduling.GCODE_LINK_SECONDS)
                sent = await PrinterActions(session, self._bus).start_print(printer, url, job.remote_filename)
                if not sent:
                    scheduling.dispatch_failed(job, f"Printer {printer.name} did not take the print command "
                                                    "(offline, or no longer ready)")
                await session.commit()
                log.info("print job %s sent to printer %s: %s", job.uuid, printer.id, sent)
        except Exception:
            log.exception("print job %s could not be sent", job_id)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="dispatch-sweeper")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                async with self._sessionmaker() as session:
                    if await scheduling.expire_dispatches(session):
                        await session.commit()
            except Exception:
                log.exception("checking for print jobs that never started failed")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()
