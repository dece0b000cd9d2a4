"""A printer's cameras (Layerfleet extension): each camera's latest picture and ignore masks.
The printer's own ``ignore_masks`` stay the primary camera's, for clients that know one camera."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Request
from pydantic import BaseModel, Field

from layerfleet.accounts.models import Role
from layerfleet.api.deps import CurrentUser, Db, base_url, ensure_role, printer_changed
from layerfleet.api.obico_v1.printers import NOT_FOUND, PrinterId, _printer_or_404
from layerfleet.api.obico_v1.schemas import Pic
from layerfleet.fleet.cameras import CameraMasks, CameraView, cameras_of, set_camera_masks
from layerfleet.media import media_url

router = APIRouter(tags=["Obico v1: printers"])


class CameraOut(BaseModel):
    name: str | None = Field(description="As the printer's agent names the camera; null for the primary camera")
    primary: bool
    nozzle: bool = Field(description="A nozzle camera: shown, never scored by the failure detector")
    pic: Pic | None
    pic_updated_at: datetime | None
    ignore_masks: list[list[float]]


def camera_out(view: CameraView, url: str) -> CameraOut:
    pic_url = media_url(url, view.pic_path)
    return CameraOut(name=view.name, primary=view.primary, nozzle=view.nozzle,
                     pic=Pic(img_url=pic_url) if pic_url else None, pic_updated_at=view.pic_updated_at,
                     ignore_masks=view.ignore_masks)


@router.get("/printers/{printer_id}/cameras/", response_model=list[CameraOut], responses=NOT_FOUND)
async def list_cameras(request: Request, db: Db, user: CurrentUser, printer_id: PrinterId) -> list[CameraOut]:
    printer = await _printer_or_404(db, user, printer_id)
    url = base_url(request)
    return [camera_out(view, url) for view in await cameras_of(db, printer)]


@router.patch("/printers/{printer_id}/cameras/", response_model=list[CameraOut], responses=NOT_FOUND)
async def update_camera_masks(request: Request, db: Db, user: CurrentUser, printer_id: PrinterId,
                              change: Annotated[CameraMasks, Body()]) -> list[CameraOut]:
    """Set one camera's ignore masks (``camera`` null: the primary's, the printer's ``ignore_masks``)."""
    printer = await _printer_or_404(db, user, printer_id)
    ensure_role(user, Role.ADMIN)
    if not await set_camera_masks(db, printer, change):
        raise HTTPException(404, detail="This printer has no camera of that name.")
    await db.commit()
    printer_changed(request, printer.organization_id, printer.id)
    url = base_url(request)
    return [camera_out(view, url) for view in await cameras_of(db, printer)]
