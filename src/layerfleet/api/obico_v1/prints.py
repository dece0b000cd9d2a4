"""Print API (seed 002)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response

from layerfleet.accounts.models import Role, User
from layerfleet.api.deps import AppSettings, CurrentUser, Db, base_url, ensure_role
from layerfleet.api.errors import FieldErrors
from layerfleet.api.obico_v1.schemas import PrintOut, print_out
from layerfleet.prints import service as prints
from layerfleet.prints.models import Print
from layerfleet.prints.rules import PrintChanges, PrintFilter, PrintSorting
from layerfleet.timelapses import service as timelapses

router = APIRouter(tags=["Obico v1: prints"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such print in your organization"}}
MAX_PAGE = 1000

PrintId = Annotated[int, Path(ge=1, le=2**31 - 1)]


async def _print_or_404(db: Db, user: User, print_id: int) -> Print:
    found = await prints.get_print(db, user.organization_id, print_id)
    if found is None:
        raise HTTPException(404, detail="Not found.")
    return found


@router.get("/prints/", response_model=list[PrintOut])
async def list_prints(
    request: Request,
    db: Db,
    user: CurrentUser,
    filter: Annotated[PrintFilter | None, Query()] = None,
    sorting: Annotated[PrintSorting | None, Query()] = None,
    start: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="Objects to skip; only with sorting")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="Objects to return; only with sorting")] = None,
) -> list[PrintOut]:
    if sorting is None:
        errors = {
            name: ["Not valid if sorting is absent."]
            for name, value in (("start", start), ("limit", limit))
            if value is not None
        }
        if errors:
            raise FieldErrors(errors)
    found = await prints.list_prints(
        db, user.organization_id, print_filter=filter, sorting=sorting, start=start or 0, limit=limit
    )
    url = base_url(request)
    return [print_out(p, url) for p in found]


async def get_print(request: Request, db: Db, user: CurrentUser, print_id: PrintId) -> PrintOut:
    return print_out(await _print_or_404(db, user, print_id), base_url(request))


async def update_print(
    request: Request,
    db: Db,
    user: CurrentUser,
    print_id: PrintId,
    changes: Annotated[PrintChanges | None, Body()] = None,
) -> PrintOut:
    found = await _print_or_404(db, user, print_id)
    ensure_role(user, Role.OPERATOR)
    if changes is not None:
        try:
            prints.apply_changes(found, changes)
        except prints.UnknownFeedback as exc:
            raise FieldErrors(
                {"printshotfeedback_set": [f"No feedback with id {i} on this print." for i in exc.feedback_ids]}
            ) from None
        await db.commit()
    return print_out(found, base_url(request))


async def delete_print(db: Db, user: CurrentUser, settings: AppSettings, print_id: PrintId) -> Response:
    found = await _print_or_404(db, user, print_id)
    ensure_role(user, Role.ADMIN)
    organization_id = found.organization_id
    await prints.delete_print(db, found)
    await db.commit()
    # After the commit: a failed delete must not have lost the print's videos.
    await timelapses.remove_print_media(settings.data_dir, organization_id, print_id)
    return Response(status_code=200)


# The seed names the single-print path both /prints/{id}/ and /print/{id}/; both answer.
for prefix, in_schema in (("/prints", True), ("/print", False)):
    router.add_api_route(f"{prefix}/{{print_id}}/", get_print, methods=["GET"], response_model=PrintOut,
                         responses=NOT_FOUND, include_in_schema=in_schema)
    router.add_api_route(f"{prefix}/{{print_id}}/", update_print, methods=["PATCH"], response_model=PrintOut,
                         responses=NOT_FOUND, include_in_schema=in_schema)
    router.add_api_route(f"{prefix}/{{print_id}}/", delete_print, methods=["DELETE"], response_class=Response,
                         responses={200: {"content": {}}, **NOT_FOUND}, include_in_schema=in_schema)


@router.get("/prints/{print_id}/prediction_json", response_model=list[dict[str, Any]], responses=NOT_FOUND)
async def prediction_json(db: Db, user: CurrentUser, print_id: PrintId) -> list[dict[str, Any]]:
    found = await _print_or_404(db, user, print_id)
    return await prints.prediction_records(db, found)
