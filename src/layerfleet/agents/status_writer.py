"""Plain status messages, written in batches.

Most agent messages are a status with nothing new in it but numbers (temperatures, progress).
Writing each in its own ORM transaction cost 7–8 ms of CPU and an fsync (bench/agents.py);
instead the latest status of each printer waits here for at most ``interval`` seconds and all
of them go out in one executemany UPDATE and one commit. A newer status of the same printer
replaces one still waiting. The caller gets a future that resolves once its status is written,
so a message that must come after it (an event) can wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.fleet.models import Printer
from layerfleet.pacing import woken_within

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.25
MAX_BATCH = 1000
# Bounds shutdown: a database that does not answer must not keep the server from stopping.
CLOSE_SECONDS = 5.0

_printers = Printer.__table__
assert isinstance(_printers, Table)
_WRITE = (
    update(_printers)
    .where(_printers.c.id == bindparam("printer_id"), _printers.c.auth_token == bindparam("token"),
           _printers.c.archived_at.is_(None))
    .values(status=bindparam("new_status"), status_updated_at=bindparam("reported_at"))
)


class StatusWriter:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        interval: float = DEFAULT_INTERVAL,
        written: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.interval = interval
        # Told the printers of each batch once it is stored (the fleet's live pages follow them).
        self._written = written
        self._waiting: dict[int, dict[str, Any]] = {}
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def submit(self, printer_id: int, token: str, status: dict[str, Any], at: datetime) -> asyncio.Future[None]:
        """Queue ``status`` for the printer (the agent holding ``token``); resolves when written.

        After ``close`` nothing is queued (the server is stopping; the agent repeats its status
        to the next server) and the future is resolved at once, so nobody waits for it.
        """
        if self._closed:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        self._waiting[printer_id] = {"printer_id": printer_id, "token": token, "new_status": status,
                                     "reported_at": at}
        future = self._futures.get(printer_id)
        if future is None:
            future = self._futures[printer_id] = asyncio.get_running_loop().create_future()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="agent-status-writer")
        if len(self._waiting) >= MAX_BATCH:
            self._wake.set()
        return future

    async def close(self) -> None:
        """Write what is waiting (for at most ``CLOSE_SECONDS``), then stop taking statuses."""
        self._closed = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=CLOSE_SECONDS)
            if not task.done():
                log.warning("printer statuses not written within %.0f s of shutdown; dropped", CLOSE_SECONDS)
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        self._resolve_all()

    async def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                if not self._closed:
                    await woken_within(self._wake, self.interval)
                await self._flush()
                if not self._waiting:
                    return  # idle: the next submit starts a new task
        except asyncio.CancelledError:
            # Whoever waits for a queued status must not wait forever; the agent sends another.
            self._resolve_all()
            raise

    def _resolve_all(self) -> None:
        futures, self._futures, self._waiting = self._futures, {}, {}
        for future in futures.values():
            if not future.done():
                future.set_result(None)

    async def _flush(self) -> None:
        if not self._waiting:
            return
        # In printer order, as every other writer of several printers locks them: two transactions
        # taking the same rows in different orders deadlock on PostgreSQL.
        rows = sorted(self._waiting.values(), key=lambda row: int(row["printer_id"]))
        futures = self._futures
        self._waiting, self._futures = {}, {}
        try:
            async with self._sessionmaker() as session:
                await session.execute(_WRITE, rows)
                await session.commit()
            if self._written is not None:
                self._written([row["printer_id"] for row in rows])
        except Exception:
            # A lost status is replaced by the agent's next one within seconds; say so and go on.
            log.exception("could not write %d printer statuses", len(rows))
        finally:
            for future in futures.values():
                if not future.done():
                    future.set_result(None)
