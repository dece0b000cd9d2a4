"""The durable state of video work: one row per compilation of a print's frames or analysis of
an uploaded timelapse. The job queue carries only the row's uuid (see layerfleet.jobs)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from layerfleet.accounts.models import new_uuid
from layerfleet.database import Base, UTCDateTime, utcnow


class TimelapsePurpose(enum.StrEnum):
    COMPILE = "COMPILE"  # a print ended: its kept frames become the videos and the poster
    ANALYSE = "ANALYSE"  # an uploaded timelapse: its frames are scored, then compiled


class TimelapseStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"
    SKIPPED = "SKIPPED"  # too short a print, or no frames
    ERROR = "ERROR"


class TimelapseJob(Base):
    __tablename__ = "timelapse_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    print_id: Mapped[int] = mapped_column(ForeignKey("prints.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=TimelapseStatus.QUEUED.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # ANALYSE: the uploaded file (relative to the media root) and print seconds per video second.
    source_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    speed: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Handed to the queue (by one process's poller), and the running worker's last sign of life.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Retention: when the kept frames, and the videos, were removed.
    frames_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    videos_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
