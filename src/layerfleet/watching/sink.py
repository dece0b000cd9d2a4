"""Where webcam pictures from agents go after they are stored: the failure detector plugs in
here. The default sink drops them, so the server works without a detector."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class FrameSink(Protocol):
    async def submit(self, printer_id: int, organization_id: int, jpeg_bytes: bytes, received_at: datetime) -> None:
        """Take a verified JPEG picture of a printer's primary camera. Must return quickly:
        it is awaited on the agent's upload request."""


class NullFrameSink:
    async def submit(self, printer_id: int, organization_id: int, jpeg_bytes: bytes, received_at: datetime) -> None:
        return None
