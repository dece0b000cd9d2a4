"""Retention of scored frames' pictures: once a print has ended more than
``scored_frames_keep_days`` ago (0: never), the pictures of its scored frames go from disk and the
rows' paths become NULL. The rows stay: the detection graph and the prediction JSON read them.

A frame keeps its pictures (plain and tagged) while it is still evidence someone may look at or
learn from:

- an alert points at it (failure, warning or quality; a notification's picture is its alert's
  frame's);
- a feedback shot shows it (the shot stores the tagged picture, or the plain one without boxes;
  fine-tuning learns from the plain one beside it);
- it showed a quality defect (``watching.quality`` counts these towards its warning);
- it is among the print's ``EVIDENCE_FRAMES_PER_PRINT`` most suspicious frames, which fine-tuning
  lends a print's verdict when it has no alert frame (``finetuning.evidence``); a verdict can be
  given at any time, so every print keeps them.

A print is pruned once (``prints.scored_frames_pruned_at``) in transactions of at most a batch of
frames, so a backlog never holds a long transaction nor reads a whole print at once."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.detection.models import Alert, PredictionFrame
from layerfleet.detection.runtime import DEFECT_ALERT_SCORE
from layerfleet.fleet.models import Printer
from layerfleet.media import remove_many_media
from layerfleet.prints.models import Print, PrintShotFeedback

log = logging.getLogger(__name__)

BATCH_FRAMES = 500
BATCH_PRINTS = 100
# At least ``finetuning.evidence.FRAMES_PER_PRINT_VERDICT`` (a layer above; a test holds them together).
EVIDENCE_FRAMES_PER_PRINT = 3


def _due(cutoff: datetime) -> ColumnElement[bool]:
    """Ended (finished or cancelled, whichever came last) before ``cutoff``, not pruned yet, and
    no printer's current print (an end the agent has not reported yet)."""
    return and_(
        or_(Print.finished_at.is_not(None), Print.cancelled_at.is_not(None)),
        or_(Print.finished_at.is_(None), Print.finished_at <= cutoff),
        or_(Print.cancelled_at.is_(None), Print.cancelled_at <= cutoff),
        Print.scored_frames_pruned_at.is_(None),
        ~exists().where(Printer.current_print_id == Print.id),
    )


async def kept_frames(session: AsyncSession, print_id: int) -> tuple[set[int], set[str]]:
    """The print's frames that keep their pictures (see the module's docstring), and every
    picture path still in use: a file shared with a kept frame or a shot must stay."""
    frame = PredictionFrame
    shot_paths = set((await session.execute(
        select(PrintShotFeedback.image_path).where(PrintShotFeedback.print_id == print_id))).scalars())
    alerted = select(Alert.frame_id).where(Alert.print_id == print_id, Alert.frame_id.is_not(None))
    most_suspicious = select(frame.id).where(frame.print_id == print_id).order_by(
        frame.p.desc(), frame.id).limit(EVIDENCE_FRAMES_PER_PRINT)
    ids = set((await session.execute(select(frame.id).where(frame.print_id == print_id, or_(
        frame.id.in_(alerted),
        frame.image_path.in_(shot_paths), frame.tagged_image_path.in_(shot_paths),
        frame.defect_score >= DEFECT_ALERT_SCORE,
    )))).scalars())
    ids.update((await session.execute(most_suspicious)).scalars())
    paths = set(shot_paths)
    if ids:
        for image, tagged in (await session.execute(
                select(frame.image_path, frame.tagged_image_path).where(frame.id.in_(ids)))).all():
            paths.update(path for path in (image, tagged) if path)
    return ids, paths


async def _prune_print(sessionmaker: async_sessionmaker[AsyncSession], data_dir: Path, print_id: int,
                       batch: int) -> int:
    async with sessionmaker() as session:
        kept_ids, kept_paths = await kept_frames(session, print_id)
    removed = 0
    after = 0
    while True:
        async with sessionmaker() as session:
            rows = (await session.execute(
                select(PredictionFrame.id, PredictionFrame.image_path, PredictionFrame.tagged_image_path)
                .where(PredictionFrame.print_id == print_id, PredictionFrame.id > after,
                       or_(PredictionFrame.image_path.is_not(None), PredictionFrame.tagged_image_path.is_not(None)))
                .order_by(PredictionFrame.id).limit(batch))).all()
        if not rows:
            break
        after = rows[-1].id
        doomed = [row for row in rows if row.id not in kept_ids]
        if not doomed:
            continue
        files = sorted({path for row in doomed for path in (row.image_path, row.tagged_image_path)
                        if path and path not in kept_paths})
        # The files before the rows: should writing the rows fail, the next run finds them again
        # and finishes, where the other order could leave files no row names.
        await remove_many_media(data_dir, files)
        async with sessionmaker() as session:
            await session.execute(
                update(PredictionFrame).where(PredictionFrame.id.in_([row.id for row in doomed]))
                .values(image_path=None, tagged_image_path=None).execution_options(synchronize_session=False))
            await session.commit()
        removed += len(doomed)
    async with sessionmaker() as session:
        await session.execute(update(Print).where(Print.id == print_id).values(scored_frames_pruned_at=utcnow())
                              .execution_options(synchronize_session=False))
        await session.commit()
    return removed


async def apply_scored_frame_retention(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *,
                                       batch: int = BATCH_FRAMES) -> int:
    """Remove the pictures of scored frames of prints ended more than ``scored_frames_keep_days``
    ago, but those still evidence; how many frames lost theirs."""
    if settings.scored_frames_keep_days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=settings.scored_frames_keep_days)
    removed = pruned = 0
    after = 0
    while True:
        async with sessionmaker() as session:
            due = list((await session.execute(select(Print.id).where(_due(cutoff), Print.id > after)
                                              .order_by(Print.id).limit(BATCH_PRINTS))).scalars())
        if not due:
            break
        for print_id in due:
            removed += await _prune_print(sessionmaker, settings.data_dir, print_id, batch)
        pruned += len(due)
        after = due[-1]
    if pruned:
        log.info("scored-frame retention: pictures of %d frame(s) of %d print(s) removed", removed, pruned)
    return removed
