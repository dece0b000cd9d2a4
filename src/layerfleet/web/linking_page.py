"""The "Link a printer" page, and whether its linking code has been used yet.

The page's script (static/keys.js) gets the code from the linking API
(``/api/v1/onetimeverificationcodes/``); whether the code was used has no API, so it is answered
here for the signed-in browser only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from layerfleet.accounts.models import Role
from layerfleet.agents import linking
from layerfleet.api.deps import Db, base_url
from layerfleet.fleet import service as fleet
from layerfleet.web.pages import SignedIn, page_user, render, to_sign_in

router = APIRouter(include_in_schema=False)

CodeId = Annotated[int, Path(ge=1, le=2**31 - 1)]


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
async def code_status(db: Db, user: SignedIn, code_id: CodeId) -> CodeStatus:
    code = await linking.member_code(db, user, code_id)
    if code is None:
        raise HTTPException(404, detail="Not found.")
    printer = None
    if code.printer_id is not None:
        printer = await fleet.get_printer(db, user.organization_id, code.printer_id)
    return CodeStatus(
        id=code.id, code=code.code, linked=code.verified_at is not None, seconds_left=linking.seconds_left(code),
        printer_id=printer.id if printer else None, printer_name=printer.name if printer else None,
    )
