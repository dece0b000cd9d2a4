"""PrintWatch API keys, the devices (client `printer_id`s) each key serves, and what the
clients send besides pictures: notification requests and feedback."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from layerfleet.accounts.models import User
from layerfleet.database import Base, UTCDateTime, utcnow


class PrintWatchKey(Base):
    """An API key of the PrintWatch dialect, good for up to ``device_limit`` devices. Only a hash
    is kept: the key is shown once, at creation. Keys are revoked, never deleted, so that the
    notifications and feedback recorded under them stay."""

    __tablename__ = "printwatch_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    # The member the key was issued to: notifications go to their email when the client names none.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    key_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    device_limit: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    user: Mapped[User] = relationship(lazy="joined")


class PrintWatchDevice(Base):
    """One client device (its ``printer_id``) registered under a key. A printer_id belongs to
    one key at a time; releasing the device (or revoking its key) frees it."""

    __tablename__ = "printwatch_devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("printwatch_keys.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[str] = mapped_column(String(64), unique=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The last inference call let through the minimum interval (`service.MIN_INFER_INTERVAL`).
    last_call_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    client_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # What the client's first heartbeat said about its settings (thresholds as percentages).
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    frames_scored: Mapped[int] = mapped_column(Integer, default=0)

    # The current print: its ticket, its recent scores (oldest first) and whether the service has
    # already told the client to act on it (once per print, so a resumed print is not paused again).
    ticket_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scores: Mapped[list[float]] = mapped_column(JSON, default=list)
    last_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_scored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    action_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PrintWatchNotification(Base):
    """A client's request for an email notification. There is no mailer yet: requests are kept
    (``delivered_at`` stays empty) for the notifications work to deliver."""

    __tablename__ = "printwatch_notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("printwatch_keys.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16))  # "warning" or "action"
    email: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What the client said about the print: its own time stamp, printTime, progress, job_name.
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PrintWatchFeedback(Base):
    """A user's verdict on a detection, sent through the client, with its picture when the
    client allows feedback images."""

    __tablename__ = "printwatch_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("printwatch_keys.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[str] = mapped_column(String(64))
    classification: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
