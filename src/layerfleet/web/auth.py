"""Signing in and out: the session cookie every page and the v1 API accept."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from layerfleet.accounts import service as accounts
from layerfleet.api.deps import SESSION_KEY, AppSettings, Db, same_origin
from layerfleet.errors import Invalid
from layerfleet.ratelimit import RateLimiter
from layerfleet.web.pages import templates

router = APIRouter(include_in_schema=False)

LOGIN_ATTEMPTS = 10
LOGIN_WINDOW_SECONDS = 600


# Failed sign-ins, counted per client address and per account: guessing one account's password
# from many addresses, or many accounts' from one address, is slowed down. A success forgives
# only that account's own failures, so signing in to one's own account between guesses at
# another's resets nothing.
throttle = RateLimiter(LOGIN_ATTEMPTS, LOGIN_WINDOW_SECONDS)


def _address_key(address: str) -> str:
    return f"address {address}"


def _account_key(email: str) -> str:
    try:
        email = accounts.normalize_email(email)
    except accounts.AccountError:
        email = email.strip()
    return f"account {email.lower()}"


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
    settings: AppSettings,
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
    address, account = _address_key(client), _account_key(email)
    if throttle.blocked(address) or throttle.blocked(account):
        context["error"] = "Too many failed sign-ins. Wait a few minutes and try again."
        return templates.TemplateResponse(request, "login.html", context, status_code=429)
    try:
        user = await accounts.authenticate_password(db, email, password)
    except Invalid:  # text no account can have (a NUL byte): a wrong email, as far as the user learns
        user = None
    if user is None:
        throttle.record(address, tag=account)
        throttle.record(account)
        context["error"] = "That email and password do not match an active account."
        return templates.TemplateResponse(request, "login.html", context, status_code=400)
    throttle.forgive(address, account)
    throttle.clear(account)
    previous = request.session.get(SESSION_KEY)
    if isinstance(previous, str):
        await accounts.end_web_session(db, previous)
    key = await accounts.start_web_session(db, user, settings.session_max_age_seconds)
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
