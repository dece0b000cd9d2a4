"""Linking an agent to a printer with a one-time 6-digit code.

A member asks for a code (optionally for one of their organization's printers, to relink
it); the agent sends the code back anonymously and gets the printer's token. A code is
single use and lives two hours.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import User
from layerfleet.agents.models import OneTimeVerificationCode
from layerfleet.database import utcnow
from layerfleet.fleet import service as fleet
from layerfleet.fleet.models import Printer

CODE_LIFETIME = timedelta(hours=2)
# A code about to expire is not handed out again: the user needs time to type it in.
MIN_REMAINING = timedelta(minutes=10)
DEFAULT_PRINTER_NAME = "My Printer"
CODE_DIGITS = 6


def is_well_formed(code: str) -> bool:
    return len(code) == CODE_DIGITS and code.isascii() and code.isdigit()


async def _live_code_exists(session: AsyncSession, code: str) -> bool:
    query = select(OneTimeVerificationCode.id).where(
        OneTimeVerificationCode.code == code,
        OneTimeVerificationCode.verified_at.is_(None),
        OneTimeVerificationCode.expired_at > utcnow(),
    )
    return (await session.execute(query.limit(1))).first() is not None


async def code_for(session: AsyncSession, user: User, printer: Printer | None = None) -> OneTimeVerificationCode:
    """The member's live code (for ``printer``, or for a new printer), made when there is none."""
    now = utcnow()
    query = select(OneTimeVerificationCode).where(
        OneTimeVerificationCode.user_id == user.id,
        OneTimeVerificationCode.verified_at.is_(None),
        OneTimeVerificationCode.expired_at > now + MIN_REMAINING,
    )
    if printer is None:
        query = query.where(OneTimeVerificationCode.printer_id.is_(None))
    else:
        query = query.where(OneTimeVerificationCode.printer_id == printer.id)
    existing = (await session.execute(query.order_by(OneTimeVerificationCode.id.desc()).limit(1))).scalar_one_or_none()
    if existing is not None:
        return existing
    for _ in range(20):
        candidate = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        if not await _live_code_exists(session, candidate):
            break
    else:  # pragma: no cover - a million codes would have to be live at once
        raise RuntimeError("no free verification code")
    code = OneTimeVerificationCode(
        code=candidate, user_id=user.id, printer_id=printer.id if printer else None,
        created_at=now, expired_at=now + CODE_LIFETIME,
    )
    session.add(code)
    await session.flush()
    return code


@dataclass(frozen=True)
class Linked:
    code: OneTimeVerificationCode
    printer: Printer
    relinked: bool


async def verify(session: AsyncSession, code: str, printer_name: str | None = None) -> Linked | None:
    """Use ``code``: create the printer (or reset the relinked printer's token). ``None`` when
    the code is unknown, expired or used; the caller commits."""
    now = utcnow()
    query = select(OneTimeVerificationCode).where(
        OneTimeVerificationCode.code == code,
        OneTimeVerificationCode.verified_at.is_(None),
        OneTimeVerificationCode.expired_at > now,
    )
    found = (await session.execute(query.order_by(OneTimeVerificationCode.id.desc()).limit(1))).scalar_one_or_none()
    if found is None:
        return None
    # Conditional on still being unused, so two agents racing with one code cannot both win.
    claimed = await session.execute(
        update(OneTimeVerificationCode)
        .where(OneTimeVerificationCode.id == found.id, OneTimeVerificationCode.verified_at.is_(None))
        .values(verified_at=now, expired_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        return None
    await session.refresh(found)
    user = await session.get(User, found.user_id)
    if user is None or not user.is_active:
        return None
    if found.printer_id is not None:
        printer = await fleet.get_printer(session, user.organization_id, found.printer_id)
        if printer is None or printer.archived_at is not None:
            return None
        printer.auth_token = fleet.new_printer_token()
        return Linked(found, printer, relinked=True)
    printer = await fleet.create_printer(session, user, printer_name or DEFAULT_PRINTER_NAME)
    found.printer_id = printer.id
    return Linked(found, printer, relinked=False)


async def printer_for_token(session: AsyncSession, token: str) -> Printer | None:
    """The linked, not archived printer whose agent holds ``token``."""
    if not token or len(token) > 64:
        return None
    # Every agent call and every picture starts here: one SELECT with what the picture path needs.
    return (await session.execute(_printer_by_token(), {"agent_token": token})).scalar_one_or_none()


@functools.cache
def _printer_by_token() -> Select[Printer]:
    # Built once: making the statement anew cost more CPU than SQLAlchemy's compiled-statement
    # cache saves on each picture upload.
    return select(Printer).where(Printer.auth_token == bindparam("agent_token"), Printer.archived_at.is_(None)) \
        .options(*fleet.HOT_PATH_LOAD)


async def member_code(session: AsyncSession, user: User, code_id: int) -> OneTimeVerificationCode | None:
    """One of the member's own codes (another member's is as missing as an unknown one)."""
    code = await session.get(OneTimeVerificationCode, code_id)
    if code is None or code.user_id != user.id:
        return None
    return code


def seconds_left(code: OneTimeVerificationCode) -> int:
    """How long the code can still be used: 0 once used or expired."""
    if code.verified_at is not None:
        return 0
    return max(0, int((code.expired_at - utcnow()).total_seconds()))
