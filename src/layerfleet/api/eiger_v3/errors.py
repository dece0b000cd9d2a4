"""Errors in the Eiger dialect: ``{"message": …}`` with an ``X-Reference-ID`` header (an
integer, as the spec types it) that also appears in our log line for the request."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from layerfleet.api.errors import domain_error_status
from layerfleet.errors import DomainError

log = logging.getLogger("layerfleet.api.eiger_v3")

PREFIX = "/api/v3"


class EigerError(Exception):
    """A request the Eiger dialect refuses; ``message`` is shown to the API's user."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> EigerError:
    return EigerError(400, message)


def not_found(what: str) -> EigerError:
    return EigerError(404, f"{what} not found")


def is_eiger_request(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


def error_response(request: Request, status: int, message: str, headers: dict[str, str] | None = None,
                   *, exc_info: bool = False) -> JSONResponse:
    reference = secrets.randbelow(2**31 - 1) + 1
    level = logging.ERROR if status >= 500 else logging.INFO
    log.log(level, "eiger v3 %s %s -> %d %s (X-Reference-ID %d)", request.method, request.url.path, status,
            message, reference, exc_info=exc_info)
    return JSONResponse({"message": message}, status_code=status,
                        headers={**(headers or {}), "X-Reference-ID": str(reference)})


def domain_error_response(request: Request, exc: DomainError) -> JSONResponse:
    """A domain refusal in the Eiger dialect: ``{"message"}`` with the family's status."""
    return error_response(request, domain_error_status(exc), str(exc))


def validation_message(errors: list[Any]) -> str:
    """One sentence from pydantic's errors, naming the parameter or body field at fault."""
    parts = []
    for error in errors[:3]:
        loc = [str(p) for p in error.get("loc", ()) if str(p) not in {"body", "query", "path"}]
        where = ".".join(loc) or "request body"
        if error.get("type") == "missing":
            parts.append(f"{where} is required")
        elif error.get("type") == "json_invalid":
            parts.append("the request body is not valid JSON")
        elif error.get("type") == "extra_forbidden":
            parts.append(f"{where} is not a known field")
        else:
            parts.append(f"{where}: {str(error.get('msg', 'invalid value')).removeprefix('Value error, ')}")
    return "; ".join(parts) or "invalid request"
