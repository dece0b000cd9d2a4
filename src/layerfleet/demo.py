"""First-start seeding: an admin account (its password printed once and kept in the data
directory), and on request a few demo printers so a new install has something to show."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role, User
from layerfleet.config import Settings
from layerfleet.fleet import service as fleet
from layerfleet.fleet.models import Printer

ADMIN_EMAIL = "admin@example.com"
DEMO_PRINTERS = ("Prusa MK4 · bay 1", "Prusa MK4 · bay 2", "Voron 2.4 · bay 3")


@dataclass(frozen=True)
class FirstStart:
    email: str
    password: str
    credentials_file: Path


async def seed(
    settings: Settings, factory: async_sessionmaker[AsyncSession], *, demo_printers: bool
) -> FirstStart | None:
    async with factory() as session:
        if (await session.execute(select(func.count()).select_from(User))).scalar_one() > 0:
            if demo_printers:
                await _ensure_demo_printers(session, None)
                await session.commit()
            return None
        password = secrets.token_urlsafe(12)
        admin = await accounts.create_user(
            session, ADMIN_EMAIL, password, role=Role.OWNER, name="Admin",
            dh_balance=settings.initial_detection_hours,
        )
        if demo_printers:
            await _ensure_demo_printers(session, admin)
        await session.commit()
    credentials = settings.data_dir / "initial-admin.txt"
    credentials.touch(mode=0o600)
    credentials.write_text(f"email: {ADMIN_EMAIL}\npassword: {password}\n")
    return FirstStart(ADMIN_EMAIL, password, credentials)


async def _ensure_demo_printers(session: AsyncSession, owner: User | None) -> None:
    if (await session.execute(select(func.count()).select_from(Printer))).scalar_one() > 0:
        return
    if owner is None:
        owner = (await session.execute(select(User).order_by(User.id).limit(1))).scalar_one()
    for name in DEMO_PRINTERS:
        await fleet.create_printer(session, owner, name)
