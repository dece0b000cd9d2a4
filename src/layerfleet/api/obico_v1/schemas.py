"""The Obico v1 objects (seed 001) and their translation from the domain model."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from layerfleet.accounts.models import User
from layerfleet.fleet.models import ActionOnFailure, Printer, default_printer_settings
from layerfleet.fleet.watch_reasons import not_watching_reason
from layerfleet.media import media_url
from layerfleet.prints.models import AlertOverwrite, FeedbackAnswer, Print, PrintShotFeedback


class Pic(BaseModel):
    img_url: str


class PrinterSettings(BaseModel):
    model_config = ConfigDict(extra="allow")

    webcam_flipV: bool = False
    webcam_flipH: bool = False
    webcam_streamRatio: str = "4:3"
    webcam_rotation: int = 0
    agent_name: str | None = None
    agent_version: str | None = None
    temp_profiles: list[dict[str, Any]] = []


class PrintShotFeedbackOut(BaseModel):
    id: int
    print_id: int
    image_url: str | None
    answer: FeedbackAnswer
    answered_at: datetime | None


class PrintOut(BaseModel):
    id: int
    printer: int | None = Field(description="null for an uploaded timelapse that names no printer")
    filename: str
    started_at: datetime
    finished_at: datetime | None
    cancelled_at: datetime | None
    uploaded_at: datetime | None
    alerted_at: datetime | None
    alert_acknowledged_at: datetime | None
    alert_muted_at: datetime | None
    paused_at: datetime | None
    video_url: str | None
    tagged_video_url: str | None
    poster_url: str | None
    prediction_json_url: str | None
    alert_overwrite: AlertOverwrite | None
    printshotfeedback_set: list[PrintShotFeedbackOut]


class PrinterOut(BaseModel):
    id: int
    name: str
    created_at: datetime
    action_on_failure: ActionOnFailure
    watching_enabled: bool
    not_watching_reason: str | None
    tools_off_on_pause: bool
    bed_off_on_pause: bool
    retract_on_pause: float
    lift_z_on_pause: float
    detective_sensitivity: float
    pic: Pic | None
    status: dict[str, Any] | None
    settings: PrinterSettings
    current_print: PrintOut | None
    normalized_p: float
    auth_token: str | None = Field(
        description="The agent's credential: shown to admins only (null for other roles); "
        "POST /api/v1/printers/{id}/rotate_token/ replaces it")
    archived_at: datetime | None
    ignore_masks: list[list[float]] = Field(
        description="Layerfleet extension: rectangles [x0, y0, x1, y1] (0–1) where detections are ignored")


class CommandResult(BaseModel):
    succeeded: bool
    printer: PrinterOut


class UserOut(BaseModel):
    id: int
    email: str
    name: str | None
    role: str
    consented_at: datetime
    dh_balance: float
    organization: str


def feedback_out(feedback: PrintShotFeedback, base_url: str) -> PrintShotFeedbackOut:
    return PrintShotFeedbackOut(
        id=feedback.id,
        print_id=feedback.print_id,
        image_url=media_url(base_url, feedback.image_path),
        answer=FeedbackAnswer(feedback.answer),
        answered_at=feedback.answered_at,
    )


def print_out(print_: Print, base_url: str) -> PrintOut:
    return PrintOut(
        id=print_.id,
        printer=print_.printer_id,
        filename=print_.filename,
        started_at=print_.started_at,
        finished_at=print_.finished_at,
        cancelled_at=print_.cancelled_at,
        uploaded_at=print_.uploaded_at,
        alerted_at=print_.alerted_at,
        alert_acknowledged_at=print_.alert_acknowledged_at,
        alert_muted_at=print_.alert_muted_at,
        paused_at=print_.paused_at,
        video_url=media_url(base_url, print_.video_path),
        tagged_video_url=media_url(base_url, print_.tagged_video_path),
        poster_url=media_url(base_url, print_.poster_path),
        prediction_json_url=media_url(base_url, print_.prediction_json_path),
        alert_overwrite=AlertOverwrite(print_.alert_overwrite) if print_.alert_overwrite else None,
        printshotfeedback_set=[feedback_out(f, base_url) for f in print_.feedbacks],
    )


def printer_out(printer: Printer, base_url: str, *, with_token: bool) -> PrinterOut:
    """``with_token``: whether the reader may see the agent's credential (admins, and the agent
    that just linked)."""
    pic_url = media_url(base_url, printer.pic_path)
    return PrinterOut(
        id=printer.id,
        name=printer.name,
        created_at=printer.created_at,
        action_on_failure=ActionOnFailure(printer.action_on_failure),
        watching_enabled=printer.watching_enabled,
        not_watching_reason=not_watching_reason(printer),
        tools_off_on_pause=printer.tools_off_on_pause,
        bed_off_on_pause=printer.bed_off_on_pause,
        retract_on_pause=printer.retract_on_pause,
        lift_z_on_pause=printer.lift_z_on_pause,
        detective_sensitivity=printer.detective_sensitivity,
        pic=Pic(img_url=pic_url) if pic_url else None,
        status=printer.status,
        settings=PrinterSettings(**{**default_printer_settings(), **(printer.settings or {})}),
        current_print=print_out(printer.current_print, base_url) if printer.current_print else None,
        normalized_p=printer.normalized_p,
        auth_token=printer.auth_token if with_token else None,
        archived_at=printer.archived_at,
        ignore_masks=printer.ignore_masks or [],
    )


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        role=user.role,
        consented_at=user.consented_at,
        dh_balance=user.dh_balance,
        organization=user.organization.name,
    )
