"""First-start seeding: an admin account (its password printed once and kept in the data
directory), and for the demo an API token with which `serve --demo` runs a few simulated
printers, so a new install shows live printers at once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role, User
from layerfleet.config import Settings

ADMIN_EMAIL = "admin@example.com"
DEMO_TOKEN_FILE = "demo-simulator-token"
DEMO_PRINTERS = 3
DEMO_FAIL_RATE = 0.3
# Seconds between scored frames (and watched pictures) in the demo: the failing printer is
# paused about two minutes after its print starts.
DEMO_DETECTION_INTERVAL = 3.0


@dataclass(frozen=True)
class FirstStart:
    email: str
    password: str
    credentials_file: Path


async def seed(settings: Settings, factory: async_sessionmaker[AsyncSession]) -> FirstStart | None:
    async with factory() as session:
        if (await session.execute(select(func.count()).select_from(User))).scalar_one() > 0:
            return None
        password = secrets.token_urlsafe(12)
        await accounts.create_user(
            session, ADMIN_EMAIL, password, role=Role.OWNER, name="Admin",
            dh_balance=settings.initial_detection_hours,
        )
        await session.commit()
    credentials = settings.data_dir / "initial-admin.txt"
    credentials.touch(mode=0o600)
    credentials.write_text(f"email: {ADMIN_EMAIL}\npassword: {password}\n")
    return FirstStart(ADMIN_EMAIL, password, credentials)


async def demo_simulator_token(settings: Settings, factory: async_sessionmaker[AsyncSession]) -> str:
    """The API token the demo's simulated printers link with: the first owner's, kept in the data
    directory (0600) so restarts bring back the same printers."""
    path = settings.data_dir / DEMO_TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    async with factory() as session:
        owner = (await session.execute(
            select(User).where(User.role == Role.OWNER.value).order_by(User.id).limit(1))).scalar_one()
        key = (await accounts.create_api_token(session, owner, "demo simulator")).key
        await session.commit()
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key
