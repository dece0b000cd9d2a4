"""One-tap links of alert messages (Resume, Cancel, "Looks OK: mute this print"): a random
token in the link, only its hash stored; usable once, for a day. Opening a link only shows
what it would do; the action is taken when its page's one button is pressed."""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.database import utcnow
from layerfleet.errors import Conflict, NotFound
from layerfleet.notifications.models import ActionLink

LINK_LIFETIME = timedelta(hours=24)
LINK_PATH = "/a/"


class LinkAction(enum.StrEnum):
    RESUME = "resume"
    CANCEL = "cancel"
    MUTE = "mute"


BUTTON_TEXT = {LinkAction.RESUME: "Resume the print", LinkAction.CANCEL: "Cancel the print",
               LinkAction.MUTE: "Looks OK: mute this print"}


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedLink:
    action: LinkAction
    url: str


async def issue(session: AsyncSession, base_url: str, *, organization_id: int, printer_id: int,
                print_id: int | None, action: LinkAction, now: datetime | None = None) -> IssuedLink:
    """A new link; the caller commits before the link leaves the server."""
    token = secrets.token_urlsafe(32)
    moment = now or utcnow()
    session.add(ActionLink(token_hash=_hash(token), action=action.value, organization_id=organization_id,
                           printer_id=printer_id, print_id=print_id, created_at=moment,
                           expires_at=moment + LINK_LIFETIME))
    return IssuedLink(action, f"{base_url.rstrip('/')}{LINK_PATH}{token}")


async def find(session: AsyncSession, token: str) -> ActionLink:
    """The link of ``token``, still usable; NotFound or Conflict (in words) otherwise."""
    link = (await session.execute(select(ActionLink).where(ActionLink.token_hash == _hash(token)))
            ).scalar_one_or_none()
    if link is None:
        raise NotFound("This link is not valid.")
    if link.used_at is not None:
        raise Conflict("This link has already been used; each link works once.")
    if link.expires_at <= utcnow():
        raise Conflict("This link has expired (links work for 24 hours). Open the dashboard instead.")
    return link


async def use(session: AsyncSession, link: ActionLink) -> None:
    """Mark the link used, or raise Conflict when another request used it first."""
    result = await session.execute(update(ActionLink).where(
        ActionLink.id == link.id, ActionLink.used_at.is_(None)).values(used_at=utcnow())
        .execution_options(synchronize_session=False))
    if getattr(result, "rowcount", 0) != 1:
        raise Conflict("This link has already been used; each link works once.")
