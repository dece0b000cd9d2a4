"""JSON errors everywhere, each API dialect in its own format.

The Obico v1 dialect (and our own pages' JSON) answers like Django REST framework:
``{"detail": "..."}`` for request-level errors and ``{"field": ["message", ...]}`` for
invalid values, with 400 rather than 422.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from layerfleet.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, Unavailable

NON_FIELD_ERRORS = "non_field_errors"


class FieldErrors(Invalid):
    """Invalid values of a request, by field; answered with 400 and nothing changed."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()), errors)
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


def domain_error_status(exc: DomainError) -> int:
    """The HTTP status of a domain refusal, the same in every dialect that uses HTTP statuses."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Invalid):
        return 400
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, Unavailable):
        return 503
    return 400


def domain_error_response(exc: DomainError) -> JSONResponse:
    """A domain refusal in Django REST framework's shape (Obico v1, agents, our pages' JSON)."""
    status = domain_error_status(exc)
    if isinstance(exc, Invalid) and exc.fields:
        return JSONResponse(exc.fields, status_code=status)
    detail = "Not found." if isinstance(exc, NotFound) else str(exc)
    return JSONResponse({"detail": detail}, status_code=status)
