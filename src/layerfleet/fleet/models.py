from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from layerfleet.accounts.models import User, new_uuid
from layerfleet.database import Base, UTCDateTime, utcnow

if TYPE_CHECKING:
    from layerfleet.prints.models import Print


def _state(status: dict[str, Any] | None) -> dict[str, Any]:
    state = (status or {}).get("state")
    return state if isinstance(state, dict) else {}


def status_flags(status: dict[str, Any] | None) -> dict[str, Any]:
    """The ``state.flags`` of an agent's status (OctoPrint's shape), {} when absent or malformed."""
    flags = _state(status).get("flags")
    return flags if isinstance(flags, dict) else {}


def status_text(status: dict[str, Any] | None) -> str:
    return str(_state(status).get("text") or "")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class JobProgress:
    """How far the agent says its print is (OctoPrint's ``job`` and ``progress``)."""

    file: str | None
    completion: float | None  # percent, 0–100
    seconds_left: int | None
    seconds_printing: int | None


def job_progress(status: dict[str, Any] | None) -> JobProgress:
    status = status or {}
    job = status.get("job")
    file = job.get("file") if isinstance(job, dict) else None
    name = (file.get("display") or file.get("name")) if isinstance(file, dict) else None
    progress = status.get("progress")
    if not isinstance(progress, dict):
        progress = {}
    completion = _number(progress.get("completion"))
    left = _number(progress.get("printTimeLeft"))
    printing = _number(progress.get("printTime"))
    return JobProgress(
        file=str(name) if name else None,
        completion=min(100.0, max(0.0, completion)) if completion is not None else None,
        seconds_left=max(0, int(left)) if left is not None else None,
        seconds_printing=max(0, int(printing)) if printing is not None else None,
    )


class FleetState(enum.StrEnum):
    """The states an operator sorts a farm by: every page names a printer's state with these."""

    PRINTING = "Printing"
    # Printing, but the print has not begun: the heaters are still coming up to temperature.
    HEATING = "Heating"
    PAUSED = "Paused"
    IDLE = "Idle"
    OFFLINE = "Offline"
    ERROR = "Error"


# A heater this far below its target is still warming up; closer, it is only regulating.
HEATING_MARGIN_CELSIUS = 10.0


def still_heating(status: dict[str, Any] | None) -> bool:
    """The print has made no progress yet and a heater is well below its target: a printer that
    reports "printing" at 0 % is warming up, and saying "Printing · 0 %" would mislead."""
    completion = job_progress(status).completion
    if completion is not None and completion > 0:
        return False
    heaters = (status or {}).get("temperatures")
    if not isinstance(heaters, dict):
        return False
    for reading in heaters.values():
        if not isinstance(reading, dict):
            continue
        actual, target = _number(reading.get("actual")), _number(reading.get("target"))
        if actual is not None and target is not None and target > 0 and target - actual > HEATING_MARGIN_CELSIUS:
            return True
    return False


def fleet_state(status: dict[str, Any] | None) -> FleetState:
    if status is None:
        return FleetState.OFFLINE
    flags = status_flags(status)
    if flags.get("error") or (flags.get("closedOrError") and not flags.get("operational")):
        return FleetState.ERROR
    if flags.get("paused") or flags.get("pausing"):
        return FleetState.PAUSED
    if flags.get("printing") and still_heating(status):
        return FleetState.HEATING
    if flags.get("printing") or flags.get("resuming") or flags.get("cancelling") or flags.get("finishing"):
        return FleetState.PRINTING
    if flags.get("operational") or flags.get("ready"):
        return FleetState.IDLE
    # Agent online but its printer is not connected (OctoPrint "Offline", Klipper shut down).
    return FleetState.OFFLINE


class PausedBy(enum.StrEnum):
    DETECTOR = "detector"
    PERSON = "person"


# Who paused a print, as the pages say it ("Paused by …").
PAUSER_WORDS = {PausedBy.DETECTOR: "the failure detector", PausedBy.PERSON: "a person"}


def paused_by(printer: Printer | None, print_: Print | None) -> PausedBy | None:
    """Who paused ``print_``, None when it is not paused right now: only the print its printer
    is on can be, and only while the printer reports itself paused."""
    if printer is None or print_ is None or print_.ended or printer.current_print_id != print_.id:
        return None
    if fleet_state(printer.status) is not FleetState.PAUSED:
        return None
    return PausedBy.DETECTOR if print_.detector_pause_stands else PausedBy.PERSON


class ActionOnFailure(enum.StrEnum):
    PAUSE = "PAUSE"
    NONE = "NONE"


DEFAULT_RETRACT_ON_PAUSE = 6.5
DEFAULT_LIFT_Z_ON_PAUSE = 2.5


def default_printer_settings() -> dict[str, Any]:
    return {
        "webcam_flipV": False,
        "webcam_flipH": False,
        "webcam_streamRatio": "4:3",
        "webcam_rotation": 0,
        "agent_name": None,
        "agent_version": None,
        "temp_profiles": [],
    }


class Printer(Base):
    __tablename__ = "printers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uuid)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    # The member who linked the printer; detection hours are drawn from this account.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    auth_token: Mapped[str] = mapped_column(String(64), unique=True)

    action_on_failure: Mapped[str] = mapped_column(String(8), default=ActionOnFailure.PAUSE.value)
    watching_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    tools_off_on_pause: Mapped[bool] = mapped_column(Boolean, default=True)
    bed_off_on_pause: Mapped[bool] = mapped_column(Boolean, default=False)
    retract_on_pause: Mapped[float] = mapped_column(Float, default=DEFAULT_RETRACT_ON_PAUSE)
    lift_z_on_pause: Mapped[float] = mapped_column(Float, default=DEFAULT_LIFT_Z_ON_PAUSE)
    detective_sensitivity: Mapped[float] = mapped_column(Float, default=1.0)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, nullable=True)

    # What the farm knows about the machine (the Eiger dialect's device fields).
    device_type: Mapped[str] = mapped_column(String(32), default="Unknown")
    device_series: Mapped[str] = mapped_column(String(32), default="Unknown")
    loaded_primary_material: Mapped[str | None] = mapped_column(String(64), nullable=True)
    loaded_secondary_material: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ccs_primary_remaining: Mapped[float | None] = mapped_column(Float, nullable=True)
    ccs_secondary_remaining: Mapped[float | None] = mapped_column(Float, nullable=True)

    # Written by the agent gateway from what the printer's agent reports.
    status: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The last-heard time of the silence PrinterOffline was raised for (`agents.liveness`).
    offline_alert_heard_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=default_printer_settings)
    pic_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    pic_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    normalized_p: Mapped[float] = mapped_column(Float, default=0.0)
    # Rectangles [x0, y0, x1, y1] in 0–1 image coordinates where detections are ignored.
    ignore_masks: Mapped[list[list[float]]] = mapped_column(JSON, default=list)
    # The camera's baseline: the long rolling mean of p over the printer's life (never reset).
    detection_long_mean: Mapped[float] = mapped_column(Float, default=0.0)
    detection_lifetime_frames: Mapped[int] = mapped_column(Integer, default=0)
    last_scored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    current_print_id: Mapped[int | None] = mapped_column(
        ForeignKey("prints.id", ondelete="SET NULL", use_alter=True), nullable=True
    )

    owner: Mapped[User] = relationship(lazy="joined")
    current_print: Mapped[Print | None] = relationship(
        foreign_keys=[current_print_id], post_update=True, lazy="selectin"
    )

    @property
    def state_flags(self) -> dict[str, Any]:
        return status_flags(self.status)

    @property
    def state_text(self) -> str:
        """The agent's words for the state ("Printing", "Operational", …); "" when offline."""
        return status_text(self.status)


class PrinterCamera(Base):
    """A camera of a printer other than its primary one, as its agent names it: its latest
    picture, its own scoring claim and its own ignore masks. The primary camera's are the
    printer's own columns (``pic_path``, ``last_scored_at``, ``ignore_masks``)."""

    __tablename__ = "printer_cameras"
    __table_args__ = (UniqueConstraint("printer_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    printer_id: Mapped[int] = mapped_column(ForeignKey("printers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    # A nozzle camera is shown, never scored (see docs/model.md, "From frames to decisions").
    nozzle: Mapped[bool] = mapped_column(Boolean, default=False)
    pic_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    pic_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_scored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ignore_masks: Mapped[list[list[float]]] = mapped_column(JSON, default=list)


class EventClass(enum.StrEnum):
    INFO = "INFO"
    SUCCESS = "SUCCESS"
    WARNING = "WARNING"
    ERROR = "ERROR"


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
