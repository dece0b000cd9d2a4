"""PrintWatch API keys: issuing (shown once, stored as a hash), looking up, revoking, and the
devices each key holds."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import User
from layerfleet.database import utcnow
from layerfleet.errors import Conflict
from layerfleet.printwatch.models import PrintWatchDevice, PrintWatchKey

KEY_PREFIX = "pw_"
VISIBLE_PREFIX_LENGTH = 10
MAX_DEVICE_LIMIT = 1000
MAX_NAME_LENGTH = 100
# Recording use at minute granularity: a write on every picture would cost more than it tells.
LAST_USED_GRANULARITY_SECONDS = 60


class PrintWatchKeyError(Conflict):
    """A key request that cannot be carried out; the message is for a person."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    key: PrintWatchKey
    plain: str  # shown once; only its hash is stored


def check_device_limit(device_limit: int) -> None:
    if not 1 <= device_limit <= MAX_DEVICE_LIMIT:
        raise PrintWatchKeyError(f"the device limit must be from 1 to {MAX_DEVICE_LIMIT}")


async def issue_key(session: AsyncSession, user: User, device_limit: int, name: str = "") -> IssuedKey:
    """A new key for ``user``'s organization, good for ``device_limit`` devices."""
    check_device_limit(device_limit)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = PrintWatchKey(
        organization_id=user.organization_id, user_id=user.id, name=name[:MAX_NAME_LENGTH],
        key_prefix=plain[:VISIBLE_PREFIX_LENGTH], key_hash=hash_key(plain), device_limit=device_limit,
    )
    session.add(key)
    await session.flush()
    await session.refresh(key, ["user"])
    return IssuedKey(key=key, plain=plain)


async def key_for_api_key(session: AsyncSession, plain: str, now: datetime) -> PrintWatchKey | None:
    """The live key ``plain`` stands for: None when unknown, revoked, or its member deactivated."""
    query = select(PrintWatchKey).where(PrintWatchKey.key_hash == hash_key(plain))
    key = (await session.execute(query)).scalar_one_or_none()
    if key is None or key.revoked_at is not None or not key.user.is_active:
        return None
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > LAST_USED_GRANULARITY_SECONDS:
        key.last_used_at = now
    return key


async def list_keys(session: AsyncSession, organization_id: int) -> list[PrintWatchKey]:
    query = select(PrintWatchKey).where(PrintWatchKey.organization_id == organization_id).order_by(PrintWatchKey.id)
    return list((await session.execute(query)).scalars())


async def get_key(session: AsyncSession, organization_id: int, key_id: int) -> PrintWatchKey | None:
    """A key of the organization; another organization's key is as missing as an unknown one."""
    key = await session.get(PrintWatchKey, key_id)
    if key is None or key.organization_id != organization_id:
        return None
    return key


async def devices_of(session: AsyncSession, key_ids: list[int]) -> dict[int, list[PrintWatchDevice]]:
    """Each key's devices, in the order they were registered."""
    found: dict[int, list[PrintWatchDevice]] = {key_id: [] for key_id in key_ids}
    if key_ids:
        query = select(PrintWatchDevice).where(PrintWatchDevice.key_id.in_(key_ids)).order_by(PrintWatchDevice.id)
        for device in (await session.execute(query)).scalars():
            found[device.key_id].append(device)
    return found


def within_plan(key: PrintWatchKey, rank: int) -> bool:
    """Whether the key's plan serves its device registered ``rank``-th (from 0): after the limit
    was lowered, only the first ``device_limit`` devices keep their place."""
    return rank < key.device_limit


async def device_count(session: AsyncSession, key_id: int) -> int:
    query = select(func.count()).select_from(PrintWatchDevice).where(PrintWatchDevice.key_id == key_id)
    return int((await session.execute(query)).scalar_one())


def change_key(key: PrintWatchKey, *, name: str | None = None, device_limit: int | None = None) -> None:
    """Rename a key or change its plan. Lowering the limit below the devices already registered
    keeps them, but only the first ``device_limit`` of them (in order of registration) are served."""
    if key.revoked_at is not None:
        raise PrintWatchKeyError("the key is revoked")
    if device_limit is not None:
        check_device_limit(device_limit)
        key.device_limit = device_limit
    if name is not None:
        key.name = name[:MAX_NAME_LENGTH]


async def revoke_key(session: AsyncSession, key: PrintWatchKey, now: datetime | None = None) -> None:
    """Revoke a key and free its devices, so its printers can be used with another key."""
    if key.revoked_at is None:
        key.revoked_at = now or utcnow()
    await session.execute(delete(PrintWatchDevice).where(PrintWatchDevice.key_id == key.id))


async def release_device(session: AsyncSession, key: PrintWatchKey, device_id: int) -> bool:
    """Free one device of the key (a replaced printer), making room within the plan."""
    device = await session.get(PrintWatchDevice, device_id)
    if device is None or device.key_id != key.id:
        return False
    await session.delete(device)
    return True
