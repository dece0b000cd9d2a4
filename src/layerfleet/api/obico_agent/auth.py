"""Printer authentication: the agent's `Authorization: Token <printer token>`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from layerfleet.agents.gateway import token_from_header
from layerfleet.agents.linking import printer_for_token
from layerfleet.api.deps import Db
from layerfleet.fleet.models import Printer


def _unauthenticated(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": 'Token realm="printer"'})


async def current_printer(request: Request, db: Db) -> Printer:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthenticated("Authentication credentials were not provided.")
    token = token_from_header(header)
    if token is None:
        raise _unauthenticated("Invalid token header. Use 'Token <printer token>'.")
    printer = await printer_for_token(db, token)
    if printer is None:
        raise _unauthenticated("Invalid token.")
    return printer


AgentPrinter = Annotated[Printer, Depends(current_printer)]
