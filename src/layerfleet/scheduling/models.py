"""Farm jobs: a build to be printed (backlogged, queued on a printer, or printing), and the
parts it printed. A job that runs becomes a Print of the prints domain (the agent's own
record of the print); the job links to it, so both dialects see one print."""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import Date, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from layerfleet.accounts.models import new_uuid
from layerfleet.database import Base, UTCDateTime, utcnow
from layerfleet.library.models import Build, BuildItem


class JobState(enum.StrEnum):
    """The Eiger spec's PrintJobStateEnum."""

    BACKLOGGED = "Backlogged"
    PRINTING = "Printing"
    PAUSED = "Paused"
    COMPLETED = "Completed"
    CANCELED = "Canceled"
    FAILED = "Failed"
    UNKNOWN = "Unknown"

    @property
    def ended(self) -> bool:
        return self in (JobState.COMPLETED, JobState.CANCELED, JobState.FAILED)


class JobOrigin(enum.StrEnum):
    DIRECT = "direct"  # POST /devices/{id}: print now
    QUEUE = "queue"  # started from a printer's queue
    BACKLOG = "backlog"  # POST /backlog/{build}
    JOB_REQUEST = "job_request"  # POST /job-requests/{build}


class QueueState(enum.StrEnum):
    """The Eiger spec's QueuedPrintJobStateEnum."""

    QUEUED = "Queued"
    REMOVED = "Removed"
    STARTED = "Started"


class PrintedPartState(enum.StrEnum):
    """The states of the spec's PrintedPartViewStateEnum that a filament farm reaches."""

    PRINTING = "Printing"
    PRINTED = "Printed"
    PRINT_FAILED = "Print Failed"
    DISCARDED = "Discarded"


class PrintJob(Base):
    __tablename__ = "print_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="RESTRICT"), index=True)
    printer_id: Mapped[int | None] = mapped_column(ForeignKey("printers.id", ondelete="SET NULL"), nullable=True,
                                                   index=True)
    print_id: Mapped[int | None] = mapped_column(ForeignKey("prints.id", ondelete="SET NULL"), nullable=True,
                                                 unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    origin: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    due_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    # The name the G-code was sent to the printer under: how the agent's print is recognised.
    remote_filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    dispatch_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)

    build: Mapped[Build] = relationship(lazy="joined")
    printed_parts: Mapped[list[PrintedPart]] = relationship(
        back_populates="print_job", order_by="PrintedPart.id", lazy="selectin", passive_deletes=True,
    )


class QueuedJob(Base):
    """A build waiting in one printer's queue; ``position`` orders the queue."""

    __tablename__ = "queued_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[int] = mapped_column(ForeignKey("printers.id", ondelete="CASCADE"), index=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="RESTRICT"), index=True)
    print_job_id: Mapped[int | None] = mapped_column(ForeignKey("print_jobs.id", ondelete="SET NULL"),
                                                     nullable=True)
    position: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=QueueState.QUEUED.value, index=True)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    build: Mapped[Build] = relationship(lazy="joined")


class PrintedPart(Base):
    """One part instance (a build item) of a job that ran; its report is the inspection report."""

    __tablename__ = "printed_parts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    print_job_id: Mapped[int] = mapped_column(ForeignKey("print_jobs.id", ondelete="CASCADE"), index=True)
    build_item_id: Mapped[int | None] = mapped_column(ForeignKey("build_items.id", ondelete="SET NULL"),
                                                      nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    notes: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    printed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, index=True)
    report_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    report_generated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    print_job: Mapped[PrintJob] = relationship(back_populates="printed_parts", lazy="joined")
    build_item: Mapped[BuildItem | None] = relationship(lazy="joined")
