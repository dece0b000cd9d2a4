"""Imports every domain's tables so that the metadata (for Alembic) is complete."""

from layerfleet.accounts.models import ApiToken, Organization, User, WebSession
from layerfleet.agents.models import OneTimeVerificationCode, PrinterEvent
from layerfleet.detection.models import Alert, PredictionFrame
from layerfleet.fleet.models import Printer
from layerfleet.prints.models import GCodeFile, Print, PrintShotFeedback
from layerfleet.printwatch.models import PrintWatchDevice, PrintWatchFeedback, PrintWatchKey, PrintWatchNotification

__all__ = [
    "Alert",
    "ApiToken",
    "GCodeFile",
    "OneTimeVerificationCode",
    "Organization",
    "PredictionFrame",
    "Print",
    "PrintShotFeedback",
    "PrintWatchDevice",
    "PrintWatchFeedback",
    "PrintWatchKey",
    "PrintWatchNotification",
    "Printer",
    "PrinterEvent",
    "User",
    "WebSession",
]
