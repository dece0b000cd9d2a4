"""What PrintWatch clients send, read leniently where the real clients differ and strictly where
a value would change an answer. Anything unreadable is a `BAD_PAYLOAD` (215) refusal.

- Optional fields may be absent or ``null`` (the Klipper client sends ``null`` for settings its
  user never set): both mean the default.
- ``conf`` and ``thresholds`` come as fractions (the OctoPrint plugin: ``0.6``) or percentages
  (the Klipper client: ``60``): a value above 1 is a percentage, so ``1`` means 100 %.
- The picture (``image_array``) is only checked for presence here: whether it decodes is the
  detector's question (`BAD_IMAGE`, 210).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from layerfleet.printwatch.codes import Refusal, StatusCode

Payload = Mapping[str, Any]

DEFAULT_BUFFER_LENGTH = 16
MAX_BUFFER_LENGTH = 256
DEFAULT_BUFFER_PERCENT = 60.0
DEFAULT_THRESHOLDS = (0.30, 0.60)
MAX_API_KEY_LENGTH = 200
MAX_PRINTER_ID_LENGTH = 64
MAX_TICKET_LENGTH = 64
MAX_VERSION_LENGTH = 32
MAX_TEXT_LENGTH = 254

PRINTING = 0  # the clients' `state`: 0 printing, 1 paused, 2 online/idle, 500 unknown

NOTIFICATION_LEVELS = ("warning", "action")
# The settings a client's heartbeat carries (thresholds as integer percentages); others are dropped.
HEARTBEAT_SETTINGS = (
    "detection_threshold", "buffer_length", "notification_threshold", "action_threshold", "enable_notification",
    "email_address", "pause_print", "cancel_print", "extruder_heat_off", "enable_feedback_images",
)
# What a notification or feedback may say about the print, kept with it.
PRINT_DETAILS = ("time", "printTime", "printTimeLeft", "progress", "job_name")


def bad_payload(reason: str) -> Refusal:
    return Refusal(StatusCode.BAD_PAYLOAD, reason)


def _given(payload: Payload, field: str) -> Any:
    """The field's value; None when absent or null."""
    return payload.get(field)


def _number(value: Any, field: str) -> float:
    # bool is an int in Python, but `true` is no number in a client's payload.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_payload(f"{field} must be a number")
    return float(value)


def _fraction_or_percent(value: Any, field: str) -> float:
    number = _number(value, field)
    if not 0 <= number <= 100:
        raise bad_payload(f"{field} must be from 0 to 1, or a percentage from 0 to 100")
    return number / 100 if number > 1 else number


def _text(value: Any, field: str, limit: int) -> str | None:
    """An optional string, cut to ``limit``; empty means absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_payload(f"{field} must be a string")
    return value.strip()[:limit] or None


def api_key(payload: Payload) -> str | None:
    """The key as sent, or None when there is none to look up (answered as an invalid key)."""
    value = _given(payload, "api_key")
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_API_KEY_LENGTH:
        return None
    return value.strip()


def printer_id(payload: Payload) -> str:
    value = _given(payload, "printer_id")
    if value is None:
        raise bad_payload("printer_id is required")
    if not isinstance(value, str) or not value.strip():
        raise bad_payload("printer_id must be a non-empty string")
    if len(value.strip()) > MAX_PRINTER_ID_LENGTH:
        raise bad_payload(f"printer_id must have at most {MAX_PRINTER_ID_LENGTH} characters")
    return value.strip()


def client_version(payload: Payload) -> str | None:
    value = _given(payload, "version")
    # Only recorded, never used for a decision: an odd value is not worth refusing a picture for.
    if not isinstance(value, str):
        return None
    return value.strip()[:MAX_VERSION_LENGTH] or None


def print_time(payload: Payload) -> float | None:
    """Seconds into the print; None when OctoPrint has not initialised it yet (absent, null,
    negative or not a number)."""
    value = _given(payload, "printTime")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _print_details(payload: Payload) -> dict[str, Any]:
    details: dict[str, Any] = {}
    for field in PRINT_DETAILS:
        value = _given(payload, field)
        if isinstance(value, str):
            details[field] = value[:MAX_TEXT_LENGTH]
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            details[field] = value
    return details


@dataclass(frozen=True)
class InferRequest:
    printer_id: str
    state: int
    image: Any  # image_array as sent: decoding it is the detector's part
    conf: float  # 0–1
    buffer_length: int
    buffer_percent: float  # 0–100
    thresholds: tuple[float, float]  # notify, action; 0–1
    print_time: float | None
    ticket_id: str | None
    # The client sent an empty history of its scores: the OctoPrint plugin starts one per print.
    new_history: bool
    version: str | None


def read_infer(payload: Payload) -> InferRequest:
    device = printer_id(payload)
    state = _given(payload, "state")
    if state is None:
        raise bad_payload("state is required (0 printing, 1 paused, 2 idle, 500 unknown)")
    if isinstance(state, bool) or not isinstance(state, int):
        raise bad_payload("state must be an integer (0 printing, 1 paused, 2 idle, 500 unknown)")
    image = _given(payload, "image_array")
    if image is None:
        raise bad_payload("image_array is required (base64 of the JPEG)")
    conf = _given(payload, "conf")
    if conf is None:
        raise bad_payload("conf (the confidence threshold) is required; set the detection confidence")

    buffer_length = _given(payload, "buffer_length")
    if buffer_length is None:
        buffer_length = DEFAULT_BUFFER_LENGTH
    elif isinstance(buffer_length, bool) or not isinstance(buffer_length, int):
        raise bad_payload("buffer_length must be an integer")
    elif not 1 <= buffer_length <= MAX_BUFFER_LENGTH:
        raise bad_payload(f"buffer_length must be from 1 to {MAX_BUFFER_LENGTH}")

    buffer_percent = _given(payload, "buffer_percent")
    percent = DEFAULT_BUFFER_PERCENT if buffer_percent is None else _number(buffer_percent, "buffer_percent")
    if not 0 <= percent <= 100:
        raise bad_payload("buffer_percent must be a percentage from 0 to 100")

    thresholds = _given(payload, "thresholds")
    if thresholds is None:
        notify, action = DEFAULT_THRESHOLDS
    elif not isinstance(thresholds, list) or len(thresholds) != 2:
        raise bad_payload("thresholds must be [notify, action]")
    else:
        notify, action = (_fraction_or_percent(value, "thresholds") for value in thresholds)

    scores = _given(payload, "scores")
    if scores is not None and not isinstance(scores, list):
        raise bad_payload("scores must be a list of numbers")

    return InferRequest(
        printer_id=device, state=state, image=image, conf=_fraction_or_percent(conf, "conf"),
        buffer_length=buffer_length, buffer_percent=percent, thresholds=(notify, action),
        print_time=print_time(payload), ticket_id=_text(_given(payload, "ticket_id"), "ticket_id", MAX_TICKET_LENGTH),
        new_history=scores == [], version=client_version(payload),
    )


@dataclass(frozen=True)
class HeartbeatRequest:
    printer_id: str
    settings: dict[str, Any] | None  # only the first heartbeat of a client carries them
    version: str | None


def read_heartbeat(payload: Payload) -> HeartbeatRequest:
    device = printer_id(payload)
    settings = _given(payload, "settings")
    if settings is not None and not isinstance(settings, dict):
        raise bad_payload("settings must be an object")
    kept: dict[str, Any] | None = None
    if settings is not None:
        kept = {}
        for name in HEARTBEAT_SETTINGS:
            if name not in settings:
                continue
            value = settings[name]
            if isinstance(value, str):
                kept[name] = value[:MAX_TEXT_LENGTH]
            elif value is None or isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
                kept[name] = value
    return HeartbeatRequest(printer_id=device, settings=kept, version=client_version(payload))


@dataclass(frozen=True)
class NotifyRequest:
    printer_id: str
    level: str
    email: str | None
    details: dict[str, Any]


def read_notify(payload: Payload) -> NotifyRequest:
    device = printer_id(payload)
    level = _given(payload, "notification")
    # The OctoPrint plugin's notify call carries no level: a warning is the cautious reading.
    if level is None:
        level = NOTIFICATION_LEVELS[0]
    if level not in NOTIFICATION_LEVELS:
        raise bad_payload("notification must be 'warning' or 'action'")
    email = _text(_given(payload, "email_addr"), "email_addr", MAX_TEXT_LENGTH)
    if email is not None and ("@" not in email or " " in email):
        raise bad_payload("email_addr is not an email address")
    return NotifyRequest(printer_id=device, level=level, email=email, details=_print_details(payload))


@dataclass(frozen=True)
class FeedbackRequest:
    printer_id: str
    classification: str | None
    image: Any  # image_array as sent, or None
    keep_image: bool
    details: dict[str, Any]


def read_feedback(payload: Payload) -> FeedbackRequest:
    device = printer_id(payload)
    feedback = _given(payload, "feedback")
    classification = _given(payload, "class") or _given(payload, "classification")
    if isinstance(feedback, dict):
        classification = classification or feedback.get("class")
    elif isinstance(feedback, str):
        classification = classification or feedback
    keep = _given(payload, "enable_feedback_images")
    if keep is not None and not isinstance(keep, bool):
        raise bad_payload("enable_feedback_images must be true or false")
    return FeedbackRequest(
        printer_id=device, classification=_text(classification, "class", 64), image=_given(payload, "image_array"),
        keep_image=keep is not False, details=_print_details(payload),
    )
