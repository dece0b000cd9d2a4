"""What notifications keep: the organization's (and members' own) targets, the outbox of
events written with their cause, one delivery per event (or digest) and target, and the
one-tap action links sent in alerts."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from layerfleet.database import Base, UTCDateTime, utcnow


class NotificationEvent(enum.StrEnum):
    PRINT_STARTED = "PrintStarted"
    PRINT_DONE = "PrintDone"
    PRINT_CANCELLED = "PrintCancelled"
    PRINT_PAUSED = "PrintPaused"
    PRINT_RESUMED = "PrintResumed"
    FILAMENT_CHANGE = "FilamentChange"
    HEATER_TARGET_REACHED = "HeaterTargetReached"
    HEATER_COOLED_DOWN = "HeaterCooledDown"
    FAILURE_WARNING = "FailureWarning"
    FAILURE_ALERT = "FailureAlert"
    QUALITY_WARNING = "QualityWarning"  # a print-quality defect seen; nothing was paused
    PRINTER_OFFLINE = "PrinterOffline"
    SLICE_FINISHED = "SliceFinished"
    SLICE_FAILED = "SliceFailed"
    PRINT_JOB_COMPLETED = "PrintJobCompleted"
    PRINT_JOB_FAILED = "PrintJobFailed"
    PRINTWATCH_NOTIFY = "PrintWatchNotify"
    TEST = "Test"


# Sent whatever the hour and never folded into a digest: a failing print cannot wait.
CRITICAL_EVENTS = frozenset({NotificationEvent.FAILURE_ALERT})
# What a target may subscribe to (Test is sent on request only).
SUBSCRIBABLE_EVENTS = tuple(e for e in NotificationEvent if e is not NotificationEvent.TEST)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"


class NotificationTarget(Base):
    """Where an organization's (or one member's) notifications go: one Apprise URL or signed webhook."""

    __tablename__ = "notification_targets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    # Set: the member's own target (they manage it); None: the organization's (admins manage it).
    owner_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True,
                                                      index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    url_encrypted: Mapped[str] = mapped_column(Text)
    url_masked: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    # None: every printer of the organization.
    printer_ids: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    quiet_start: Mapped[str | None] = mapped_column(String(5), nullable=True)  # "HH:MM"
    quiet_end: Mapped[str | None] = mapped_column(String(5), nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    webhook_secret_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxEvent(Base):
    """An event, written in the same transaction as what caused it; ``payload`` holds all a
    message needs, so delivery never reads the layers that raised it."""

    __tablename__ = "notification_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(36), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[int | None] = mapped_column(ForeignKey("printers.id", ondelete="SET NULL"), nullable=True)
    print_id: Mapped[int | None] = mapped_column(ForeignKey("prints.id", ondelete="SET NULL"), nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """One event to one target. Events sent together in a digest share ``message_key``."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (Index("ix_notification_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("notification_events.id", ondelete="CASCADE"), index=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("notification_targets.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A process sending it holds it until then; past it (the process died) another may take it.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message_key: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Held for a digest (a burst), or sent in one.
    digest: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)


class ActionLink(Base):
    """A one-tap link of an alert: only the token's hash is kept; used once, then refused."""

    __tablename__ = "notification_action_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    action: Mapped[str] = mapped_column(String(16))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[int] = mapped_column(ForeignKey("printers.id", ondelete="CASCADE"))
    print_id: Mapped[int | None] = mapped_column(ForeignKey("prints.id", ondelete="CASCADE"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
