"""Quality warnings: the detector's defect output (warping, stringing, extrusion and surface
problems) raises a warning of its own kind, never a pause.

A defect is no emergency, and a single frame can mislead (a glare, a brim), so a print is
warned once it has shown a defect on `DEFECT_FRAMES_TO_WARN` scored frames, and only once per
print: a warping corner stays warped, and repeating the warning every few frames would only
teach operators to ignore it. The failure decision rules never see the defect score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.detection.models import Alert, AlertKind, PredictionFrame
from layerfleet.detection.runtime import DEFECT_ALERT_SCORE, FrameResult, rounded_boxes
from layerfleet.fleet.models import Printer
from layerfleet.notifications import outbox
from layerfleet.notifications.models import NotificationEvent
from layerfleet.prints.models import Print

log = logging.getLogger(__name__)

DEFECT_FRAMES_TO_WARN = 3

Box = tuple[float, float, float, float, float]


def defect_boxes(result: FrameResult, kept: Sequence[Box]) -> list[list[float]] | None:
    """What a frame stores of the defect boxes: None when the model has no defect output."""
    return None if result.defect_score is None else rounded_boxes(kept)


async def quality_warning(session: AsyncSession, printer: Printer, print_: Print, frame: PredictionFrame,
                          result: FrameResult, taken_at: datetime) -> Alert | None:
    """Count a frame that shows a defect; the print's first warning once enough have."""
    if result.defect_score is None or result.defect_score < DEFECT_ALERT_SCORE:
        return None
    print_.defect_frames = (print_.defect_frames or 0) + 1
    if print_.defect_frames < DEFECT_FRAMES_TO_WARN or print_.quality_alerted_at is not None:
        return None
    await session.flush()  # the alert names the frame
    print_.quality_alerted_at = taken_at
    alert = Alert(
        organization_id=printer.organization_id, printer_id=printer.id, print_id=print_.id,
        kind=AlertKind.QUALITY.value, normalized_p=printer.normalized_p, paused=False, frame_id=frame.id,
        created_at=taken_at,
        details={"defect_score": round(result.defect_score, 4), "defect_boxes": frame.defect_boxes or [],
                 "defect_frames": print_.defect_frames, "frame_number": frame.frame_number,
                 "camera": frame.camera},
    )
    session.add(alert)
    await outbox.record(
        session, organization_id=printer.organization_id, printer_id=printer.id, print_id=print_.id,
        event=NotificationEvent.QUALITY_WARNING,
        payload={"printer_name": printer.name, "filename": print_.filename,
                 "defect_score": round(result.defect_score, 4), "paused": False,
                 "image_path": frame.image_path, "boxes": frame.defect_boxes or [],
                 "width": result.width, "height": result.height})
    log.warning("printer %s: quality warning on print %s (defect score %.2f)", printer.id, print_.id,
                result.defect_score)
    return alert
