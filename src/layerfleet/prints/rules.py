"""What a user may change on a print, shared by every API dialect."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, StrictInt

from layerfleet.prints.models import AlertOverwrite, FeedbackAnswer


class PrintFilter(enum.StrEnum):
    CANCELLED = "cancelled"
    FINISHED = "finished"
    NEED_ALERT_OVERWRITE = "need_alert_overwrite"
    NEED_PRINT_SHOT_FEEDBACK = "need_print_shot_feedback"


class PrintSorting(enum.StrEnum):
    DATE_DESC = "date_desc"
    DATE_ASC = "date_asc"


class FeedbackAnswerChange(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: StrictInt
    answer: FeedbackAnswer


class PrintChanges(BaseModel):
    """A partial update of a print: the user's verdict and answers to feedback frames.
    Every other field of a print is set by the system and ignored here."""

    model_config = ConfigDict(extra="ignore")

    alert_overwrite: AlertOverwrite | None = None
    printshotfeedback_set: list[FeedbackAnswerChange] = []

    def given(self) -> set[str]:
        return set(self.model_fields_set)
