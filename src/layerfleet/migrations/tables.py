"""Imports every domain's tables so that the metadata (for Alembic) is complete."""

from layerfleet.accounts.models import AccessKey, ApiToken, Organization, User, WebSession
from layerfleet.agents.models import OneTimeVerificationCode
from layerfleet.detection.model_versions import ModelVersion, OrganizationModel
from layerfleet.detection.models import Alert, PredictionFrame
from layerfleet.fleet.models import Printer, PrinterCamera, PrinterEvent
from layerfleet.library.models import Build, BuildItem, Part, PartVersion, SettingsPreset, SliceJob
from layerfleet.notifications.models import ActionLink, Delivery, NotificationTarget, OutboxEvent
from layerfleet.prints.models import GCodeFile, Print, PrintShotFeedback
from layerfleet.printwatch.models import PrintWatchDevice, PrintWatchFeedback, PrintWatchKey, PrintWatchNotification
from layerfleet.scheduling.models import PrintedPart, PrintJob, QueuedJob
from layerfleet.timelapses.models import TimelapseJob

__all__ = [
    "AccessKey",
    "ActionLink",
    "Alert",
    "ApiToken",
    "Build",
    "BuildItem",
    "Delivery",
    "GCodeFile",
    "ModelVersion",
    "NotificationTarget",
    "OneTimeVerificationCode",
    "Organization",
    "OrganizationModel",
    "OutboxEvent",
    "Part",
    "PartVersion",
    "PredictionFrame",
    "Print",
    "PrintJob",
    "PrintShotFeedback",
    "PrintWatchDevice",
    "PrintWatchFeedback",
    "PrintWatchKey",
    "PrintWatchNotification",
    "PrintedPart",
    "Printer",
    "PrinterCamera",
    "PrinterEvent",
    "QueuedJob",
    "SettingsPreset",
    "SliceJob",
    "TimelapseJob",
    "User",
    "WebSession",
]
