"""Prints of an organization: history queries and the user's changes."""

from __future__ import annotations

import re

from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.database import utcnow
from layerfleet.detection import service as detection
from layerfleet.detection.models import prediction_record
from layerfleet.errors import Invalid
from layerfleet.prints.models import GCodeFile, Print, PrintShotFeedback
from layerfleet.prints.rules import PrintChanges, PrintFilter, PrintSorting


class UnknownFeedback(Invalid):
    """Feedback answers for shots the print does not have."""

    def __init__(self, feedback_ids: list[int]) -> None:
        super().__init__("No such feedback on this print.",
                         {"printshotfeedback_set": [f"No feedback with id {i} on this print." for i in feedback_ids]})
        self.feedback_ids = feedback_ids


def _filtered(query: Select[Print], print_filter: PrintFilter | None) -> Select[Print]:
    if print_filter is PrintFilter.CANCELLED:
        return query.where(Print.cancelled_at.is_not(None))
    if print_filter is PrintFilter.FINISHED:
        return query.where(Print.finished_at.is_not(None))
    if print_filter is PrintFilter.NEED_ALERT_OVERWRITE:
        return query.where(Print.alert_overwrite.is_(None))
    if print_filter is PrintFilter.NEED_PRINT_SHOT_FEEDBACK:
        has_feedback = exists().where(PrintShotFeedback.print_id == Print.id)
        has_answer = exists().where(
            PrintShotFeedback.print_id == Print.id, PrintShotFeedback.answered_at.is_not(None)
        )
        return query.where(has_feedback, ~has_answer)
    return query


async def list_prints(
    session: AsyncSession,
    organization_id: int,
    *,
    print_filter: PrintFilter | None = None,
    sorting: PrintSorting | None = None,
    start: int = 0,
    limit: int | None = None,
) -> list[Print]:
    query = _filtered(select(Print).where(Print.organization_id == organization_id), print_filter)
    if sorting is PrintSorting.DATE_ASC:
        query = query.order_by(Print.started_at.asc(), Print.id.asc())
    elif sorting is PrintSorting.DATE_DESC:
        query = query.order_by(Print.started_at.desc(), Print.id.desc())
    else:
        query = query.order_by(Print.id.desc())
    if start:
        query = query.offset(start)
    if limit is not None:
        query = query.limit(limit)
    return list((await session.execute(query)).scalars())


async def get_print(session: AsyncSession, organization_id: int, print_id: int) -> Print | None:
    query = select(Print).where(Print.id == print_id, Print.organization_id == organization_id)
    return (await session.execute(query)).scalar_one_or_none()


def apply_changes(print_: Print, changes: PrintChanges) -> None:
    """Apply a user's changes, or raise :class:`UnknownFeedback` having changed nothing."""
    given = changes.given()
    by_id = {feedback.id: feedback for feedback in print_.feedbacks}
    answers = changes.printshotfeedback_set if "printshotfeedback_set" in given else []
    unknown = [answer.id for answer in answers if answer.id not in by_id]
    if unknown:
        raise UnknownFeedback(unknown)
    if "alert_overwrite" in given:
        print_.alert_overwrite = changes.alert_overwrite.value if changes.alert_overwrite else None
    now = utcnow()
    for answer in answers:
        feedback = by_id[answer.id]
        feedback.answer = answer.answer.value
        feedback.answered_at = now


async def delete_print(session: AsyncSession, print_: Print) -> None:
    await session.delete(print_)


async def prediction_records(session: AsyncSession, print_: Print) -> list[dict[str, object]]:
    """The detector's frame-by-frame record of a print, in frame order; empty until a frame was scored."""
    return [prediction_record(frame) for frame in await detection.frames_of_print(session, print_.id)]


def safe_filename(filename: str) -> str:
    """The file name as the agents' reference server stores it beside the name they send."""
    return re.sub(r"[^\w.]", "_", filename)


async def record_gcode_file(
    session: AsyncSession, *, organization_id: int, user_id: int, printer_id: int, filename: str,
    safe_name: str | None, url: str | None, num_bytes: int | None, agent_signature: str | None,
) -> tuple[GCodeFile, bool]:
    """The G-code file a printer's agent announces, and whether it is new (then the caller commits).

    An upsert, as the reference server does: the same file (signature and safe name) on the same
    printer is one row. A file without a signature is always a new row."""
    safe_name = safe_name or safe_filename(filename)
    if agent_signature:
        existing = (await session.execute(
            select(GCodeFile).where(
                GCodeFile.organization_id == organization_id,
                GCodeFile.printer_id == printer_id,
                GCodeFile.agent_signature == agent_signature,
                GCodeFile.safe_filename == safe_name,
            ).order_by(GCodeFile.id.desc()).limit(1)
        )).scalar_one_or_none()
        if existing is not None:
            return existing, False
    created = GCodeFile(
        organization_id=organization_id, user_id=user_id, printer_id=printer_id, filename=filename,
        safe_filename=safe_name, url=url, num_bytes=num_bytes, agent_signature=agent_signature,
    )
    session.add(created)
    await session.flush()
    return created, True
