"""What every Eiger route needs: its route class, the caller's organization, id parsing,
request bodies, and the domain errors whose status the dialect changes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from layerfleet.accounts.models import Organization, User
from layerfleet.api.deps import Db
from layerfleet.api.eiger_v3.auth import eiger_user
from layerfleet.api.eiger_v3.errors import EigerError, bad_request, validation_message
from layerfleet.api.eiger_v3.query import parse_uuid
from layerfleet.library.service import NotInLibrary


class EigerRoute(APIRoute):
    """A v3 route: its response leaves out the fields a view did not set (the spec's optional
    ones, see ``schemas``) rather than sending them as null."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **{**kwargs, "response_model_exclude_unset": True})


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
def unknown_ids_are_invalid() -> Iterator[None]:
    """Around ids from a request body or form, where the spec documents no 404 for the operation:
    one that names nothing is invalid input (400). Elsewhere ``NotFound`` answers 404 by itself."""
    try:
        yield
    except NotInLibrary as exc:
        raise EigerError(400, str(exc)) from None


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


__all__ = ["Caller", "CallerDep", "EigerError", "EigerRoute", "json_body", "path_uuid", "unknown_ids_are_invalid"]
