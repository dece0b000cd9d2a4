"""Access keys of the print-farm API (Eiger v3 HTTP Basic credentials), for signed-in members
(a Layerfleet extension): list your keys, create one (the secret is shown once), revoke one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import AccessKey
from layerfleet.api.deps import CurrentUser, Db

router = APIRouter(prefix="/api/v1/access_keys", tags=["Layerfleet: access keys"])

KeyId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class AccessKeyCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(default="", max_length=accounts.LABEL_MAX_LENGTH, description="A label to recognise the key by")


class AccessKeyOut(BaseModel):
    id: int
    name: str
    access_key: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class IssuedAccessKeyOut(AccessKeyOut):
    secret_key: str = Field(description="Shown only now; only its hash is stored")


def _out(key: AccessKey) -> dict[str, object]:
    return {"id": key.id, "name": key.name, "access_key": key.access_key, "created_at": key.created_at,
            "last_used_at": key.last_used_at, "revoked_at": key.revoked_at}


@router.get("/", response_model=list[AccessKeyOut])
async def list_access_keys(db: Db, user: CurrentUser) -> list[AccessKeyOut]:
    return [AccessKeyOut.model_validate(_out(key)) for key in await accounts.access_keys_of(db, user)]


@router.post("/", response_model=IssuedAccessKeyOut, status_code=201)
async def create_access_key(db: Db, user: CurrentUser, body: AccessKeyCreate) -> IssuedAccessKeyOut:
    issued = await accounts.create_access_key(db, user, body.name.strip())
    await db.commit()
    return IssuedAccessKeyOut.model_validate({**_out(issued.key), "secret_key": issued.secret})


@router.delete("/{key_id}/", status_code=204, response_class=Response,
               responses={404: {"description": "No such key of yours (or revoked already)"}})
async def revoke_access_key(db: Db, user: CurrentUser, key_id: KeyId) -> Response:
    if not await accounts.revoke_access_key(db, user, key_id):
        raise HTTPException(404, detail="Not found.")
    await db.commit()
    return Response(status_code=204)
