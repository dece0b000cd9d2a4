"""What watching a print leaves behind: a record per scored frame, and alerts."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from layerfleet.database import Base, UTCDateTime, iso_z, utcnow


class PredictionFrame(Base):
    """One scored webcam frame of a print, with the detector's state after it."""

    __tablename__ = "prediction_frames"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    print_id: Mapped[int] = mapped_column(ForeignKey("prints.id", ondelete="CASCADE"), index=True)
    frame_number: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    p: Mapped[float] = mapped_column(Float)  # the decision rules' input (`detection.evidence`)
    score: Mapped[float] = mapped_column(Float, default=0.0)  # the image head's failure probability
    ewm_mean: Mapped[float] = mapped_column(Float)
    rolling_mean_short: Mapped[float] = mapped_column(Float)
    rolling_mean_long: Mapped[float] = mapped_column(Float)
    normalized_p: Mapped[float] = mapped_column(Float)
    # [[xc, yc, w, h, confidence], …] in the frame's pixels; masked boxes are not in here.
    boxes: Mapped[list[list[float]]] = mapped_column(JSON, default=list)
    ignored_boxes: Mapped[int] = mapped_column(Integer, default=0)
    # Both None once retention removed the pictures (``watching.retention``); the row stays.
    image_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    tagged_image_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # The heaters as the agent last reported them when the frame was scored:
    # {"tool0": [actual, target], "bed": [actual, target]} — a print's temperature history.
    temperatures: Mapped[dict[str, list[float | None]] | None] = mapped_column(JSON, nullable=True)
    # The quality-defect output: None when the model has none; boxes as ``boxes``, not masked.
    defect_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    defect_boxes: Mapped[list[list[float]] | None] = mapped_column(JSON, nullable=True)
    # The camera it came from, as its agent names it; None for the printer's primary camera.
    camera: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AlertKind(enum.StrEnum):
    WARNING = "WARNING"  # looks like it may be failing
    FAILURE = "FAILURE"  # failing: paused when the printer's action on failure says so
    QUALITY = "QUALITY"  # a print-quality defect (warping, stringing, …): a warning, never a pause


class Alert(Base):
    """A failure alert: a domain event for notifications to deliver."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    printer_id: Mapped[int] = mapped_column(ForeignKey("printers.id", ondelete="CASCADE"), index=True)
    print_id: Mapped[int] = mapped_column(ForeignKey("prints.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    normalized_p: Mapped[float] = mapped_column(Float)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    frame_id: Mapped[int | None] = mapped_column(ForeignKey("prediction_frames.id", ondelete="SET NULL"),
                                                 nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def prediction_record(frame: PredictionFrame) -> dict[str, object]:
    """One frame of `GET /prints/{id}/prediction_json`."""
    return {
        "frame_number": frame.frame_number,
        "time": iso_z(frame.taken_at),
        "p": round(frame.p, 4),
        "score": round(frame.score, 4),
        "ewm_mean": round(frame.ewm_mean, 4),
        "rolling_mean_short": round(frame.rolling_mean_short, 4),
        "rolling_mean_long": round(frame.rolling_mean_long, 4),
        "normalized_p": round(frame.normalized_p, 4),
        "detections": [["failure", box[4], box[:4]] for box in frame.boxes],
        "ignored_detections": frame.ignored_boxes,
        "defect_score": None if frame.defect_score is None else round(frame.defect_score, 4),
        "defect_detections": [["defect", box[4], box[:4]] for box in frame.defect_boxes or []],
        "camera": frame.camera,
        "primary_camera": frame.camera is None,
    }
