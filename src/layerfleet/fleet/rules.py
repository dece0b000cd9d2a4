"""Rules for the settings a user may change on a printer, shared by every API dialect."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from layerfleet.fleet.models import ActionOnFailure

SENSITIVITY_MIN = 0.8
SENSITIVITY_MAX = 1.2
MAX_PAUSE_DISTANCE_MM = 100.0
NAME_MAX_LENGTH = 256
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

PauseDistance = Annotated[float, Field(ge=0.0, le=MAX_PAUSE_DISTANCE_MM, allow_inf_nan=False)]
MAX_IGNORE_MASKS = 32
ImageFraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False, strict=True)]
# [x0, y0, x1, y1]: left, top, right, bottom as fractions of the picture's width and height.
IgnoreMask = Annotated[list[ImageFraction], Field(min_length=4, max_length=4)]


class PrinterChanges(BaseModel):
    """A partial update of a printer. Only fields that were given are applied; read-only
    and unknown fields are ignored, as a partial update of the Obico API expects."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH)] = ""
    action_on_failure: ActionOnFailure = ActionOnFailure.PAUSE
    watching_enabled: StrictBool = True
    tools_off_on_pause: StrictBool = True
    bed_off_on_pause: StrictBool = False
    retract_on_pause: PauseDistance = 0.0
    lift_z_on_pause: PauseDistance = 0.0
    detective_sensitivity: Annotated[
        float, Field(ge=SENSITIVITY_MIN, le=SENSITIVITY_MAX, allow_inf_nan=False)
    ] = 1.0
    archived_at: datetime | None = None
    ignore_masks: Annotated[list[IgnoreMask], Field(max_length=MAX_IGNORE_MASKS)] = Field(
        default_factory=list,
        description="Rectangles [x0, y0, x1, y1] in 0–1 picture coordinates (left, top, right, bottom) where "
        "the failure detector's findings are ignored (bed logos, enclosure walls, cables); any two opposite corners.",
    )

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("This field may not be blank.")
        return value

    @field_validator("archived_at", mode="before")
    @classmethod
    def _iso_text(cls, value: object) -> object:
        # Pydantic would read a number, or a string of digits ("2026"), as a Unix time.
        if value is not None and not (isinstance(value, str) and ISO_DATE.match(value)):
            raise ValueError("Datetime must be an ISO-8601 string with a time zone, e.g. 2024-01-31T12:00:00Z, "
                             "or null.")
        return value

    @field_validator("archived_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("Datetime must include a time zone, e.g. 2024-01-31T12:00:00Z.")
        if value is not None:
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise ValueError("Datetime is out of range.") from None
        return value

    @field_validator("retract_on_pause", "lift_z_on_pause", "detective_sensitivity", mode="before")
    @classmethod
    def _number_not_bool(cls, value: object) -> object:
        # Lax validation would read true as 1.0; a boolean here is a client's mistake.
        if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError("A valid number is required.")
        return value

    @field_validator("ignore_masks")
    @classmethod
    def _rectangles(cls, masks: list[list[float]]) -> list[list[float]]:
        # Any two opposite corners make the rectangle (a mouse drags in any direction).
        return [[round(v, 4) for v in (min(m[0], m[2]), min(m[1], m[3]), max(m[0], m[2]), max(m[1], m[3]))]
                for m in masks]

    def given(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}
