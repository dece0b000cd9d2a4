"""What every Eiger route needs: the caller's organization, id parsing, domain errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from layerfleet.accounts.models import Organization, User
from layerfleet.api.deps import Db
from layerfleet.api.eiger_v3.auth import eiger_user
from layerfleet.api.eiger_v3.errors import EigerError, bad_request, validation_message
from layerfleet.api.eiger_v3.query import parse_uuid
from layerfleet.library.service import NotInLibrary


@dataclass
class Caller:
    user: User
    organization: Organization

    @property
    def organization_id(self) -> int:
        return self.organization.id

    @property
    def approvals_enabled(self) -> bool:
        return self.organization.build_approvals_enabled


async def caller(db: Db, user: Annotated[User, Depends(eiger_user)]) -> Caller:
    organization = await db.get(Organization, user.organization_id)
    assert organization is not None
    return Caller(user, organization)


CallerDep = Annotated[Caller, Depends(caller)]


def path_uuid(name: str, raw: str) -> str:
    return parse_uuid(name, raw)


@contextmanager
def domain_errors(missing_status: int = 404) -> Iterator[None]:
    """Library refusals in the dialect's words. ``missing_status``: what an unknown id answers;
    400 where the spec documents no 404 for the operation (an id in the request that names
    nothing is then invalid input)."""
    try:
        yield
    except NotInLibrary as exc:
        raise EigerError(missing_status, str(exc)) from None


Body = TypeVar("Body", bound=BaseModel)


async def json_body(request: Request, model: type[Body]) -> Body:
    """The request's JSON body as ``model``; anything else is a 400 naming what is wrong."""
    raw = await request.body()
    if not raw.strip():
        raise bad_request("A JSON request body is required")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise bad_request(validation_message(exc.errors())) from None


__all__ = ["Caller", "CallerDep", "EigerError", "domain_errors", "json_body", "path_uuid"]
