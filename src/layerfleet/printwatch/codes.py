"""The status codes of the PrintWatch dialect (seed 000, section 2.0). Clients read them from the
body's ``statusCode``; the HTTP status is 200 whatever the code."""

from __future__ import annotations

import enum

from layerfleet.errors import DomainError


class StatusCode(enum.IntEnum):
    OK = 200
    BAD_IMAGE = 210  # "Issue with Image data"
    INFERENCE_FAILED = 211  # "Bad inference request"
    SETTINGS_CHECK_FAILED = 212  # "Settings check failed"
    PRINT_TIME_TOO_SOON = 213  # "Print time too soon"
    NEW_DEVICE = 214  # "New user added"
    BAD_PAYLOAD = 215  # "Issue with payload data"
    NO_INFERENCE_CRITERIA = 216  # "No inference criteria met"
    INVALID_KEY = 217  # "Invalid API key"
    PRINT_TIME_UNAVAILABLE = 218  # "Unavailable print time"

    @property
    def title(self) -> str:
        return _TITLES[self]


_TITLES = {
    StatusCode.OK: "OK",
    StatusCode.BAD_IMAGE: "Issue with image data",
    StatusCode.INFERENCE_FAILED: "Bad inference request",
    StatusCode.SETTINGS_CHECK_FAILED: "Settings check failed",
    StatusCode.PRINT_TIME_TOO_SOON: "Print time too soon",
    StatusCode.NEW_DEVICE: "New user added",
    StatusCode.BAD_PAYLOAD: "Issue with payload data",
    StatusCode.NO_INFERENCE_CRITERIA: "No inference criteria met",
    StatusCode.INVALID_KEY: "Invalid API key",
    StatusCode.PRINT_TIME_UNAVAILABLE: "Unavailable print time",
}


class Refusal(DomainError):
    """A request answered with a custom code instead of a result; ``reason`` is for a person."""

    def __init__(self, code: StatusCode, reason: str) -> None:
        super().__init__(f"{code.value} {code.title}: {reason}")
        self.code = code
        self.reason = reason
