"""Signing in and out: the session cookie every page and the v1 API accept."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from layerfleet.accounts import service as accounts
from layerfleet.api.deps import SESSION_KEY, Db, same_origin, services_of
from layerfleet.ratelimit import RateLimiter
from layerfleet.web.pages import templates

router = APIRouter(include_in_schema=False)

LOGIN_ATTEMPTS = 10
LOGIN_WINDOW_SECONDS = 600


# Failed sign-ins per client address.
throttle = RateLimiter(LOGIN_ATTEMPTS, LOGIN_WINDOW_SECONDS)


def _safe_next(target: str | None) -> str:
    # Only local paths: a login link must not send the user to another site.
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@router.get("/accounts/login/", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> Response:
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "user": None})


@router.post("/accounts/login/")
async def login(
    request: Request,
    db: Db,
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str | None, Form()] = None,
) -> Response:
    client = request.client.host if request.client else "unknown"
    context = {"email": email, "next": _safe_next(next), "user": None}
    if not same_origin(request):
        # Another site must not sign a visitor in to an account of its choosing.
        context["error"] = "This sign-in form was sent from another site. Open the sign-in page and try again."
        return templates.TemplateResponse(request, "login.html", context, status_code=403)
    if throttle.blocked(client):
        context["error"] = "Too many failed sign-ins from your address. Wait a few minutes and try again."
        return templates.TemplateResponse(request, "login.html", context, status_code=429)
    user = await accounts.authenticate_password(db, email, password)
    if user is None:
        throttle.record(client)
        context["error"] = "That email and password do not match an active account."
        return templates.TemplateResponse(request, "login.html", context, status_code=400)
    throttle.clear(client)
    previous = request.session.get(SESSION_KEY)
    if isinstance(previous, str):
        await accounts.end_web_session(db, previous)
    key = await accounts.start_web_session(db, user, services_of(request).settings.session_max_age_seconds)
    await db.commit()
    request.session.clear()
    request.session[SESSION_KEY] = key
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/accounts/logout/")
async def logout(request: Request, db: Db) -> Response:
    key = request.session.get(SESSION_KEY)
    if isinstance(key, str):
        await accounts.end_web_session(db, key)
        await db.commit()
    request.session.clear()
    return RedirectResponse("/accounts/login/", status_code=303)
