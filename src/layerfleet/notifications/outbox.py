"""The one call emitters make: :func:`record` writes an event, and a delivery for every target
that wants it, in the caller's transaction, so an event exists exactly when its cause does."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from layerfleet.database import utcnow
from layerfleet.notifications.models import Delivery, NotificationEvent, NotificationTarget, OutboxEvent

# Delivery loops of this process, woken when a transaction that recorded an event commits
# (other processes find it on their next poll).
_wakers: set[Callable[[], None]] = set()
_WAKE_FLAG = "layerfleet.notifications.wake"


def add_waker(wake: Callable[[], None]) -> None:
    _wakers.add(wake)


def remove_waker(wake: Callable[[], None]) -> None:
    _wakers.discard(wake)


def _wake_all(_session: Session) -> None:
    for wake in list(_wakers):
        wake()


def _wake_after_commit(session: AsyncSession) -> None:
    sync = session.sync_session
    if not sync.info.get(_WAKE_FLAG):
        sync.info[_WAKE_FLAG] = True
        sa_event.listen(sync, "after_commit", _wake_all)


def wants(target: NotificationTarget, event: NotificationEvent, printer_id: int | None) -> bool:
    if not target.enabled or event.value not in (target.events or []):
        return False
    return target.printer_ids is None or printer_id is None or printer_id in target.printer_ids


async def record(
    session: AsyncSession,
    *,
    organization_id: int,
    event: NotificationEvent,
    printer_id: int | None = None,
    print_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> OutboxEvent | None:
    """Record ``event`` for the organization's targets that want it; None when none does.
    ``payload`` holds everything a message needs (names, file, likelihood, the picture's
    media path and boxes…); the caller commits."""
    targets = (await session.execute(select(NotificationTarget).where(
        NotificationTarget.organization_id == organization_id, NotificationTarget.enabled.is_(True)))).scalars()
    wanting = [t for t in targets if wants(t, event, printer_id)]
    if not wanting:
        return None
    now = utcnow()
    outbox = OutboxEvent(idempotency_key=str(uuid.uuid4()), kind=event.value, organization_id=organization_id,
                         printer_id=printer_id, print_id=print_id, payload=dict(payload or {}), created_at=now)
    session.add(outbox)
    await session.flush()
    session.add_all(Delivery(event_id=outbox.id, target_id=t.id, next_attempt_at=now, created_at=now)
                    for t in wanting)
    _wake_after_commit(session)
    return outbox
