"""Linking: a member gets a one-time code; the agent trades it, anonymously, for its token."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from layerfleet.accounts.models import Role
from layerfleet.agents import linking
from layerfleet.agents.gateway import AgentGateway
from layerfleet.agents.models import OneTimeVerificationCode
from layerfleet.api.deps import AppServices, CurrentUser, Db, Gateway, base_url, ensure_role
from layerfleet.api.errors import FieldErrors
from layerfleet.api.obico_agent.bodies import client_address, read_body
from layerfleet.api.obico_v1.schemas import PrinterOut, printer_out
from layerfleet.fleet import service as fleet
from layerfleet.fleet.models import Printer
from layerfleet.fleet.rules import NAME_MAX_LENGTH
from layerfleet.ratelimit import RateLimiter

router = APIRouter(prefix="/api/v1")

MAX_VERIFY_BODY = 16 * 1024
NOT_FOUND = "Not found."


class VerificationCodeOut(BaseModel):
    id: int
    code: str
    expired_at: datetime
    verified_at: datetime | None
    printer_id: int | None
    printer: PrinterOut | None


def _code_out(code: OneTimeVerificationCode, printer: Printer | None, url: str) -> VerificationCodeOut:
    return VerificationCodeOut(
        id=code.id,
        code=code.code,
        expired_at=code.expired_at,
        verified_at=code.verified_at,
        printer_id=code.printer_id,
        printer=printer_out(printer, url, with_token=True) if printer is not None else None,
    )


@router.get(
    "/onetimeverificationcodes/",
    response_model=VerificationCodeOut,
    tags=["Obico v1: linking printers"],
    summary="Get a one-time code to link a printer's agent (or relink printer_id)",
    responses={404: {"description": "No such printer in your organization"}},
)
async def get_verification_code(
    request: Request,
    db: Db,
    user: CurrentUser,
    printer_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> VerificationCodeOut:
    printer = None
    if printer_id is not None:
        printer = await fleet.get_printer(db, user.organization_id, printer_id)
        if printer is None or printer.archived_at is not None:
            raise HTTPException(404, detail=NOT_FOUND)
    # Linking adds a printer to the organization (or takes one over): an admin's decision.
    ensure_role(user, Role.ADMIN)
    code = await linking.code_for(db, user, printer)
    await db.commit()
    return _code_out(code, printer, base_url(request))


def _printer_name(fields: dict[str, Any]) -> str | None:
    name = fields.get("name")
    if name is None:
        return None
    if not isinstance(name, str) or len(name.strip()) > NAME_MAX_LENGTH:
        raise FieldErrors({"name": [f"Must be a string of at most {NAME_MAX_LENGTH} characters."]})
    return name.replace("\x00", "").strip() or None


async def _verify(request: Request, db: Db, limiter: RateLimiter, gateway: AgentGateway, code: str | None
                  ) -> VerificationCodeOut:
    # Only wrong codes count: guessing is what the throttle stops, and a farm linking many
    # printers from one address with real codes must not be locked out.
    address = client_address(request)
    if limiter.blocked(address):
        raise HTTPException(429, detail="Request was throttled. Wait a few minutes and try again.")
    code = (code or "").strip()
    if not linking.is_well_formed(code):
        limiter.record(address)
        raise FieldErrors({"code": ["Enter the 6-digit code shown when you add a printer."]})
    body = await read_body(request, MAX_VERIFY_BODY, max_files=0)
    linked = await linking.verify(db, code, _printer_name(body.fields))
    if linked is None:
        limiter.record(address)
        # Unknown, expired and used codes answer alike.
        raise HTTPException(404, detail=NOT_FOUND)
    await db.commit()
    if linked.relinked:
        await gateway.disconnect(linked.printer.id)
    return _code_out(linked.code, linked.printer, base_url(request))


@router.post("/octo/verify/", response_model=VerificationCodeOut, include_in_schema=False)
async def verify_code(request: Request, db: Db, services: AppServices, gateway: Gateway,
                      code: Annotated[str | None, Query(max_length=32)] = None) -> VerificationCodeOut:
    return await _verify(request, db, services.verify_throttle, gateway, code)


# Some agents (and old OctoPrint-Obico versions) send the code with GET.
@router.get("/octo/verify/", response_model=VerificationCodeOut, include_in_schema=False)
async def verify_code_get(request: Request, db: Db, services: AppServices, gateway: Gateway,
                          code: Annotated[str | None, Query(max_length=32)] = None) -> VerificationCodeOut:
    return await _verify(request, db, services.verify_throttle, gateway, code)
