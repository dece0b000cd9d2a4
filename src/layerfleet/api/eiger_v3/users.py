"""GET /users: the organization's members."""

from __future__ import annotations

from fastapi import APIRouter, Request

from layerfleet.api.deps import Db
from layerfleet.api.eiger_v3.common import CallerDep, EigerRoute
from layerfleet.api.eiger_v3.query import DATES, Filter, Kind, ListSpec, parse_list_query
from layerfleet.api.eiger_v3.schemas import ListUsersResponse
from layerfleet.api.eiger_v3.views import user_view
from layerfleet.scheduling import queries

router = APIRouter(tags=["Users"], route_class=EigerRoute)

USERS = ListSpec(
    filters={
        "name": Filter(Kind.TEXT, ("eq",)),
        "email": Filter(Kind.TEXT, ("eq",)),
        "created_at": Filter(Kind.DATETIME, DATES),
        "updated_at": Filter(Kind.DATETIME, DATES),
    },
    sorts=("name", "email", "created_at"),
    default_sort="name",
    default_order="asc",
)


@router.get("/users", operation_id="listUsers")
async def list_users(request: Request, db: Db, caller: CallerDep) -> ListUsersResponse:
    page = await queries.members(db, caller.organization_id, parse_list_query(request.query_params, USERS))
    return ListUsersResponse(has_more_items=page.has_more_items, items=[user_view(user) for user in page.items])
