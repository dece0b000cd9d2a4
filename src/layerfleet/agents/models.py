"""What the agent side of the server keeps: one-time linking codes and printer events."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from layerfleet.database import Base, UTCDateTime, utcnow


class EventClass(enum.StrEnum):
    INFO = "INFO"
    SUCCESS = "SUCCESS"
    WARNING = "WARNING"
    ERROR = "ERROR"


class OneTimeVerificationCode(Base):
    """A 6-digit code a member hands to an agent to link it: to a new printer, or to
    ``printer_id`` again (relinking resets that printer's token). Used once."""

    __tablename__ = "one_time_verification_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(6), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[int | None] = mapped_column(
        ForeignKey("printers.id", ondelete="CASCADE"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PrinterEvent(Base):
    """Something a printer's agent reported (an error, a filament change, a pause, …)."""

    __tablename__ = "printer_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[int] = mapped_column(ForeignKey("printers.id", ondelete="CASCADE"), index=True)
    print_id: Mapped[int | None] = mapped_column(
        ForeignKey("prints.id", ondelete="SET NULL"), nullable=True, index=True
    )
    event_type: Mapped[str] = mapped_column(String(64), default="")
    event_class: Mapped[str] = mapped_column(String(16), default=EventClass.INFO.value)
    event_title: Mapped[str] = mapped_column(String(256), default="")
    # As the agent sent it (OctoPrint-Obico sends HTML fragments): escape when rendering.
    event_text: Mapped[str] = mapped_column(Text, default="")
    info_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    image_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    notify: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
