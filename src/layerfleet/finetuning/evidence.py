"""An organization's evidence for fine-tuning: which of its stored frames show a failure and which
do not, by what its people said and did.

- A feedback answer labels its frame: LOOKS_BAD a failure, LOOKS_OK not. It outranks
  everything below for that frame.
- A print's alert frames take the print's verdict: a failure when the alert was confirmed
  (``alert_overwrite`` FAILED) or the print was cancelled after the alert; not a failure when
  the alert was denied (NOT_FAILED), muted, or when the detector's pause was resumed (the
  print went on: the resume acknowledged the alert and nobody cancelled it).

Frames are the detector's stored pictures, never the copies with boxes drawn (a model must
not learn our overlays). A deterministic part of the prints, per label, is held back to
measure the fine-tuned model on the farm's own answers (never trained on): the prints with
the smallest hash of their uuid, a quarter of them (at least one when a label has two)."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.detection.models import Alert, PredictionFrame
from layerfleet.errors import Invalid
from layerfleet.prints.models import AlertOverwrite, FeedbackAnswer, Print, PrintShotFeedback

HELD_BACK_FRACTION = 0.25
# Per label: prints needed, so that one can be held back and one trained on.
MIN_PRINTS_PER_LABEL = 2
# A print without alert frames lends its most suspicious frames to its verdict.
FRAMES_PER_PRINT_VERDICT = 3


@dataclass(frozen=True)
class EvidenceFrame:
    image_path: str  # relative to the media root
    failure: bool
    print_id: int
    source: str  # "feedback", "confirmed", "cancelled", "denied", "muted", "resumed"
    held_back: bool = False


def print_verdict(print_: Print) -> tuple[bool, str] | None:
    """(failure?, why) of a print the detector alerted on, by what people did; None: no verdict."""
    if print_.alert_overwrite == AlertOverwrite.FAILED.value:
        return True, "confirmed"
    if print_.alert_overwrite == AlertOverwrite.NOT_FAILED.value:
        return False, "denied"
    alerted = print_.alerted_at or print_.paused_at
    if alerted is None:
        return None
    if print_.cancelled_at is not None and print_.cancelled_at >= alerted:
        return True, "cancelled"
    if print_.alert_muted_at is not None:
        return False, "muted"
    if (print_.paused_at is not None and print_.alert_acknowledged_at is not None
            and print_.alert_acknowledged_at >= print_.paused_at and print_.cancelled_at is None):
        return False, "resumed"
    return None


async def collect(session: AsyncSession, organization_id: int, media_root: Path) -> list[EvidenceFrame]:
    """Every labelled frame of the organization whose picture is still stored, held-back ones marked."""
    labelled: dict[str, EvidenceFrame] = {}
    answers = (await session.execute(
        select(PrintShotFeedback.image_path, PrintShotFeedback.answer, PrintShotFeedback.print_id)
        .join(Print, Print.id == PrintShotFeedback.print_id)
        .where(Print.organization_id == organization_id,
               PrintShotFeedback.answer.in_([FeedbackAnswer.LOOKS_BAD.value, FeedbackAnswer.LOOKS_OK.value])))).all()
    shot_paths = {path for path, _, _ in answers}
    # A shot shows the frame with boxes drawn when it had any: its plain picture is the frame's.
    # A frame whose pictures retention removed (``watching.retention``) lends nothing.
    plain = {tagged or image: image for tagged, image in (await session.execute(
        select(PredictionFrame.tagged_image_path, PredictionFrame.image_path)
        .join(Print, Print.id == PredictionFrame.print_id)
        .where(Print.organization_id == organization_id,
               or_(PredictionFrame.tagged_image_path.in_(shot_paths),
                   PredictionFrame.image_path.in_(shot_paths))))).all()}
    for path, answer, print_id in answers:
        image = plain.get(path, path)
        if image is None:
            continue
        labelled[image] = EvidenceFrame(image, answer == FeedbackAnswer.LOOKS_BAD.value, print_id, "feedback")

    alerted = list((await session.execute(select(Print).where(
        Print.organization_id == organization_id,
        or_(Print.alerted_at.is_not(None), Print.paused_at.is_not(None), Print.alert_overwrite.is_not(None)))
    )).scalars())
    for print_ in alerted:
        verdict = print_verdict(print_)
        if verdict is None:
            continue
        failure, why = verdict
        frames = list((await session.execute(
            select(PredictionFrame.image_path).join(Alert, Alert.frame_id == PredictionFrame.id)
            .where(Alert.print_id == print_.id).order_by(PredictionFrame.taken_at))).scalars())
        if not frames:
            frames = list((await session.execute(
                select(PredictionFrame.image_path).where(PredictionFrame.print_id == print_.id)
                .order_by(PredictionFrame.p.desc(), PredictionFrame.id).limit(FRAMES_PER_PRINT_VERDICT))).scalars())
        for picture in frames:
            if picture is not None:
                labelled.setdefault(picture, EvidenceFrame(picture, failure, print_.id, why))

    present = [frame for frame in labelled.values() if (media_root / frame.image_path).is_file()]
    uuids = {print_id: uuid for print_id, uuid in (await session.execute(
        select(Print.id, Print.uuid).where(Print.id.in_({f.print_id for f in present})))).all()}
    return hold_back(present, uuids)


def hold_back(frames: list[EvidenceFrame], print_uuids: dict[int, str]) -> list[EvidenceFrame]:
    """Mark the held-back frames (see the module's docstring); the same evidence always gives
    the same split, and a print's frames of one label stay on one side."""
    prints_by_label: dict[bool, set[int]] = defaultdict(set)
    for frame in frames:
        prints_by_label[frame.failure].add(frame.print_id)
    held: set[tuple[bool, int]] = set()
    for label, print_ids in prints_by_label.items():
        if len(print_ids) < MIN_PRINTS_PER_LABEL:
            continue
        ordered = sorted(print_ids, key=lambda pid: hashlib.sha256(
            print_uuids.get(pid, str(pid)).encode()).hexdigest())
        count = max(1, math.floor(len(ordered) * HELD_BACK_FRACTION))
        held.update((label, pid) for pid in ordered[:count])
    return sorted((EvidenceFrame(f.image_path, f.failure, f.print_id, f.source, (f.failure, f.print_id) in held)
                   for f in frames), key=lambda f: (f.print_id, f.image_path))


def check_enough(frames: list[EvidenceFrame]) -> None:
    """Refuse (400) when the evidence cannot both train and measure a model."""
    failures = {f.print_id for f in frames if f.failure}
    normal = {f.print_id for f in frames if not f.failure}
    if len(failures) < MIN_PRINTS_PER_LABEL or len(normal) < MIN_PRINTS_PER_LABEL:
        message = (f"Not enough answered evidence to fine-tune: failures from at least {MIN_PRINTS_PER_LABEL} "
                   f"prints and non-failures from at least {MIN_PRINTS_PER_LABEL} prints are needed (have "
                   f"{len(failures)} and {len(normal)}). Answer feedback frames (Looks bad / Looks OK) on the "
                   "prints' pages.")
        raise Invalid(message, {"organization": [message]})
