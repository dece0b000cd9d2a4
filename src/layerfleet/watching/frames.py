"""Watching a print: what one scored frame does to the printer, its print and its owner.

The detector's boxes (minus those under the printer's ignore masks) give ``p``; the print's
and printer's detection state advance by the reference rules (`decisions`); the frame is
recorded; detection hours are charged for the watched time; and a failing print raises an
alert and, when the printer says so, is paused through the one command path.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from layerfleet.accounts.models import User
from layerfleet.commands.bus import CommandBus
from layerfleet.detection import decisions
from layerfleet.detection.models import Alert, AlertKind, PredictionFrame
from layerfleet.detection.runtime import FrameResult
from layerfleet.fleet.actions import PrinterActions
from layerfleet.fleet.models import ActionOnFailure, Printer
from layerfleet.fleet.service import HOT_PATH_LOAD
from layerfleet.fleet.watch_reasons import is_paused, should_watch
from layerfleet.media import organization_prefix, store_media
from layerfleet.notifications import outbox
from layerfleet.notifications.models import NotificationEvent
from layerfleet.prints.models import Print, PrintShotFeedback

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float, float]  # xc, yc, w, h, confidence (pixels)
ALERT_COOLDOWN = timedelta(seconds=90)
# Watched time is charged frame to frame; a longer gap (agent away, camera down) is not.
MAX_CHARGED_GAP_SECONDS = 60.0
FEEDBACK_SHOTS = 7
FEEDBACK_SPACING = timedelta(minutes=2)
SCORE_TO_P = 2.0  # a certain failure (score 1) weighs like the reference network's typical spaghetti


def is_printing(printer: Printer) -> bool:
    flags = printer.state_flags
    return bool(flags.get("printing")) and not is_paused(printer)


def is_watched_now(printer: Printer) -> bool:
    """The detector looks at this printer's pictures now."""
    return should_watch(printer) and is_printing(printer)


def outside_masks(boxes: Sequence[Box], masks: Sequence[Sequence[float]], width: int, height: int) -> list[Box]:
    """The boxes whose centre lies outside every mask (masks in 0–1 image coordinates)."""
    if not masks or width <= 0 or height <= 0:
        return list(boxes)
    kept = []
    for box in boxes:
        x, y = box[0] / width, box[1] / height
        if not any(m[0] <= x <= m[2] and m[1] <= y <= m[3] for m in masks):
            kept.append(box)
    return kept


def evidence(result: FrameResult, kept: Sequence[Box]) -> float:
    """The frame's ``p`` for the decision rules.

    The reference network's p (the sum of its box confidences) runs to 2–4 on plain spaghetti;
    our boxes are fewer and less confident (p ≈ 1), while our image head is the calibrated
    signal (val AUROC 0.98). So p is the larger of the box sum and the image score on the
    reference's scale, the latter shrunk by the share of box confidence that ignore masks
    removed: evidence under a mask does not count, whichever head saw it.
    """
    box_sum = sum(box[4] for box in kept)
    from_score = SCORE_TO_P * result.score
    found = sum(box[4] for box in result.boxes)
    if found > 0:
        from_score *= box_sum / found
    return float(max(box_sum, from_score))


def tagged_jpeg(jpeg: bytes, boxes: Sequence[Box]) -> bytes:
    """The frame with the boxes above the visualisation threshold drawn on it."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    draw = ImageDraw.Draw(image)
    line = max(2, image.width // 320)
    for xc, yc, w, h, confidence in boxes:
        if confidence <= decisions.VISUALIZATION_THRESH:
            continue
        draw.rectangle((xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2), outline=(255, 40, 40), width=line)
        draw.text((xc - w / 2 + 3, yc - h / 2 + 2), f"{confidence:.2f}", fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def frame_paths(print_: Print, number: int) -> tuple[str, str]:
    base = f"{organization_prefix(print_.organization_id)}prints/{print_.id}"
    return f"{base}/frames/{number:06d}.jpg", f"{base}/tagged/{number:06d}.jpg"


@dataclass(frozen=True)
class FrameOutcome:
    frame: PredictionFrame
    alert: Alert | None
    paused: bool


def _cooling_down(print_: Print, now: datetime) -> bool:
    """Just after the user acknowledged an alert, the detector holds back for a while."""
    acknowledged = print_.alert_acknowledged_at
    return acknowledged is not None and now - acknowledged < ALERT_COOLDOWN


def _paused_by_detector(print_: Print) -> bool:
    """The detector paused this print and nobody has resumed or acknowledged since."""
    return print_.detector_pause_stands


def _alert_pending(print_: Print) -> bool:
    """The last alert is not acknowledged yet: another one would only repeat it."""
    return print_.alerted_at is not None and (
        print_.alert_acknowledged_at is None or print_.alerted_at > print_.alert_acknowledged_at)


class HoursLedger:
    """Detection hours drawn by the frames of one transaction, written at its end in one
    UPDATE per owner rather than one per frame. Each owner's balance as read is lowered at
    once, so a later frame of the batch sees it as it would after its own commit."""

    def __init__(self) -> None:
        self._seconds: dict[int, float] = {}

    def charge(self, owner: User, seconds: float) -> None:
        self._seconds[owner.id] = self._seconds.get(owner.id, 0.0) + seconds
        # Not a change to write: the UPDATE below subtracts in the database, whatever others did.
        set_committed_value(owner, "dh_balance", owner.dh_balance - seconds / 3600)

    async def write(self, session: AsyncSession) -> None:
        for user_id, seconds in sorted(self._seconds.items()):
            await _draw_hours(session, user_id, seconds)
        self._seconds.clear()


async def _draw_hours(session: AsyncSession, user_id: int, seconds: float) -> None:
    # One UPDATE, not read-modify-write: several printers of one owner charge at once.
    await session.execute(update(User).where(User.id == user_id)
                          .values(dh_balance=User.dh_balance - seconds / 3600)
                          .execution_options(synchronize_session=False))


async def _charge_detection_hours(session: AsyncSession, printer: Printer, print_: Print, now: datetime,
                                  *, unlimited: bool, hours: HoursLedger | None) -> None:
    last = print_.detection_last_at
    print_.detection_last_at = now
    if last is None:
        return
    seconds = (now - last).total_seconds()
    if not 0 < seconds <= MAX_CHARGED_GAP_SECONDS:
        return
    print_.watched_seconds += seconds
    if unlimited:
        return
    if hours is not None:
        hours.charge(printer.owner, seconds)
    else:
        await _draw_hours(session, printer.user_id, seconds)


async def apply_frame(
    session: AsyncSession,
    bus: CommandBus,
    printer_id: int,
    jpeg: bytes,
    result: FrameResult,
    taken_at: datetime,
    *,
    data_dir: Path,
    unlimited_hours: bool = False,
    hours: HoursLedger | None = None,
) -> FrameOutcome | None:
    """Apply one scored frame; ``None`` when the printer is (no longer) watched. The caller commits
    (and, given ``hours``, writes it first: frames applied together draw their hours together).

    Nothing is written here unless the frame may alert or pause, so the frames of one
    transaction go to the database together when it commits."""
    printer = await session.get(Printer, printer_id, options=HOT_PATH_LOAD)
    if printer is None or not is_watched_now(printer) or printer.current_print is None:
        return None
    print_ = printer.current_print
    boxes = outside_masks(result.boxes, printer.ignore_masks or [], result.width, result.height)
    p = evidence(result, boxes)
    scores, baseline = decisions.advance(
        decisions.PrintScores(print_.detection_frames, print_.detection_p, print_.detection_ewm,
                              print_.detection_short_mean),
        decisions.PrinterBaseline(printer.detection_lifetime_frames, printer.detection_long_mean),
        p,
    )
    sensitivity = printer.detective_sensitivity
    print_.detection_frames, print_.detection_p = scores.frame, scores.p
    print_.detection_ewm, print_.detection_short_mean = scores.ewm, scores.short_mean
    printer.detection_lifetime_frames, printer.detection_long_mean = baseline.lifetime_frames, baseline.long_mean
    printer.normalized_p = decisions.normalized_p(scores, baseline, sensitivity)
    await _charge_detection_hours(session, printer, print_, taken_at, unlimited=unlimited_hours, hours=hours)

    image_path, tagged_path = frame_paths(print_, scores.frame)
    has_tags = any(box[4] > decisions.VISUALIZATION_THRESH for box in boxes)
    await store_media(data_dir, image_path, jpeg)
    if has_tags:
        await store_media(data_dir, tagged_path, await asyncio.to_thread(tagged_jpeg, jpeg, boxes))
    frame = PredictionFrame(
        print_id=print_.id, frame_number=scores.frame, taken_at=taken_at, p=p, score=result.score,
        ewm_mean=scores.ewm,
        rolling_mean_short=scores.short_mean, rolling_mean_long=baseline.long_mean,
        normalized_p=printer.normalized_p, boxes=[[round(v, 1) for v in b[:4]] + [round(b[4], 4)] for b in boxes],
        ignored_boxes=len(result.boxes) - len(boxes), image_path=image_path,
        tagged_image_path=tagged_path if has_tags else None, temperatures=reported_temperatures(printer.status),
    )
    session.add(frame)

    pause = decisions.should_pause(scores, baseline, sensitivity)
    warn = decisions.should_alert(scores, baseline, sensitivity)
    if not (pause or warn) or _cooling_down(print_, taken_at):
        return FrameOutcome(frame, None, False)
    # Written before any command goes out or alert names it: a frame the database refuses
    # (its print deleted meanwhile) pauses nobody.
    await session.flush()
    # A failure pauses even while a warning is unanswered; alerts themselves are not repeated,
    # and neither is a pause the agent has not reported yet (or the user has not answered).
    wants_pause = pause and printer.action_on_failure == ActionOnFailure.PAUSE.value \
        and not _paused_by_detector(print_)
    if not wants_pause and _alert_pending(print_):
        return FrameOutcome(frame, None, False)
    paused = await PrinterActions(session, bus).pause(printer, initiator="system") if wants_pause else False
    if wants_pause and not paused and _alert_pending(print_):
        return FrameOutcome(frame, None, False)  # the agent did not take it; the alert stands
    print_.alerted_at = taken_at
    alert = Alert(
        organization_id=printer.organization_id, printer_id=printer.id, print_id=print_.id,
        kind=(AlertKind.FAILURE if pause else AlertKind.WARNING).value, normalized_p=printer.normalized_p,
        paused=paused, frame_id=frame.id, created_at=taken_at,
        details={"p": p, "ewm_mean": scores.ewm, "frame_number": scores.frame,
                 "action_on_failure": printer.action_on_failure},
    )
    session.add(alert)
    await outbox.record(
        session, organization_id=printer.organization_id, printer_id=printer.id, print_id=print_.id,
        event=NotificationEvent.FAILURE_ALERT if pause else NotificationEvent.FAILURE_WARNING,
        payload={"printer_name": printer.name, "filename": print_.filename, "normalized_p": printer.normalized_p,
                 "paused": paused, "image_path": image_path, "boxes": frame.boxes,
                 "width": result.width, "height": result.height})
    log.warning("printer %s: %s alert on print %s (normalized_p %.2f)%s", printer.id, alert.kind, print_.id,
                printer.normalized_p, ", paused" if paused else "")
    return FrameOutcome(frame, alert, paused)


def pick_feedback_frames(frames: Sequence[PredictionFrame]) -> list[PredictionFrame]:
    """Up to seven of the highest-p frames, at least two minutes apart, in time order."""
    chosen: list[PredictionFrame] = []
    for frame in sorted((f for f in frames if f.p > 0), key=lambda f: (-f.p, f.frame_number)):
        if all(abs(frame.taken_at - other.taken_at) >= FEEDBACK_SPACING for other in chosen):
            chosen.append(frame)
            if len(chosen) == FEEDBACK_SHOTS:
                break
    return sorted(chosen, key=lambda f: f.frame_number)


async def create_feedback_shots(session: AsyncSession, print_: Print) -> list[PrintShotFeedback]:
    """At a print's end: the frames the user is asked about (LOOKS_BAD / LOOKS_OK)."""
    if print_.detection_frames == 0:
        return []
    existing = (await session.execute(
        select(PrintShotFeedback.id).where(PrintShotFeedback.print_id == print_.id).limit(1))).first()
    if existing is not None:
        return []
    frames = list((await session.execute(
        select(PredictionFrame).where(PredictionFrame.print_id == print_.id))).scalars())
    shots = [PrintShotFeedback(print_id=print_.id, image_path=f.tagged_image_path or f.image_path)
             for f in pick_feedback_frames(frames)]
    session.add_all(shots)
    return shots


def reported_temperatures(status: dict[str, Any] | None) -> dict[str, list[float | None]] | None:
    """The heaters of an agent's status, compactly: {"tool0": [actual, target], …}."""
    reported = (status or {}).get("temperatures")
    if not isinstance(reported, dict):
        return None

    def number(value: object) -> float | None:
        return round(float(value), 1) if isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value) else None

    heaters = {str(name)[:32]: [number(values.get("actual")), number(values.get("target"))]
               for name, values in list(reported.items())[:8] if isinstance(values, dict)}
    return heaters or None
