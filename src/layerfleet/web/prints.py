"""The Prints pages: the organization's print history, and one print with its timeline, the
detector's graph, the user's verdict and the feedback frames to answer.

Reading is server-rendered; answers go through the Obico v1 print API from ``prints.js``, so
the role checks and validation are the API's own.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from layerfleet.accounts.models import Role, User
from layerfleet.api.deps import Db, services_of
from layerfleet.database import utcnow
from layerfleet.detection import service as detection
from layerfleet.detection.decisions import gauge_zone
from layerfleet.detection.models import Alert, AlertKind, PredictionFrame
from layerfleet.fleet import service as fleet
from layerfleet.fleet.models import PAUSER_WORDS, Printer, paused_by
from layerfleet.media import media_url
from layerfleet.prints import service as prints
from layerfleet.prints.models import AlertOverwrite, FeedbackAnswer, Print
from layerfleet.prints.rules import PrintFilter, PrintSorting
from layerfleet.timelapses import service as timelapses
from layerfleet.timelapses.models import TimelapseJob, TimelapsePurpose, TimelapseStatus
from layerfleet.web.pages import duration_text, page_user, render, to_sign_in

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Enough points for a 600-unit-wide chart; a day-long print has thousands of frames.
MAX_CHART_POINTS = 720
LARGEST_ID = 2**31 - 1


@dataclass(frozen=True)
class Choice:
    value: str  # the `filter` query value, "" for all prints
    label: str
    empty: str  # what an empty page says


CHOICES = [
    Choice("", "All", "No prints yet. A print appears here when one of your printers starts printing."),
    Choice(PrintFilter.CANCELLED.value, "Cancelled", "No cancelled prints."),
    Choice(PrintFilter.FINISHED.value, "Finished", "No finished prints yet."),
    Choice(PrintFilter.NEED_ALERT_OVERWRITE.value, "Needs your verdict",
           "Every print has your verdict. Nothing to do here."),
    Choice(PrintFilter.NEED_PRINT_SHOT_FEEDBACK.value, "Needs feedback",
           "No print is waiting for feedback on its frames."),
]
CHOICE_BY_VALUE = {choice.value: choice for choice in CHOICES}


@dataclass(frozen=True)
class Moment:
    """A point in time as the page shows it: UTC text, which the browser turns into local time."""

    iso: str
    text: str


def moment(at: datetime) -> Moment:
    return Moment(at.isoformat(), at.strftime("%Y-%m-%d %H:%M UTC"))


def ended_at(print_: Print) -> datetime | None:
    return print_.finished_at or print_.cancelled_at


def outcome(print_: Print, printer: Printer | None) -> str:
    """How the print stands: finished, cancelled, paused (its printer says so) or printing."""
    if print_.finished_at is not None:
        return "finished"
    if print_.cancelled_at is not None:
        return "cancelled"
    if paused_by(printer, print_) is not None:
        return "paused"
    return "printing"


def pauser_text(print_: Print, printer: Printer | None) -> str:
    """Who paused the print ("the failure detector"), "" when it is not paused."""
    cause = paused_by(printer, print_)
    return PAUSER_WORDS[cause] if cause is not None else ""


OUTCOME_TEXT = {"finished": "Finished", "cancelled": "Cancelled", "paused": "Paused", "printing": "Printing…"}


def elapsed(print_: Print) -> str:
    end = ended_at(print_)
    if end is None:
        return f"{duration_text((utcnow() - print_.started_at).total_seconds())} so far"
    return duration_text((end - print_.started_at).total_seconds())


def detector_note(print_: Print) -> str:
    if print_.paused_at is not None:
        return "Paused"
    if print_.alerted_at is not None:
        return "Alerted"
    return ""


def pending_feedback(print_: Print) -> int:
    return sum(1 for feedback in print_.feedbacks if feedback.answered_at is None)


VERDICT_TEXT = {AlertOverwrite.FAILED.value: "Failed", AlertOverwrite.NOT_FAILED.value: "Not failed"}
ANSWER_TEXT = {FeedbackAnswer.LOOKS_BAD.value: "Looks bad", FeedbackAnswer.LOOKS_OK.value: "Looks OK"}


# ---------------------------------------------------------------- the history


@dataclass(frozen=True)
class PrintRow:
    id: int
    filename: str
    printer_id: int | None
    printer: str  # its name, "" once it is deleted
    started: Moment
    duration: str
    outcome: str  # finished, cancelled, paused or printing
    paused_by: str  # who paused it ("a person"), while it is paused
    detector: str
    feedback_pending: int
    poster_url: str | None = None

    @property
    def outcome_text(self) -> str:
        return OUTCOME_TEXT[self.outcome]


def size_text(size: int) -> str:
    """Bytes as people read them: "840 KB", "12.5 MB", "3.2 GB"."""
    if size < 1024**2:
        return f"{max(1, round(size / 1024)) if size else 0} KB"
    if size < 1024**3:
        return f"{size / 1024**2:.1f} MB"
    return f"{size / 1024**3:.1f} GB"


def _number(text: str, low: int, high: int) -> int | None:
    """Plain ASCII digits in [low, high], else None (int() would take "²" or ten thousand digits
    only to fail)."""
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(high))):
        return None
    value = int(text)
    return value if low <= value <= high else None


def _whole_number(value: str | None, default: int, low: int, high: int) -> int | None:
    """The query value as a number in [low, high], the default when absent, None when invalid."""
    return default if value is None or value == "" else _number(value, low, high)


def _page_link(choice: Choice, start: int, limit: int) -> str:
    query = [f"filter={choice.value}"] if choice.value else []
    if start:
        query.append(f"start={start}")
    if limit != PAGE_SIZE:
        query.append(f"limit={limit}")
    return "/prints/" + ("?" + "&".join(query) if query else "")


@router.get("/prints/", response_class=HTMLResponse)
async def print_history(
    request: Request, db: Db, filter: str | None = None, start: str | None = None, limit: str | None = None,
) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    choice = CHOICE_BY_VALUE.get(filter or "")
    first = _whole_number(start, 0, 0, LARGEST_ID)
    size = _whole_number(limit, PAGE_SIZE, 1, MAX_PAGE_SIZE)
    problems = []
    if choice is None:
        known = ", ".join(c.value for c in CHOICES if c.value)
        problems.append(f"There is no filter called “{(filter or '')[:80]}”. "
                        f"Pick one above; the known ones are {known}.")
    if first is None:
        problems.append("The page position (start) must be a whole number, 0 or more.")
    if size is None:
        problems.append(f"The page size (limit) must be a whole number from 1 to {MAX_PAGE_SIZE}.")
    context: dict[str, Any] = {"active": "prints", "choices": CHOICES, "choice": choice, "problems": problems,
                               "rows": [], "newer": None, "older": None,
                               "may_upload": user.role_enum.allows(Role.OPERATOR),
                               "upload_printers": [(p.id, p.name) for p in await fleet.list_printers(
                                   db, user.organization_id)]}
    if choice is None or first is None or size is None:
        return render(request, "prints.html", user, context, status_code=400)

    print_filter = PrintFilter(choice.value) if choice.value else None
    # One more than a page tells whether an older page exists without counting them all.
    found = await prints.list_prints(db, user.organization_id, print_filter=print_filter,
                                     sorting=PrintSorting.DATE_DESC, start=first, limit=size + 1)
    names = await fleet.printer_names(db, user.organization_id, {p.printer_id for p in found if p.printer_id})
    # Only a print still running may be paused, and only its printer's status tells.
    running = {p.printer_id for p in found[:size] if not p.ended and p.printer_id is not None}
    printers = {printer.id: printer for printer in await fleet.list_printers(db, user.organization_id, ids=running)} \
        if running else {}
    rows = [
        PrintRow(id=p.id, filename=p.filename or "(no file name)", printer_id=p.printer_id,
                 printer=names.get(p.printer_id or 0, ""),
                 started=moment(p.started_at), duration=elapsed(p),
                 outcome=outcome(p, printers.get(p.printer_id or 0)),
                 paused_by=pauser_text(p, printers.get(p.printer_id or 0)),
                 detector=detector_note(p), feedback_pending=pending_feedback(p),
                 poster_url=media_url("", p.poster_path))
        for p in found[:size]
    ]
    if user.role_enum.allows(Role.ADMIN):
        used = await timelapses.organization_media_bytes(services_of(request).settings.data_dir,
                                                         user.organization_id)
        context["media_used"] = size_text(used)
    context.update(
        rows=rows,
        first_number=first + 1,
        last_number=first + len(rows),
        newer=_page_link(choice, max(0, first - size), size) if first else None,
        older=_page_link(choice, first + size, size) if len(found) > size else None,
    )
    return render(request, "prints.html", user, context)


# ---------------------------------------------------------------- one print


@dataclass(frozen=True)
class Event:
    at: Moment
    title: str
    detail: str = ""
    tone: str = ""  # "ok", "warn" or "bad": how the marker is drawn
    video_at: float | None = None  # where the timelapse shows this moment (seconds)


@dataclass(frozen=True)
class FeedbackFrame:
    id: int
    number: int
    image_url: str | None
    answer: str  # a FeedbackAnswer value
    answer_text: str
    video_at: float | None = None


def _percent(normalized_p: float) -> str:
    return f"{round(normalized_p * 100)} %"


Seek = Callable[[datetime], float | None]


def timeline(print_: Print, alerts: list[Alert], seek: Seek | None = None) -> list[Event]:
    """What happened to the print, in order; ``seek`` tells where the timelapse shows a moment."""
    events: list[tuple[datetime, Event]] = []

    def add(at: datetime | None, title: str, detail: str = "", tone: str = "") -> None:
        if at is not None:
            events.append((at, Event(moment(at), title, detail, tone, seek(at) if seek else None)))

    add(print_.started_at, "Started")

    for alert in alerts:
        if alert.kind == AlertKind.QUALITY.value:
            score = (alert.details or {}).get("defect_score")
            likelihood = f"Defect likelihood {_percent(score)}; " if isinstance(score, int | float) else ""
            add(alert.created_at, "Quality defect seen", likelihood + "the print went on", "warn")
            continue
        failure = alert.kind == AlertKind.FAILURE.value
        title = "Failure detected" if failure else "Possible failure detected"
        detail = f"Failure likelihood {_percent(alert.normalized_p)}"
        if alert.paused:
            detail += "; the print was paused"
        add(alert.created_at, title, detail, "bad" if failure else "warn")
    # The print keeps only the last alert and pause; they are events of their own only when
    # no alert row tells them (prints from before alerts were recorded).
    if not alerts:
        add(print_.alerted_at, "Failure detected", tone="bad")
    if not any(alert.paused for alert in alerts):
        add(print_.paused_at, "Paused by the failure detector", tone="bad")
    add(print_.alert_acknowledged_at, "Alert answered")
    add(print_.alert_muted_at, "Alerts muted for the rest of the print", tone="warn")
    add(print_.finished_at, "Finished", tone="ok")
    add(print_.cancelled_at, "Cancelled", tone="bad")
    add(print_.uploaded_at, "Time-lapse uploaded")
    events.sort(key=lambda pair: pair[0])
    return [event for _, event in events]


def _thinned(frames: list[PredictionFrame]) -> list[PredictionFrame]:
    """At most MAX_CHART_POINTS frames, keeping the highest of each stretch so that no peak
    the detector saw disappears from the graph."""
    if len(frames) <= MAX_CHART_POINTS:
        return frames
    stretch = -(-len(frames) // MAX_CHART_POINTS)
    return [max(frames[i:i + stretch], key=lambda f: f.normalized_p) for i in range(0, len(frames), stretch)]


def chart_data(print_: Print, frames: list[PredictionFrame]) -> dict[str, Any]:
    """The graphs' points: seconds since the print started, and a value."""
    shown = _thinned(frames)

    def seconds(frame: PredictionFrame) -> float:
        return round((frame.taken_at - print_.started_at).total_seconds(), 1)

    heaters: dict[str, list[list[float | None]]] = {}
    for frame in shown:
        for heater, pair in (frame.temperatures or {}).items():
            heaters.setdefault(heater, []).append([seconds(frame), pair[0] if pair else None])
    return {
        "likelihood": [[seconds(f), round(f.normalized_p, 4)] for f in shown],
        "temperatures": heaters,
    }


def chart_summary(print_: Print, frames: list[PredictionFrame]) -> str:
    """The graph in words, for those who cannot see it."""
    if not frames:
        return "The failure detector scored no frames of this print."
    peak = max(frames, key=lambda f: f.normalized_p)
    into = duration_text((peak.taken_at - print_.started_at).total_seconds())
    counted = "1 frame" if len(frames) == 1 else f"{len(frames)} frames"
    return (f"The failure detector scored {counted}. The highest failure likelihood was "
            f"{_percent(peak.normalized_p)} ({gauge_zone(peak.normalized_p)} zone), {into} into the print; "
            f"the last was {_percent(frames[-1].normalized_p)}.")


@dataclass(frozen=True)
class VideoView:
    """The print's timelapse as its page shows it."""

    url: str | None
    tagged_url: str | None
    poster_url: str | None
    note: str  # why there is no video (yet), or ""


VIDEO_NOTES = {
    TimelapseStatus.QUEUED.value: "The timelapse is waiting to be compiled.",
    TimelapseStatus.IN_PROGRESS.value: "The timelapse is being compiled; reload the page in a moment.",
    TimelapseStatus.SKIPPED.value: "No timelapse: {error}",
    TimelapseStatus.ERROR.value: "The timelapse could not be made: {error}",
}


def video_view(print_: Print, job: TimelapseJob | None) -> VideoView:
    if print_.video_path is not None:
        note = ""
    elif job is not None and job.purpose == TimelapsePurpose.ANALYSE.value and job.status in (
            TimelapseStatus.QUEUED.value, TimelapseStatus.IN_PROGRESS.value):
        note = "The failure detector is checking this timelapse; reload the page in a moment."
    elif job is not None:
        note = VIDEO_NOTES.get(job.status, "").format(error=job.error or "")
    elif print_.ended:
        note = "This print has no timelapse."
    else:
        note = "The timelapse is compiled when the print ends."
    return VideoView(media_url("", print_.video_path), media_url("", print_.tagged_video_path),
                     media_url("", print_.poster_path), note)


def video_seek(frame_times: list[float], fps: int) -> Seek:
    """Where (seconds) the video shows a moment: the last frame taken at or before it."""
    def seek(at: datetime) -> float | None:
        if not frame_times:
            return None
        moment_s = at.timestamp()
        if not frame_times[0] - 60 <= moment_s <= frame_times[-1] + 60:
            return None
        index = max(0, bisect.bisect_right(frame_times, moment_s + 0.001) - 1)
        return round(index / fps, 3)

    return seek


def _not_found(request: Request, user: User) -> Response:
    return render(request, "print.html", user, {"active": "prints", "p": None}, status_code=404)


@router.get("/prints/{print_id}/", response_class=HTMLResponse)
async def print_page(request: Request, db: Db, print_id: str) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    number = _number(print_id, 1, LARGEST_ID)
    # Another organization's print answers exactly like a missing one.
    print_ = await prints.get_print(db, user.organization_id, number) if number is not None else None
    if print_ is None:
        return _not_found(request, user)

    printer = await fleet.get_printer(db, user.organization_id, print_.printer_id) \
        if print_.printer_id is not None else None
    alerts = await detection.alerts_of_print(db, print_.id)
    frames = await detection.frames_of_print(db, print_.id)
    settings = services_of(request).settings
    seek = video_seek(await asyncio.to_thread(timelapses.read_frame_times, settings.data_dir, print_),
                      settings.timelapse_fps)
    taken = {path: f.taken_at for f in frames for path in (f.image_path, f.tagged_image_path) if path}
    feedbacks = [
        FeedbackFrame(id=f.id, number=n, image_url=media_url("", f.image_path), answer=f.answer,
                      answer_text=ANSWER_TEXT.get(f.answer, "Not answered yet"),
                      video_at=seek(taken[f.image_path]) if f.image_path in taken else None)
        for n, f in enumerate(print_.feedbacks, start=1)
    ]
    end = ended_at(print_)
    standing = outcome(print_, printer)
    return render(request, "print.html", user, {
        "active": "prints",
        "p": print_,
        "printer_name": printer.name if printer is not None else "",
        "outcome": standing,
        "outcome_text": OUTCOME_TEXT[standing],
        "paused_by": pauser_text(print_, printer),
        "started": moment(print_.started_at),
        "ended": moment(end) if end is not None else None,
        "duration": elapsed(print_),
        "alerted": moment(print_.alerted_at) if print_.alerted_at else None,
        "paused": moment(print_.paused_at) if print_.paused_at else None,
        "verdict": print_.alert_overwrite,
        "verdict_text": VERDICT_TEXT.get(print_.alert_overwrite or "", "Not given yet"),
        "events": timeline(print_, alerts, seek),
        "video": video_view(print_, await timelapses.latest_job(db, print_.id)),
        "chart": chart_data(print_, frames),
        "chart_summary": chart_summary(print_, frames),
        "feedbacks": feedbacks,
        "feedback_pending": pending_feedback(print_),
        "may_change": user.role_enum.allows(Role.OPERATOR),
    })
