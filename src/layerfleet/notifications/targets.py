"""Notification targets: the organization's (managed by admins) and members' own (managed by
each member). Lookups are scoped to the caller's organization (another's target is not found);
the role check comes after the lookup."""

from __future__ import annotations

import re
import secrets as random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import Role, User
from layerfleet.errors import Forbidden, Invalid, NotFound
from layerfleet.notifications import channels, secrets
from layerfleet.notifications.models import SUBSCRIBABLE_EVENTS, Delivery, NotificationTarget, OutboxEvent
from layerfleet.notifications.quiet_hours import CLOCK, zone_problem

NAME_MAX = 100
URL_MAX = 2000
MAX_PRINTERS = 1000
DELIVERY_LOG_LIMIT = 200
EVENT_NAMES = tuple(e.value for e in SUBSCRIBABLE_EVENTS)
# The printers table, by name only: targets name printers, but this layer sits below the fleet.
_printers = table("printers", column("id"), column("organization_id"))
_SECRET_SHAPE = re.compile(r"^[\x21-\x7e]{16,200}$")


@dataclass
class TargetFields:
    """What a caller sets on a target; ``None`` leaves a field as it is (on create: its default).
    ``clear`` names optional fields to set to nothing (printer_ids, quiet hours)."""

    name: str | None = None
    url: str | None = None
    events: list[str] | None = None
    printer_ids: list[int] | None = None
    quiet_start: str | None = None
    quiet_end: str | None = None
    timezone: str | None = None
    enabled: bool | None = None
    webhook_secret: str | None = None
    clear: frozenset[str] = frozenset()


def is_admin(user: User) -> bool:
    return user.role_enum.allows(Role.ADMIN)


def _may_manage(user: User, target: NotificationTarget) -> bool:
    return target.owner_user_id == user.id if target.owner_user_id is not None else is_admin(user)


async def visible_targets(session: AsyncSession, user: User) -> list[NotificationTarget]:
    """Admins: the organization's targets and their own; other members: their own."""
    query = select(NotificationTarget).where(NotificationTarget.organization_id == user.organization_id)
    own = NotificationTarget.owner_user_id == user.id
    query = query.where(own | NotificationTarget.owner_user_id.is_(None)) if is_admin(user) else query.where(own)
    return list((await session.execute(query.order_by(NotificationTarget.id))).scalars())


async def get_target(session: AsyncSession, user: User, target_id: int) -> NotificationTarget:
    target = await session.get(NotificationTarget, target_id)
    if target is None or target.organization_id != user.organization_id:
        raise NotFound("Not found.")
    if target.owner_user_id is not None and target.owner_user_id != user.id:
        raise NotFound("Not found.")  # another member's own target is theirs alone
    if not _may_manage(user, target):
        raise Forbidden("Only admins manage the organization's notification targets.")
    return target


async def _check(session: AsyncSession, organization_id: int, fields: TargetFields) -> None:
    errors: dict[str, list[str]] = {}
    if fields.url is not None:
        problem = "Ensure this field has no more than 2000 characters." if len(fields.url) > URL_MAX \
            else channels.url_problem(fields.url)
        if problem:
            errors["url"] = [problem]
    if fields.events is not None:
        unknown = [e for e in fields.events if e not in EVENT_NAMES]
        if unknown:
            errors["events"] = [f'"{unknown[0][:64]}" is not a valid choice; choose from {", ".join(EVENT_NAMES)}.']
    if fields.name is not None and len(fields.name) > NAME_MAX:
        errors["name"] = [f"Ensure this field has no more than {NAME_MAX} characters."]
    for name in ("quiet_start", "quiet_end"):
        value = getattr(fields, name)
        if value is not None and not CLOCK.match(value):
            errors[name] = ["Enter a time as HH:MM (24 hours)."]
    if fields.timezone is not None and (problem := zone_problem(fields.timezone)):
        errors["timezone"] = [problem]
    if fields.webhook_secret is not None and not _SECRET_SHAPE.match(fields.webhook_secret):
        errors["webhook_secret"] = ["Use 16 to 200 printable characters without spaces."]
    if fields.printer_ids:
        wanted = set(fields.printer_ids)
        if len(wanted) > MAX_PRINTERS:
            errors["printer_ids"] = [f"At most {MAX_PRINTERS} printers."]
        else:
            found = set((await session.execute(select(_printers.c.id).where(
                _printers.c.organization_id == organization_id, _printers.c.id.in_(wanted)))).scalars())
            missing = sorted(wanted - found)
            if missing:
                errors["printer_ids"] = [f"No printer {missing[0]} in your organization."]
    if errors:
        raise Invalid("Invalid notification target.", errors)


def _apply(target: NotificationTarget, fields: TargetFields, server_secret: str) -> str | None:
    """Apply ``fields``; the webhook secret when one was made (shown once)."""
    made: str | None = None
    if fields.name is not None:
        target.name = fields.name.strip()
    if fields.url is not None:
        target.url_encrypted = secrets.encrypt(server_secret, fields.url)
        target.url_masked = secrets.mask_url(fields.url)
        if channels.is_webhook(fields.url) and target.webhook_secret_encrypted is None \
                and fields.webhook_secret is None:
            made = random.token_urlsafe(32)
            target.webhook_secret_encrypted = secrets.encrypt(server_secret, made)
    if fields.webhook_secret is not None:
        target.webhook_secret_encrypted = secrets.encrypt(server_secret, fields.webhook_secret)
    if fields.events is not None:
        target.events = list(dict.fromkeys(fields.events))
    if fields.printer_ids is not None:
        target.printer_ids = sorted(set(fields.printer_ids))
    for name in ("quiet_start", "quiet_end", "timezone", "enabled"):
        value = getattr(fields, name)
        if value is not None:
            setattr(target, name, value)
    for name in fields.clear & {"printer_ids", "quiet_start", "quiet_end"}:
        setattr(target, name, None)
    return made


async def create_target(session: AsyncSession, user: User, fields: TargetFields, server_secret: str, *,
                        own: bool) -> tuple[NotificationTarget, str | None]:
    """A new target (``own``: the member's, else the organization's); the caller commits."""
    if not own and not is_admin(user):
        raise Forbidden("Only admins manage the organization's notification targets; "
                        'add one of your own with "scope": "user".')
    missing = {name: ["This field is required."] for name in ("url", "events") if getattr(fields, name) is None}
    if missing:
        raise Invalid("Invalid notification target.", missing)
    await _check(session, user.organization_id, fields)
    target = NotificationTarget(organization_id=user.organization_id, owner_user_id=user.id if own else None,
                                name="", timezone="UTC", enabled=True)
    made = _apply(target, fields, server_secret)
    if not target.name:
        target.name = target.url_masked.split("://", 1)[0] + " target"
    session.add(target)
    await session.flush()
    return target, made


async def update_target(session: AsyncSession, target: NotificationTarget, fields: TargetFields,
                        server_secret: str) -> str | None:
    await _check(session, target.organization_id, fields)
    return _apply(target, fields, server_secret)


async def delete_target(session: AsyncSession, target: NotificationTarget) -> None:
    await session.delete(target)


async def delivery_log(session: AsyncSession, target: NotificationTarget,
                       limit: int = DELIVERY_LOG_LIMIT) -> list[tuple[Delivery, OutboxEvent]]:
    rows = await session.execute(
        select(Delivery, OutboxEvent).join(OutboxEvent, OutboxEvent.id == Delivery.event_id)
        .where(Delivery.target_id == target.id).order_by(Delivery.id.desc()).limit(limit))
    return [(d, e) for d, e in rows.all()]


def describe(target: NotificationTarget) -> dict[str, Any]:
    """The target as people may see it: the URL masked, secrets never."""
    return {
        "id": target.id, "name": target.name, "url": target.url_masked, "events": list(target.events or []),
        "printer_ids": target.printer_ids, "quiet_start": target.quiet_start, "quiet_end": target.quiet_end,
        "timezone": target.timezone, "enabled": target.enabled,
        "scope": "user" if target.owner_user_id is not None else "organization",
        "has_webhook_secret": target.webhook_secret_encrypted is not None, "created_at": target.created_at,
    }
