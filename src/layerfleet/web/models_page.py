"""The Detector page (admins): the organization's fine-tuned models with their figures, a button
that starts a fine-tuning on the organization's evidence (a job on the queue), and one that
rolls back to the model used before. Plain forms: each button is one POST, answered with the
page again (303 after a change; the refusal in words, with its status, otherwise)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from layerfleet.accounts.models import Role, User
from layerfleet.api.deps import AppServices, AppSettings, Db
from layerfleet.errors import Conflict, Forbidden, Invalid
from layerfleet.finetuning import service
from layerfleet.finetuning.jobs import training_available
from layerfleet.web.pages import SignedIn, page_user, render, to_sign_in

router = APIRouter(include_in_schema=False)


async def _page(request: Request, db: Db, user: User, *, error: str | None = None, status_code: int = 200) -> Response:
    if not user.role_enum.allows(Role.ADMIN):
        return render(request, "models.html", user, {"active": "models", "forbidden": True}, status_code=403)
    versions = await service.versions(db, user.organization_id)
    in_use = await service.current(db, user.organization_id)
    return render(request, "models.html", user, {
        "active": "models", "forbidden": False, "versions": versions, "in_use": in_use, "error": error,
        "notice": request.query_params.get("done"), "unavailable": training_available(),
        "running": any(v.status in service.ACTIVE for v in versions),
    }, status_code=status_code)


@router.get("/models/", response_class=HTMLResponse)
async def models_page(request: Request, db: Db) -> Response:
    user = await page_user(request, db)
    if user is None:
        return to_sign_in(request)
    return await _page(request, db, user)


@router.post("/models/finetune", response_class=HTMLResponse)
async def finetune(request: Request, db: Db, user: SignedIn, settings: AppSettings, services: AppServices) -> Response:
    # A refusal comes before anything is written: the page is rendered from the same session.
    try:
        service.require_admin(user)
        await service.start(db, user.organization_id, settings.data_dir, created_by=user)
    except (Invalid, Conflict, Forbidden) as exc:
        status = 400 if isinstance(exc, Invalid) else 409 if isinstance(exc, Conflict) else 403
        return await _page(request, db, user, error=str(exc), status_code=status)
    await db.commit()
    services.finetuning.wake()
    return RedirectResponse("/models/?done=started", status_code=303)


@router.post("/models/rollback", response_class=HTMLResponse)
async def rollback(request: Request, db: Db, user: SignedIn, services: AppServices) -> Response:
    try:
        service.require_admin(user)
        await service.rollback(db, user.organization_id)
    except (Conflict, Forbidden) as exc:
        return await _page(request, db, user, error=str(exc), status_code=409 if isinstance(exc, Conflict) else 403)
    await db.commit()
    if services.watching is not None:
        services.watching.models.forget()
    return RedirectResponse("/models/?done=rolled_back", status_code=303)
