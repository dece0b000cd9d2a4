"""A printer's cameras as its owners see them: the primary one (the printer's own picture
and ignore masks) and the others its agent names (``PrinterCamera``), each with its latest
picture and its own ignore masks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.fleet.models import Printer, PrinterCamera
from layerfleet.fleet.rules import MAX_IGNORE_MASKS, IgnoreMask, PrinterChanges


@dataclass(frozen=True)
class CameraView:
    name: str | None  # None: the primary camera
    primary: bool
    nozzle: bool
    pic_path: str | None
    pic_updated_at: datetime | None
    ignore_masks: list[list[float]]


class CameraMasks(BaseModel):
    """New ignore masks for one camera: ``camera`` null (or absent) is the primary one."""

    model_config = ConfigDict(extra="forbid")

    camera: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    ignore_masks: Annotated[list[IgnoreMask], Field(max_length=MAX_IGNORE_MASKS)] = Field(
        description="Rectangles [x0, y0, x1, y1] in 0–1 picture coordinates of this camera; any two opposite "
        "corners.")

    @field_validator("ignore_masks")
    @classmethod
    def _rectangles(cls, masks: list[list[float]]) -> list[list[float]]:
        # The printer's own masks follow the same rules; one place says what a mask is.
        return PrinterChanges.model_validate({"ignore_masks": masks}).ignore_masks


async def other_cameras(session: AsyncSession, printer_id: int) -> list[PrinterCamera]:
    query = select(PrinterCamera).where(PrinterCamera.printer_id == printer_id).order_by(PrinterCamera.name)
    return list((await session.execute(query)).scalars())


async def cameras_of(session: AsyncSession, printer: Printer) -> list[CameraView]:
    """The primary camera first, then the others by name."""
    views = [CameraView(None, True, False, printer.pic_path, printer.pic_updated_at, list(printer.ignore_masks or []))]
    views += [CameraView(c.name, False, c.nozzle, c.pic_path, c.pic_updated_at, list(c.ignore_masks or []))
              for c in await other_cameras(session, printer.id)]
    return views


async def set_camera_masks(session: AsyncSession, printer: Printer, change: CameraMasks) -> bool:
    """Give one camera its ignore masks; False when the printer has no camera of that name
    (the caller commits otherwise). The primary camera's are the printer's ``ignore_masks``."""
    if change.camera is None:
        printer.ignore_masks = change.ignore_masks
        return True
    camera = (await session.execute(select(PrinterCamera).where(
        PrinterCamera.printer_id == printer.id, PrinterCamera.name == change.camera))).scalar_one_or_none()
    if camera is None:
        return False
    camera.ignore_masks = change.ignore_masks
    return True
