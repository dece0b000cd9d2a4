"""The application's exception handlers: each error reaches the client in the format of the
dialect it spoke (Eiger v3 by its path, Django REST framework's shape for everything else)."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from layerfleet.api.eiger_v3 import errors as eiger
from layerfleet.api.errors import NON_FIELD_ERRORS, domain_error_response, field_errors_from_pydantic
from layerfleet.errors import DomainError

log = logging.getLogger("layerfleet.api.errors")


def _is_path_error(exc: RequestValidationError) -> bool:
    return any(error.get("loc", ("",))[0] == "path" for error in exc.errors())


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route answers at the request's path. The router names only the first
    route whose path matched, though one path often has a route per method."""
    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(eiger.EigerError)
    async def _eiger(request: Request, exc: eiger.EigerError) -> JSONResponse:
        return eiger.error_response(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        if eiger.is_eiger_request(request):
            return eiger.domain_error_response(request, exc)
        return domain_error_response(exc)

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
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request))
        if eiger.is_eiger_request(request):
            message = {404: "No such endpoint in the Eiger v3 API", 405: f"Method {request.method} not allowed here"}
            text = message.get(exc.status_code, str(exc.detail))
            return eiger.error_response(request, exc.status_code, text, headers)
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = "Not found."
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f'Method "{request.method}" not allowed.'
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

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
