"""Failure alerts (a Layerfleet extension of the v1 dialect): what the detector raised, newest
first. The same alerts reach people through the notification targets (layerfleet.notifications)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from layerfleet.api.deps import CurrentUser, Db
from layerfleet.detection import service as detection
from layerfleet.detection.models import AlertKind

router = APIRouter(tags=["Layerfleet: alerts"])
MAX_ALERTS = 1000


class AlertOut(BaseModel):
    id: int
    printer_id: int
    print_id: int
    kind: AlertKind
    normalized_p: float
    paused: bool
    created_at: datetime


@router.get("/alerts/", response_model=list[AlertOut])
async def list_alerts(
    db: Db,
    user: CurrentUser,
    printer_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    print_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ALERTS)] = 100,
) -> list[AlertOut]:
    found = await detection.list_alerts(db, user.organization_id, printer_id=printer_id, print_id=print_id,
                                        limit=limit)
    return [AlertOut(id=a.id, printer_id=a.printer_id, print_id=a.print_id, kind=AlertKind(a.kind),
                     normalized_p=a.normalized_p, paused=a.paused, created_at=a.created_at) for a in found]
