"""Watching a print: what one scored frame does to the printer, its print and its owner.

The detector's boxes (minus those under the printer's ignore masks) give ``p``; the print's
and printer's detection state advance by the reference rules (`decisions`); the frame is
recorded; detection hours are charged for the watched time; and a failing print raises an
alert and, when the printer says so, is paused through the one command path.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
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
from layerfleet.detection.evidence import Box, evidence
from layerfleet.detection.models import Alert, AlertKind, PredictionFrame
from layerfleet.detection.runtime import FrameResult
from layerfleet.fleet.actions import PrinterActions
from layerfleet.fleet.models import ActionOnFailure, Printer, PrinterCamera
from layerfleet.fleet.service import HOT_PATH_LOAD
from layerfleet.fleet.watch_reasons import is_paused, should_watch
from layerfleet.media import kept_frame_path, print_folder, store_media
from layerfleet.notifications import outbox
from layerfleet.notifications.models import NotificationEvent
from layerfleet.prints.models import Print, PrintShotFeedback
from layerfleet.watching.quality import defect_boxes, quality_warning

log = logging.getLogger(__name__)

ALERT_COOLDOWN = timedelta(seconds=90)
# Watched time is charged frame to frame; a longer gap (agent away, camera down) is not.
MAX_CHARGED_GAP_SECONDS = 60.0
FEEDBACK_SHOTS = 7
FEEDBACK_SPACING = timedelta(minutes=2)


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


def frame_paths(print_: Print, number: int, camera: str | None = None) -> tuple[str, str]:
    base = print_folder(print_.organization_id, print_.id)
    name = f"{number:06d}" if camera is None else f"{number:06d}-{camera_slug(camera)}"
    return f"{base}/frames/{name}.jpg", f"{base}/tagged/{name}.jpg"


def camera_slug(camera: str) -> str:
    """A camera's name fit for a file name; the hash keeps "a b" and "a_b" apart."""
    digest = hashlib.sha1(camera.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', camera)[:40]}-{digest}"


# --- every camera, one decision state per print ----------------------------------------------------------

PRIMARY = ""  # the primary camera's key in a print's ``detection_cameras``
# Another camera's evidence older than this is not weighed: the print was not watched meanwhile.
CAMERA_EVIDENCE_MAX_AGE = timedelta(seconds=MAX_CHARGED_GAP_SECONDS)


@dataclass(frozen=True)
class Weighing:
    """What one camera's frame does to its print's decision state."""

    steps: bool  # the state advances with this frame
    p: float  # what it advances with: the highest evidence among the cameras' latest frames
    source: str  # the camera whose frame gave ``p`` (this frame's own when it is the highest)
    source_entry: dict[str, Any] | None  # that camera's entry, when it is another camera
    cameras: dict[str, Any]  # the print's ``detection_cameras`` after this frame
    latest: datetime  # this camera's latest frame time, this one included


def combine(cameras: Mapping[str, Any] | None, camera: str, p: float, taken_at: datetime,
            last_step: datetime | None) -> Weighing:
    """Combine one camera's frame with the others' into the print's one decision state.

    The reference rules count frames at the scoring interval; each camera is scored at that
    interval, so letting every camera's frame advance the state would run the rules at a
    multiple of their pace and let a normal camera's frames pull a failing one's average
    down. Instead the state advances once per round: a camera's frame advances it unless
    another camera's frame already did since this camera's previous one (then it waits,
    recorded, for the next step), and a step takes the highest ``p`` among its own and the
    other cameras' frames not weighed yet. A failure seen clearly by any camera so counts at
    full strength, at most one interval late; with one camera every frame steps, as before.

    A frame may come late, older than its camera's latest (a dead worker's batch taken over
    after newer frames were applied): it steps as the camera's next frame would, and does not
    move the camera's time back (``Weighing.latest``), or the camera's next frame would wait
    for a step that already happened. Whether a waiting frame was weighed is recorded with it
    (``waiting``), not read from the times, so a late one is weighed at the next step too.
    """
    entries = dict(cameras or {})
    previous = entries.get(camera)
    previous_at = _entry_time(previous)
    steps = (not entries or last_step is None or taken_at - last_step > CAMERA_EVIDENCE_MAX_AGE
             or (previous_at is not None and last_step <= previous_at and taken_at != previous_at))
    best, source, source_entry = p, camera, None
    if steps:
        for name, entry in entries.items():
            at = _entry_time(entry)
            if name == camera or at is None or not _waiting(entry, at, last_step) \
                    or taken_at - at > CAMERA_EVIDENCE_MAX_AGE:
                continue
            if float(entry.get("p", 0.0)) > best:
                best, source, source_entry = float(entry["p"]), name, entry
        entries = {name: {**entry, "waiting": False} if isinstance(entry, dict) else entry
                   for name, entry in entries.items()}
    latest = taken_at if previous_at is None else max(previous_at, taken_at)
    return Weighing(steps, best, source, source_entry, entries, latest)


def _waiting(entry: Mapping[str, Any], at: datetime, last_step: datetime | None) -> bool:
    """Whether another camera's frame is still to be weighed; entries written before this was
    recorded tell by their time."""
    if "waiting" in entry:
        return bool(entry["waiting"])
    return last_step is None or at > last_step


def _entry_time(entry: Mapping[str, Any] | None) -> datetime | None:
    try:
        return datetime.fromisoformat(entry["at"]) if entry else None
    except (KeyError, TypeError, ValueError):
        return None


async def _camera_masks(session: AsyncSession, printer_id: int, camera: str) -> list[list[float]]:
    masks = (await session.execute(select(PrinterCamera.ignore_masks).where(
        PrinterCamera.printer_id == printer_id, PrinterCamera.name == camera))).scalar_one_or_none()
    return list(masks or [])


async def _shown_frame(session: AsyncSession, print_: Print, weighing: Weighing, frame: PredictionFrame,
                       width: int, height: int) -> tuple[PredictionFrame, int, int]:
    """The frame an alert shows: the one whose camera saw what made the step fail."""
    entry = weighing.source_entry
    if entry is None:
        return frame, width, height
    camera = None if weighing.source == PRIMARY else weighing.source
    found = (await session.execute(select(PredictionFrame).where(
        PredictionFrame.print_id == print_.id, PredictionFrame.frame_number == entry.get("frame"),
        PredictionFrame.camera.is_(None) if camera is None else PredictionFrame.camera == camera,
    ).order_by(PredictionFrame.id.desc()).limit(1))).scalar_one_or_none()
    if found is None:
        return frame, width, height
    return found, int(entry.get("w", width)), int(entry.get("h", height))


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
    if last is not None and now <= last:
        return  # a late frame (a dead worker's batch, taken over): its time was charged already
    print_.detection_last_at = now
    if last is None:
        return
    seconds = (now - last).total_seconds()
    if not 0 < seconds <= MAX_CHARGED_GAP_SECONDS:
        return
    print_.watched_seconds += seconds
    if unlimited:
        return
    ledger = hours if hours is not None else HoursLedger()
    ledger.charge(printer.owner, seconds)
    if hours is None:
        await ledger.write(session)  # a frame applied alone draws its hours at once


async def apply_frame(
    session: AsyncSession,
    bus: CommandBus,
    printer_id: int,
    jpeg: bytes,
    result: FrameResult,
    taken_at: datetime,
    *,
    camera: str | None = None,
    data_dir: Path,
    unlimited_hours: bool = False,
    hours: HoursLedger | None = None,
) -> FrameOutcome | None:
    """Apply one scored frame of the printer's primary camera, or of the one ``camera`` names;
    ``None`` when the printer is (no longer) watched. The caller commits (and, given ``hours``,
    writes it first: frames applied together draw their hours together). The cameras' frames
    feed the print's one decision state as :func:`combine` says.

    Nothing is written here unless the frame may alert or pause, so the frames of one
    transaction go to the database together when it commits."""
    printer = await session.get(Printer, printer_id, options=HOT_PATH_LOAD)
    if printer is None or not is_watched_now(printer) or printer.current_print is None:
        return None
    print_ = printer.current_print
    masks = printer.ignore_masks or [] if camera is None else await _camera_masks(session, printer.id, camera)
    boxes = outside_masks(result.boxes, masks, result.width, result.height)
    p = evidence(result, boxes)
    key = PRIMARY if camera is None else camera
    weighing = combine(print_.detection_cameras, key, p, taken_at, print_.detection_last_at)
    scores = decisions.PrintScores(print_.detection_frames, print_.detection_p, print_.detection_ewm,
                                   print_.detection_short_mean)
    baseline = decisions.PrinterBaseline(printer.detection_lifetime_frames, printer.detection_long_mean)
    sensitivity = printer.detective_sensitivity
    if weighing.steps:
        scores, baseline = decisions.advance(scores, baseline, weighing.p)
        print_.detection_frames, print_.detection_p = scores.frame, scores.p
        print_.detection_ewm, print_.detection_short_mean = scores.ewm, scores.short_mean
        printer.detection_lifetime_frames, printer.detection_long_mean = baseline.lifetime_frames, baseline.long_mean
        printer.normalized_p = decisions.normalized_p(scores, baseline, sensitivity)
        # Watched time is the steps' time: cameras scored in the same round are not charged twice.
        await _charge_detection_hours(session, printer, print_, taken_at, unlimited=unlimited_hours, hours=hours)
    print_.detection_cameras = {**weighing.cameras, key: {
        "p": round(p, 4), "at": weighing.latest.isoformat(), "frame": scores.frame, "w": result.width,
        "h": result.height, "waiting": not weighing.steps}}

    image_path, tagged_path = frame_paths(print_, scores.frame, camera)
    has_tags = any(box[4] > decisions.VISUALIZATION_THRESH for box in boxes)
    # The primary camera's picture may be the one kept for the video this interval: one copy.
    kept = kept_frame_path(print_.organization_id, print_.id, taken_at) if camera is None else None
    await store_media(data_dir, image_path, jpeg, same_as=kept)
    if has_tags:
        await store_media(data_dir, tagged_path, await asyncio.to_thread(tagged_jpeg, jpeg, boxes))
    frame = PredictionFrame(
        print_id=print_.id, frame_number=scores.frame, taken_at=taken_at, p=p, score=result.score,
        ewm_mean=scores.ewm,
        rolling_mean_short=scores.short_mean, rolling_mean_long=baseline.long_mean,
        normalized_p=printer.normalized_p, boxes=[[round(v, 1) for v in b[:4]] + [round(b[4], 4)] for b in boxes],
        ignored_boxes=len(result.boxes) - len(boxes), image_path=image_path,
        tagged_image_path=tagged_path if has_tags else None, temperatures=reported_temperatures(printer.status),
        camera=camera, defect_score=result.defect_score,
        defect_boxes=defect_boxes(result, outside_masks(result.defect_boxes, masks, result.width, result.height)),
    )
    session.add(frame)
    await quality_warning(session, printer, print_, frame, result, taken_at)  # a warning only, never a pause
    if not weighing.steps:
        return FrameOutcome(frame, None, False)  # weighed at the print's next step

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
    shown, width, height = await _shown_frame(session, print_, weighing, frame, result.width, result.height)
    alert = Alert(
        organization_id=printer.organization_id, printer_id=printer.id, print_id=print_.id,
        kind=(AlertKind.FAILURE if pause else AlertKind.WARNING).value, normalized_p=printer.normalized_p,
        paused=paused, frame_id=shown.id, created_at=taken_at,
        details={"p": weighing.p, "ewm_mean": scores.ewm, "frame_number": scores.frame,
                 "action_on_failure": printer.action_on_failure, "camera": shown.camera},
    )
    session.add(alert)
    await outbox.record(
        session, organization_id=printer.organization_id, printer_id=printer.id, print_id=print_.id,
        event=NotificationEvent.FAILURE_ALERT if pause else NotificationEvent.FAILURE_WARNING,
        payload={"printer_name": printer.name, "filename": print_.filename, "normalized_p": printer.normalized_p,
                 "paused": paused, "image_path": shown.image_path, "boxes": shown.boxes,
                 "width": width, "height": height})
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
