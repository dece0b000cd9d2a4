"""What the failure detector recorded: its alerts and the frames it scored, as the APIs and the
pages read them back."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.detection.models import Alert, PredictionFrame


async def list_alerts(
    session: AsyncSession, organization_id: int, *, printer_id: int | None = None, print_id: int | None = None,
    limit: int,
) -> list[Alert]:
    """The organization's alerts, newest first."""
    query = select(Alert).where(Alert.organization_id == organization_id)
    if printer_id is not None:
        query = query.where(Alert.printer_id == printer_id)
    if print_id is not None:
        query = query.where(Alert.print_id == print_id)
    query = query.order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def alerts_of_print(session: AsyncSession, print_id: int) -> list[Alert]:
    """A print's alerts, oldest first."""
    query = select(Alert).where(Alert.print_id == print_id).order_by(Alert.created_at, Alert.id)
    return list((await session.execute(query)).scalars())


async def frames_of_print(session: AsyncSession, print_id: int) -> list[PredictionFrame]:
    """A print's scored frames, in frame order (a round's frames of several cameras share its number)."""
    query = select(PredictionFrame).where(PredictionFrame.print_id == print_id).order_by(
        PredictionFrame.frame_number, PredictionFrame.taken_at, PredictionFrame.id)
    return list((await session.execute(query)).scalars())
