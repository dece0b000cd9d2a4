from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from layerfleet.accounts.models import new_uuid
from layerfleet.database import Base, UTCDateTime, utcnow


class AlertOverwrite(enum.StrEnum):
    FAILED = "FAILED"
    NOT_FAILED = "NOT_FAILED"


class FeedbackAnswer(enum.StrEnum):
    LOOKS_BAD = "LOOKS_BAD"
    LOOKS_OK = "LOOKS_OK"
    UNANSWERED = "UNANSWERED"


class Print(Base):
    __tablename__ = "prints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    # None only for an uploaded timelapse that names no printer.
    printer_id: Mapped[int | None] = mapped_column(ForeignKey("printers.id", ondelete="CASCADE"), index=True,
                                                   nullable=True)
    gcode_file_id: Mapped[int | None] = mapped_column(
        ForeignKey("gcode_files.id", ondelete="SET NULL"), nullable=True
    )
    # The agent's `current_print_ts`: identifies the print across reconnects.
    ext_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    filename: Mapped[str] = mapped_column(String(1024), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    uploaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    alert_acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    alert_muted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    alert_overwrite: Mapped[str | None] = mapped_column(String(16), nullable=True)
    video_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    tagged_video_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    poster_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    prediction_json_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # Kept frames for the timelapse: the last one's time (a conditional UPDATE claims the next
    # across processes), and when keeping stopped for want of disk space.
    timelapse_frame_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    timelapse_stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The detector's state for this print (reset at each print start).
    detection_frames: Mapped[int] = mapped_column(Integer, default=0)
    detection_p: Mapped[float] = mapped_column(Float, default=0.0)
    detection_ewm: Mapped[float] = mapped_column(Float, default=0.0)
    detection_short_mean: Mapped[float] = mapped_column(Float, default=0.0)
    detection_last_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Each camera's latest evidence not yet weighed, for the print's one decision state
    # (``watching.frames.combine``): {camera or "": {"p": …, "at": ISO time, "frame": number}}.
    detection_cameras: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    watched_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # Quality defects (``watching.quality``): frames that showed one, and the print's one warning.
    defect_frames: Mapped[int] = mapped_column(Integer, default=0)
    quality_alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When retention removed the pictures of its scored frames that no one needs (``watching.retention``).
    scored_frames_pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    feedbacks: Mapped[list[PrintShotFeedback]] = relationship(
        back_populates="print", order_by="PrintShotFeedback.id", lazy="selectin",
        cascade="all, delete-orphan", passive_deletes=True,
    )

    @property
    def ended(self) -> bool:
        return self.finished_at is not None or self.cancelled_at is not None

    @property
    def detector_pause_stands(self) -> bool:
        """The detector paused this print and nobody has resumed it or answered the alert since
        (a resume acknowledges the alert; ``paused_at`` is only ever set by the detector)."""
        return self.paused_at is not None and (
            self.alert_acknowledged_at is None or self.alert_acknowledged_at < self.paused_at)


class PrintShotFeedback(Base):
    __tablename__ = "print_shot_feedbacks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    print_id: Mapped[int] = mapped_column(ForeignKey("prints.id", ondelete="CASCADE"), index=True)
    image_path: Mapped[str] = mapped_column(String(512))
    answer: Mapped[str] = mapped_column(String(16), default=FeedbackAnswer.UNANSWERED.value)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    print: Mapped[Print] = relationship(back_populates="feedbacks")


class GCodeFile(Base):
    __tablename__ = "gcode_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[int | None] = mapped_column(
        ForeignKey("printers.id", ondelete="SET NULL"), nullable=True
    )
    filename: Mapped[str] = mapped_column(String(1024))
    safe_filename: Mapped[str] = mapped_column(String(1024))
    url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    file_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    num_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    agent_signature: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
