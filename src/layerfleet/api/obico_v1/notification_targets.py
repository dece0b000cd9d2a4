"""Notification targets (a Layerfleet extension of the v1 dialect): where a farm's alerts and
print events go. Admins manage the organization's targets; every member their own
(``"scope": "user"``). URLs come back masked; a signed webhook's secret is shown once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from layerfleet.api.deps import AppSettings, CurrentUser, Db, Notifications
from layerfleet.notifications import targets as service
from layerfleet.notifications.models import NotificationTarget
from layerfleet.notifications.targets import TargetFields

router = APIRouter(tags=["Layerfleet: notifications"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such target of yours"}}
TargetId = Annotated[int, Path(ge=1, le=2**31 - 1)]
Clock = Annotated[str | None, Field(description="HH:MM (24 h) in the target's time zone; null: none",
                                    max_length=5)]


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str | None = Field(default=None, max_length=4000, description=(
        "Any Apprise URL (mailto://, mailtos://, discord://, tgram://, slack://, ntfy://, pover://, matrix://, "
        "mqtt://host:1883/layerfleet/{printer}/event, json://…) or webhook+https://… for a signed webhook"))
    events: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=32)
    name: str | None = Field(default=None, max_length=200)
    printer_ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None = Field(
        default=None, max_length=1000, description="Only these printers; null: every printer")
    quiet_start: Clock = None
    quiet_end: Clock = None
    timezone: str | None = Field(default=None, max_length=64, description="e.g. Europe/Berlin; default UTC")
    enabled: StrictBool | None = None
    webhook_secret: str | None = Field(default=None, max_length=400,
                                       description="Signed webhooks: the HMAC key; made for you when absent")

    def fields(self) -> TargetFields:
        given = self.model_fields_set
        clear = frozenset(name for name in ("printer_ids", "quiet_start", "quiet_end")
                          if name in given and getattr(self, name) is None)
        return TargetFields(name=self.name, url=self.url, events=self.events, printer_ids=self.printer_ids,
                            quiet_start=self.quiet_start, quiet_end=self.quiet_end, timezone=self.timezone,
                            enabled=self.enabled, webhook_secret=self.webhook_secret, clear=clear)


class TargetCreate(TargetIn):
    scope: Literal["organization", "user"] = Field(
        default="organization", description="organization (admins) or user (the caller's own target)")


class TargetOut(BaseModel):
    id: int
    name: str
    url: str = Field(description="Masked: passwords and tokens are shown as ***")
    events: list[str]
    printer_ids: list[int] | None
    quiet_start: str | None
    quiet_end: str | None
    timezone: str
    enabled: bool
    scope: Literal["organization", "user"]
    has_webhook_secret: bool
    created_at: datetime


class CreatedTargetOut(TargetOut):
    webhook_secret: str | None = Field(default=None, description="A made webhook secret, shown only now")


class TestOut(BaseModel):
    sent: bool
    error: str | None = Field(description="The service's refusal in words, when not sent")


class DeliveryOut(BaseModel):
    id: int
    event: str
    event_id: int
    idempotency_key: str
    status: Literal["pending", "retrying", "sent", "failed"]
    attempts: int
    digest: bool
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None


def _out(target: NotificationTarget) -> TargetOut:
    return TargetOut.model_validate(service.describe(target))


@router.get("/notification_targets/", response_model=list[TargetOut])
async def list_targets(db: Db, user: CurrentUser) -> list[TargetOut]:
    return [_out(t) for t in await service.visible_targets(db, user)]


@router.post("/notification_targets/", response_model=CreatedTargetOut, status_code=201)
async def create_target(db: Db, user: CurrentUser, settings: AppSettings, body: TargetCreate) -> CreatedTargetOut:
    target, made = await service.create_target(db, user, body.fields(), settings.effective_secret_key,
                                               own=body.scope == "user")
    await db.commit()
    return CreatedTargetOut.model_validate({**service.describe(target), "webhook_secret": made})


@router.get("/notification_targets/{target_id}/", response_model=TargetOut, responses=NOT_FOUND)
async def get_target(db: Db, user: CurrentUser, target_id: TargetId) -> TargetOut:
    return _out(await service.get_target(db, user, target_id))


@router.patch("/notification_targets/{target_id}/", response_model=CreatedTargetOut, responses=NOT_FOUND)
async def update_target(db: Db, user: CurrentUser, settings: AppSettings, target_id: TargetId,
                        body: TargetIn) -> CreatedTargetOut:
    target = await service.get_target(db, user, target_id)
    made = await service.update_target(db, target, body.fields(), settings.effective_secret_key)
    await db.commit()
    return CreatedTargetOut.model_validate({**service.describe(target), "webhook_secret": made})


@router.delete("/notification_targets/{target_id}/", status_code=204, response_class=Response,
               responses=NOT_FOUND)
async def delete_target(db: Db, user: CurrentUser, target_id: TargetId) -> Response:
    target = await service.get_target(db, user, target_id)
    await service.delete_target(db, target)
    await db.commit()
    return Response(status_code=204)


@router.post("/notification_targets/{target_id}/test/", response_model=TestOut, responses=NOT_FOUND,
             summary="Send a test message now")
async def test_target(db: Db, user: CurrentUser, notifier: Notifications, target_id: TargetId) -> TestOut:
    target = await service.get_target(db, user, target_id)
    outcome = await notifier.send_test(db, target, user.email)
    return TestOut(sent=outcome.sent, error=outcome.error)


@router.get("/notification_targets/{target_id}/deliveries/", response_model=list[DeliveryOut],
            responses=NOT_FOUND, summary="The target's delivery log, newest first")
async def list_deliveries(db: Db, user: CurrentUser, target_id: TargetId) -> list[DeliveryOut]:
    target = await service.get_target(db, user, target_id)
    return [DeliveryOut(id=d.id, event=e.kind, event_id=e.id, idempotency_key=e.idempotency_key,
                        status=d.status, attempts=d.attempts, digest=d.digest,
                        last_error=d.last_error, created_at=d.created_at, next_attempt_at=d.next_attempt_at,
                        sent_at=d.sent_at)
            for d, e in await service.delivery_log(db, target)]
