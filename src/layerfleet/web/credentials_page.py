"""The Keys page: a member's credentials for the APIs and the organization's PrintWatch keys.

The page's script (static/keys.js) uses the REST APIs where they exist: Eiger access keys
(``/api/v1/access_keys/``) and PrintWatch keys (``/api/v1/printwatch/keys/``). The member's own
API tokens have no API yet: they are listed, issued and revoked here, for the signed-in browser
only, through the same account functions as every other client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import ApiToken, Role
from layerfleet.api.deps import Db, base_url
from layerfleet.printwatch.api_keys import MAX_DEVICE_LIMIT, MAX_NAME_LENGTH
from layerfleet.web.pages import SignedIn, page_user, render, to_sign_in

router = APIRouter(include_in_schema=False)

TokenId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get("/keys/", response_class=HTMLResponse)
async def keys_page(request: Request, db: Db) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    return render(request, "keys.html", user, {
        "active": "keys", "base_url": base_url(request),
        "can_manage_printwatch": user.role_enum.allows(Role.ADMIN),
        "max_device_limit": MAX_DEVICE_LIMIT, "printwatch_name_max": MAX_NAME_LENGTH,
        "token_name_max": accounts.LABEL_MAX_LENGTH,
    })


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(default="", max_length=accounts.LABEL_MAX_LENGTH)

    @field_validator("name")
    @classmethod
    def _clean_name(cls, value: str) -> str:
        return accounts.clean_label(value)


class TokenOut(BaseModel):
    id: int
    name: str
    key_prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class IssuedTokenOut(TokenOut):
    key: str = Field(description="Shown only now; only its hash is stored")


def _token_out(token: ApiToken) -> dict[str, object]:
    return {"id": token.id, "name": token.name, "key_prefix": token.key_prefix, "created_at": token.created_at,
            "last_used_at": token.last_used_at, "revoked_at": token.revoked_at}


@router.get("/keys/api_tokens/", response_model=list[TokenOut])
async def list_api_tokens(db: Db, user: SignedIn) -> list[TokenOut]:
    return [TokenOut.model_validate(_token_out(t)) for t in await accounts.api_tokens_of(db, user)]


@router.post("/keys/api_tokens/", response_model=IssuedTokenOut, status_code=201)
async def create_api_token(db: Db, user: SignedIn, body: TokenCreate) -> IssuedTokenOut:
    issued = await accounts.create_api_token(db, user, body.name)
    await db.commit()
    return IssuedTokenOut.model_validate({**_token_out(issued.token), "key": issued.key})


@router.delete("/keys/api_tokens/{token_id}/", status_code=204, response_class=Response)
async def revoke_api_token(db: Db, user: SignedIn, token_id: TokenId) -> Response:
    if not await accounts.revoke_api_token(db, user, token_id):
        raise HTTPException(404, detail="Not found.")
    await db.commit()
    return Response(status_code=204)
