"""An uploaded timelapse checked by the detector with a live print's rules.

Each sampled frame is scored, its ``p`` taken as a live frame's is (ignore masks of the named
printer, `detection.evidence`), the print's state advanced by the reference rules
(`detection.decisions`) and the frame recorded. The baseline is the video's own (a fresh
printer baseline): an old video must not move the live camera's noise level. A likely failure
raises a WARNING alert, a clear one a FAILURE alert (once each, as a live print whose pause
stands), and nothing is paused: there is nothing to pause."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.detection import decisions
from layerfleet.detection.evidence import evidence
from layerfleet.detection.models import Alert, AlertKind, PredictionFrame
from layerfleet.detection.runtime import FrameResult
from layerfleet.fleet.models import Printer
from layerfleet.media import store_media
from layerfleet.prints.models import Print
from layerfleet.watching.frames import frame_paths, outside_masks, tagged_jpeg
from layerfleet.watching.quality import defect_boxes


@dataclass
class UploadScoring:
    """The detection state of one uploaded video as its frames are scored."""

    masks: list[list[float]] = field(default_factory=list)
    sensitivity: float = 1.0
    scores: decisions.PrintScores = field(default_factory=decisions.PrintScores)
    baseline: decisions.PrinterBaseline = field(default_factory=decisions.PrinterBaseline)
    warned: bool = False
    failed: bool = False

    @classmethod
    def for_printer(cls, printer: Printer | None) -> UploadScoring:
        if printer is None:
            return cls()
        return cls(masks=list(printer.ignore_masks or []), sensitivity=printer.detective_sensitivity)


async def score_frame(session: AsyncSession, print_: Print, state: UploadScoring, jpeg: bytes, result: FrameResult,
                      taken_at: datetime, *, data_dir: Path) -> tuple[PredictionFrame, Alert | None]:
    """Record one scored frame of the upload, and its alert if it raises one; the caller commits."""
    boxes = outside_masks(result.boxes, state.masks, result.width, result.height)
    p = evidence(result, boxes)
    state.scores, state.baseline = decisions.advance(state.scores, state.baseline, p)
    normalized = decisions.normalized_p(state.scores, state.baseline, state.sensitivity)
    image_path, tagged_path = frame_paths(print_, state.scores.frame)
    has_tags = any(box[4] > decisions.VISUALIZATION_THRESH for box in boxes)
    await store_media(data_dir, image_path, jpeg)
    if has_tags:
        await store_media(data_dir, tagged_path, await asyncio.to_thread(tagged_jpeg, jpeg, boxes))
    frame = PredictionFrame(
        print_id=print_.id, frame_number=state.scores.frame, taken_at=taken_at, p=p, score=result.score,
        ewm_mean=state.scores.ewm, rolling_mean_short=state.scores.short_mean,
        rolling_mean_long=state.baseline.long_mean, normalized_p=normalized,
        boxes=[[round(v, 1) for v in b[:4]] + [round(b[4], 4)] for b in boxes],
        ignored_boxes=len(result.boxes) - len(boxes), image_path=image_path,
        tagged_image_path=tagged_path if has_tags else None, defect_score=result.defect_score,
        defect_boxes=defect_boxes(result, outside_masks(result.defect_boxes, state.masks, result.width, result.height)),
    )
    session.add(frame)
    await session.flush()
    print_.detection_frames, print_.detection_p = state.scores.frame, p
    print_.detection_ewm, print_.detection_short_mean = state.scores.ewm, state.scores.short_mean
    fail = decisions.should_pause(state.scores, state.baseline, state.sensitivity)
    warn = decisions.should_alert(state.scores, state.baseline, state.sensitivity)
    kind: AlertKind | None = None
    if fail and not state.failed:
        kind, state.failed = AlertKind.FAILURE, True
    elif warn and not (state.warned or state.failed):
        kind, state.warned = AlertKind.WARNING, True
    if kind is None:
        return frame, None
    if print_.alerted_at is None:
        print_.alerted_at = taken_at
    if print_.printer_id is None:
        return frame, None  # an alert belongs to a printer; the print's alerted_at tells it
    alert = Alert(
        organization_id=print_.organization_id, printer_id=print_.printer_id, print_id=print_.id,
        kind=kind.value, normalized_p=normalized, paused=False, frame_id=frame.id, created_at=taken_at,
        details={"p": p, "ewm_mean": state.scores.ewm, "frame_number": state.scores.frame, "uploaded": True},
    )
    session.add(alert)
    return frame, alert
