"""The Notifications page: admins add and manage the organization's targets, every member
their own. A target is added by picking a channel and filling its fields (the URL is made here,
by ``notifications.channel_forms``); the list, switches, Test and the delivery log use the v1
API (``/api/v1/notification_targets/``) with the session cookie."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from layerfleet.api.deps import AppSettings, Db
from layerfleet.api.obico_v1.notification_targets import CreatedTargetOut
from layerfleet.errors import Invalid
from layerfleet.fleet import service as fleet
from layerfleet.notifications import channel_forms
from layerfleet.notifications import targets as service
from layerfleet.notifications.action_links import BUTTON_TEXT
from layerfleet.notifications.models import SUBSCRIBABLE_EVENTS
from layerfleet.notifications.targets import TargetFields
from layerfleet.web.pages import SignedIn, page_user, render, to_sign_in

router = APIRouter(include_in_schema=False)

EVENT_TEXT = {
    "FailureAlert": "Failure alert (always sent, even in quiet hours)", "FailureWarning": "Failure warning",
    "PrintStarted": "Print started", "PrintDone": "Print done", "PrintCancelled": "Print cancelled",
    "PrintPaused": "Print paused", "PrintResumed": "Print resumed", "FilamentChange": "Filament change",
    "HeaterTargetReached": "Heater reached its target", "HeaterCooledDown": "Heater cooled down",
    "PrinterOffline": "Printer offline while printing", "SliceFinished": "Slice finished",
    "SliceFailed": "Slice failed", "PrintJobCompleted": "Print job completed", "PrintJobFailed": "Print job failed",
    "PrintWatchNotify": "PrintWatch notification",
    "QualityWarning": "Quality warning (warping, stringing, … seen; never paused)",
}
DEFAULT_EVENTS = ("FailureAlert", "FailureWarning", "PrintDone", "PrintCancelled", "PrinterOffline")


@router.get("/notifications/", response_class=HTMLResponse)
async def notifications_page(request: Request, db: Db) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    printers = await fleet.list_printers(db, user.organization_id)
    return render(request, "notifications.html", user, {
        "active": "notifications", "channels": channel_forms.CHANNELS, "is_admin": service.is_admin(user),
        "events": [(e.value, EVENT_TEXT.get(e.value, e.value)) for e in SUBSCRIBABLE_EVENTS],
        "default_events": DEFAULT_EVENTS, "printers": [{"id": p.id, "name": p.name} for p in printers],
        "link_actions": list(BUTTON_TEXT.values()),
    })


class PageTargetIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    channel: str = Field(max_length=32)
    fields: dict[str, str] = Field(default_factory=dict, max_length=16)
    name: str = Field(default="", max_length=100)
    events: list[str] = Field(max_length=32)
    scope: Literal["organization", "user"] = "organization"
    quiet_start: str | None = Field(default=None, max_length=5)
    quiet_end: str | None = Field(default=None, max_length=5)
    timezone: str = Field(default="UTC", max_length=64)


@router.post("/notifications/targets/", response_model=CreatedTargetOut, status_code=201)
async def add_target(db: Db, user: SignedIn, settings: AppSettings, body: PageTargetIn) -> CreatedTargetOut:
    for name, value in body.fields.items():
        if len(name) > 32 or len(value) > 1000:
            raise Invalid("field", {name[:32]: ["Ensure this field has no more than 1000 characters."]})
    url = channel_forms.url_for(body.channel, body.fields)
    fields = TargetFields(name=body.name or None, url=url, events=body.events, quiet_start=body.quiet_start or None,
                          quiet_end=body.quiet_end or None, timezone=body.timezone or "UTC")
    target, made = await service.create_target(db, user, fields, settings.effective_secret_key,
                                               own=body.scope == "user")
    await db.commit()
    return CreatedTargetOut.model_validate({**service.describe(target), "webhook_secret": made})
