"""Where webcam pictures from agents go after they are stored: the failure detector plugs in
here. The default sink drops them, so the server works without a detector.

A sink that can also :meth:`~ClaimingFrameSink.claim` takes the picture inside the uploader's
own transaction, from the printer the uploader already read: the picture's row, the video's
claim and the detector's claim are then one commit (one fsync on SQLite) instead of three,
and nobody reads the printer again. What must wait for the commit (queueing the frame,
storing a kept copy) is handed back to run after it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.fleet.models import Printer

AfterCommit = Callable[[], Awaitable[None]]


class FrameSink(Protocol):
    async def submit(self, printer_id: int, organization_id: int, jpeg_bytes: bytes, received_at: datetime,
                     *, camera: str | None = None) -> None:
        """Take a verified JPEG picture of one of a printer's cameras (``camera`` names one
        other than the primary, whose picture comes with None). Must return quickly: it is
        awaited on the agent's upload request."""


@runtime_checkable
class ClaimingFrameSink(FrameSink, Protocol):
    async def claim(self, session: AsyncSession, printer: Printer, jpeg_bytes: bytes,
                    received_at: datetime, *, camera: str | None = None) -> AfterCommit | None:
        """Claim the picture in the caller's transaction; ``printer`` was read in ``session``
        with its owner and current print (``fleet.service.HOT_PATH_LOAD``). The caller commits,
        then awaits what is returned; if the commit fails, nothing was claimed and the
        returned work is dropped. Raising leaves the caller to roll back and :meth:`submit`."""


class NullFrameSink:
    async def submit(self, printer_id: int, organization_id: int, jpeg_bytes: bytes, received_at: datetime,
                     *, camera: str | None = None) -> None:
        return None
