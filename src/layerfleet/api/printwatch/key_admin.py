"""PrintWatch API keys for signed-in members (a Layerfleet extension): list them, issue one (the
key is shown once), change its name or device limit, revoke it, release one of its devices.
Every member sees the organization's keys; issuing, changing, revoking and releasing need admin.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from layerfleet.accounts.models import Role, User
from layerfleet.accounts.service import clean_label
from layerfleet.api.deps import CurrentUser, Db, ensure_role
from layerfleet.printwatch import api_keys
from layerfleet.printwatch.models import PrintWatchDevice, PrintWatchKey

router = APIRouter(prefix="/printwatch", tags=["Layerfleet: PrintWatch keys"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such key in your organization"}}

KeyId = Annotated[int, Path(ge=1, le=2**31 - 1)]
DeviceId = Annotated[int, Path(ge=1, le=2**31 - 1)]
DeviceLimit = Annotated[int, Field(ge=1, le=api_keys.MAX_DEVICE_LIMIT,
                                   description="How many devices (printer_ids) the key serves")]
Name = Annotated[str, Field(max_length=api_keys.MAX_NAME_LENGTH, description="A label to recognise the key by")]


def _count(value: object) -> object:
    # JSON Schema counts 3.0 as an integer, so it is accepted; a boolean or a string is a client's mistake.
    if isinstance(value, bool | str):
        raise ValueError("A valid integer is required.")
    return value


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Name = ""
    device_limit: DeviceLimit

    @field_validator("name")
    @classmethod
    def _clean_name(cls, value: str) -> str:
        return clean_label(value)

    @field_validator("device_limit", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        return _count(value)


class KeyChange(BaseModel):
    """A partial update: only the fields given change."""

    model_config = ConfigDict(extra="ignore")

    name: Name | None = None
    device_limit: DeviceLimit | None = None

    @field_validator("name")
    @classmethod
    def _clean_name(cls, value: str | None) -> str | None:
        return None if value is None else clean_label(value)

    @field_validator("device_limit", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        return _count(value)


class DeviceOut(BaseModel):
    id: int
    printer_id: str
    first_seen_at: datetime
    last_call_at: datetime | None
    last_heartbeat_at: datetime | None
    client_version: str | None
    frames_scored: int
    last_score: float | None
    within_plan: bool = Field(description="False for devices beyond a lowered device limit (answered 212)")


class KeyOut(BaseModel):
    id: int
    name: str
    key_prefix: str = Field(description="The first characters of the key, to recognise it by")
    device_limit: int
    issued_to: str = Field(description="Email of the member the key was issued to")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    devices: list[DeviceOut]


class IssuedKeyOut(KeyOut):
    key: str = Field(description="The API key: shown only in this answer, only its hash is kept")


def _key_out(key: PrintWatchKey, devices: list[PrintWatchDevice]) -> dict[str, Any]:
    return {
        "id": key.id, "name": key.name, "key_prefix": key.key_prefix, "device_limit": key.device_limit,
        "issued_to": key.user.email, "created_at": key.created_at, "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
        "devices": [
            DeviceOut(
                id=d.id, printer_id=d.printer_id, first_seen_at=d.first_seen_at, last_call_at=d.last_call_at,
                last_heartbeat_at=d.last_heartbeat_at, client_version=d.client_version,
                frames_scored=d.frames_scored, last_score=d.last_score, within_plan=api_keys.within_plan(key, rank),
            )
            for rank, d in enumerate(devices)
        ],
    }


async def _key_or_404(db: Db, user: User, key_id: int) -> PrintWatchKey:
    key = await api_keys.get_key(db, user.organization_id, key_id)
    if key is None:
        raise HTTPException(404, detail="Not found.")
    return key


async def _present(db: Db, key: PrintWatchKey) -> KeyOut:
    devices = (await api_keys.devices_of(db, [key.id]))[key.id]
    return KeyOut(**_key_out(key, devices))


@router.get("/keys/", response_model=list[KeyOut])
async def list_keys(db: Db, user: CurrentUser) -> list[KeyOut]:
    found = await api_keys.list_keys(db, user.organization_id)
    devices = await api_keys.devices_of(db, [key.id for key in found])
    return [KeyOut(**_key_out(key, devices[key.id])) for key in found]


@router.post("/keys/", response_model=IssuedKeyOut, status_code=201)
async def create_key(db: Db, user: CurrentUser, body: KeyCreate) -> IssuedKeyOut:
    ensure_role(user, Role.ADMIN)
    issued = await api_keys.issue_key(db, user, body.device_limit, body.name)
    await db.commit()
    return IssuedKeyOut(**_key_out(issued.key, []), key=issued.plain)


@router.get("/keys/{key_id}/", response_model=KeyOut, responses=NOT_FOUND)
async def get_key(db: Db, user: CurrentUser, key_id: KeyId) -> KeyOut:
    return await _present(db, await _key_or_404(db, user, key_id))


@router.patch("/keys/{key_id}/", response_model=KeyOut,
              responses={**NOT_FOUND, 409: {"description": "The key is revoked"}})
async def change_key(db: Db, user: CurrentUser, key_id: KeyId, body: KeyChange) -> KeyOut:
    key = await _key_or_404(db, user, key_id)
    ensure_role(user, Role.ADMIN)
    try:
        api_keys.change_key(key, name=body.name, device_limit=body.device_limit)
    except api_keys.PrintWatchKeyError as exc:
        raise HTTPException(409, detail=str(exc)) from None
    await db.commit()
    return await _present(db, key)


@router.delete("/keys/{key_id}/", status_code=204, response_class=Response, responses=NOT_FOUND)
async def revoke_key(db: Db, user: CurrentUser, key_id: KeyId) -> Response:
    """Revoke the key (it answers 217 from now on) and free its printers for another key."""
    key = await _key_or_404(db, user, key_id)
    ensure_role(user, Role.ADMIN)
    await api_keys.revoke_key(db, key)
    await db.commit()
    return Response(status_code=204)


@router.delete("/keys/{key_id}/devices/{device_id}/", status_code=204, response_class=Response,
               responses={404: {"description": "No such key in your organization, or no such device of it"}})
async def release_device(db: Db, user: CurrentUser, key_id: KeyId, device_id: DeviceId) -> Response:
    """Free a device of the key (a replaced printer): its place in the plan goes to the next new one."""
    key = await _key_or_404(db, user, key_id)
    ensure_role(user, Role.ADMIN)
    if not await api_keys.release_device(db, key, device_id):
        raise HTTPException(404, detail="Not found.")
    await db.commit()
    return Response(status_code=204)
