"""Linking printers and managing keys: the "Link a printer" and "Keys" pages.

The pages' scripts (static/keys.js) use the REST APIs where they exist: linking codes
(``/api/v1/onetimeverificationcodes/``), Eiger access keys (``/api/v1/access_keys/``) and PrintWatch
keys (``/api/v1/printwatch/keys/``). What has no API yet lives here, for the signed-in browser
only: whether a linking code has been used, and the member's own API tokens.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import ApiToken, Role, User
from layerfleet.agents.models import OneTimeVerificationCode
from layerfleet.api.deps import UNSAFE_METHODS, Db, base_url, same_origin, session_user
from layerfleet.database import utcnow
from layerfleet.fleet import service as fleet
from layerfleet.printwatch.keys import MAX_DEVICE_LIMIT, MAX_NAME_LENGTH
from layerfleet.web.pages import page_user, render, to_sign_in

router = APIRouter(include_in_schema=False)

TOKEN_NAME_MAX_LENGTH = 100  # ApiToken.name
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]


async def signed_in(request: Request, db: Db) -> User:
    """The member behind a page's own JSON call: the session cookie only, never an API token,
    so that a leaked token cannot mint more tokens."""
    user = await session_user(request, db)
    if user is None:
        raise HTTPException(401, detail="Your session has ended. Sign in again to continue.")
    if request.method in UNSAFE_METHODS and not same_origin(request):
        raise HTTPException(403, detail="Cross-site request refused.")
    return user


SignedIn = Annotated[User, Depends(signed_in)]


# --- Link a printer -------------------------------------------------------------------------------

@router.get("/link/", response_class=HTMLResponse)
async def link_page(request: Request, db: Db) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    can_link = user.role_enum.allows(Role.ADMIN)
    printers = await fleet.list_printers(db, user.organization_id) if can_link else []
    return render(request, "link.html", user, {
        "active": "link", "base_url": base_url(request), "can_link": can_link,
        "printers": [{"id": p.id, "name": p.name} for p in printers],
    })


class CodeStatus(BaseModel):
    id: int
    code: str
    linked: bool
    # Counted by the server: the browser's clock may be off by more than a code's last minutes.
    seconds_left: int
    printer_id: int | None
    printer_name: str | None


@router.get("/link/codes/{code_id}/", response_model=CodeStatus)
async def code_status(db: Db, user: SignedIn, code_id: RowId) -> CodeStatus:
    code = await db.get(OneTimeVerificationCode, code_id)
    if code is None or code.user_id != user.id:
        raise HTTPException(404, detail="Not found.")
    linked = code.verified_at is not None
    printer = None
    if code.printer_id is not None:
        printer = await fleet.get_printer(db, user.organization_id, code.printer_id)
    left = 0 if linked else max(0, int((code.expired_at - utcnow()).total_seconds()))
    return CodeStatus(
        id=code.id, code=code.code, linked=linked, seconds_left=left,
        printer_id=printer.id if printer else None, printer_name=printer.name if printer else None,
    )


# --- Keys -----------------------------------------------------------------------------------------

@router.get("/keys/", response_class=HTMLResponse)
async def keys_page(request: Request, db: Db) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    return render(request, "keys.html", user, {
        "active": "keys", "base_url": base_url(request),
        "can_manage_printwatch": user.role_enum.allows(Role.ADMIN),
        "max_device_limit": MAX_DEVICE_LIMIT, "printwatch_name_max": MAX_NAME_LENGTH,
        "token_name_max": TOKEN_NAME_MAX_LENGTH,
    })


def _label(value: str) -> str:
    # Control characters (NUL above all, which PostgreSQL refuses in text) have no place in a label.
    return "".join(ch for ch in value if unicodedata.category(ch) not in {"Cc", "Cs"}).strip()


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(default="", max_length=TOKEN_NAME_MAX_LENGTH)

    @field_validator("name")
    @classmethod
    def _clean_name(cls, value: str) -> str:
        return _label(value)


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
async def revoke_api_token(db: Db, user: SignedIn, token_id: RowId) -> Response:
    if not await accounts.revoke_api_token(db, user, token_id):
        raise HTTPException(404, detail="Not found.")
    await db.commit()
    return Response(status_code=204)
