"""JSON errors everywhere, each API dialect in its own format.

The Obico v1 dialect (and our own pages' JSON) answers like Django REST framework:
``{"detail": "..."}`` for request-level errors and ``{"field": ["message", ...]}`` for
invalid values, with 400 rather than 422.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

NON_FIELD_ERRORS = "non_field_errors"


class FieldErrors(Exception):
    """Invalid values, by field; answered with 400 and nothing changed."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "missing":
        return "This field is required."
    if error.get("type") == "json_invalid":
        return "JSON parse error: the request body is not valid JSON."
    message = str(error.get("msg", "Invalid value."))
    return message.removeprefix("Value error, ")


def field_errors_from_pydantic(errors: Sequence[Any], *, drop_prefix: bool = True) -> dict[str, list[str]]:
    by_field: dict[str, list[str]] = {}
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if drop_prefix and loc and loc[0] in {"body", "query", "path", "header"}:
            loc = loc[1:]
        # A model-level error (the body is not an object) has no field name.
        field = ".".join(part for part in loc if not part.isdigit()) if loc else NON_FIELD_ERRORS
        by_field.setdefault(field or NON_FIELD_ERRORS, []).append(_message(error))
    return by_field


def _is_path_error(exc: RequestValidationError) -> bool:
    return any(error.get("loc", ("",))[0] == "path" for error in exc.errors())


def install_error_handlers(app: FastAPI) -> None:
    from layerfleet.api.eiger_v3 import errors as eiger

    @app.exception_handler(eiger.EigerError)
    async def _eiger(request: Request, exc: eiger.EigerError) -> JSONResponse:
        return eiger.error_response(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(FieldErrors)
    async def _field_errors(request: Request, exc: FieldErrors) -> JSONResponse:
        if eiger.is_eiger_request(request):
            return eiger.error_response(request, 400, "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.errors.items()))
        return JSONResponse(exc.errors, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if eiger.is_eiger_request(request):
            return eiger.error_response(request, 400, eiger.validation_message(list(exc.errors())))
        if _is_path_error(exc):
            # An id that cannot exist is simply not found, as a URL pattern would say.
            return JSONResponse({"detail": "Not found."}, status_code=404)
        errors = field_errors_from_pydantic(exc.errors())
        if list(errors) == [NON_FIELD_ERRORS] and any(e.get("type") == "json_invalid" for e in exc.errors()):
            return JSONResponse({"detail": errors[NON_FIELD_ERRORS][0]}, status_code=400)
        return JSONResponse(errors, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if eiger.is_eiger_request(request):
            message = {404: "No such endpoint in the Eiger v3 API", 405: f"Method {request.method} not allowed here"}
            text = message.get(exc.status_code, str(exc.detail))
            return eiger.error_response(request, exc.status_code, text, dict(exc.headers or {}))
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = "Not found."
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f'Method "{request.method}" not allowed.'
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if eiger.is_eiger_request(request):
            return eiger.error_response(request, 500, "The server failed to process the request", exc_info=True)
        reference = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", reference, request.method, request.url.path)
        return JSONResponse(
            {"detail": f"Internal server error (reference {reference})."},
            status_code=500,
            headers={"X-Reference-ID": reference},
        )
