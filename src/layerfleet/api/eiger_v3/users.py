"""GET /users: the organization's members."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from layerfleet.accounts.models import User
from layerfleet.api.deps import Db
from layerfleet.api.eiger_v3.common import CallerDep
from layerfleet.api.eiger_v3.query import COMPARISONS, Filter, Kind, ListSpec, fetch_page, parse_list_query
from layerfleet.api.eiger_v3.views import user_view

router = APIRouter(tags=["Users"])

DATES = tuple(op for op in COMPARISONS if op not in ("eq", "ne"))
USERS = ListSpec(
    filters={
        "name": Filter(User.name, Kind.TEXT, ("eq",)),
        "email": Filter(User.email, Kind.TEXT, ("eq",)),
        "created_at": Filter(User.created_at, Kind.DATETIME, DATES),
        "updated_at": Filter(User.updated_at, Kind.DATETIME, DATES),
    },
    sorts={"name": User.name, "email": User.email, "created_at": User.created_at},
    default_sort="name",
    default_order="asc",
)


@router.get("/users", operation_id="listUsers")
async def list_users(request: Request, db: Db, caller: CallerDep) -> dict[str, Any]:
    query = parse_list_query(request.query_params, USERS)
    page = await fetch_page(db, select(User).where(User.organization_id == caller.organization_id), query, User.id)
    return {"has_more_items": page.has_more_items, "items": [user_view(user) for user in page.items]}
