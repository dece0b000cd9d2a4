"""What every web page shares: the templates, the signed-in user, the way to the sign-in page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import User
from layerfleet.api.deps import UNSAFE_METHODS, Db, same_origin, session_user

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


async def page_user(request: Request, db: AsyncSession) -> User | None:
    """The signed-in user of a page request, or None (then answer with :func:`to_sign_in`)."""
    return await session_user(request, db)


async def signed_in(request: Request, db: Db) -> User:
    """The member behind a page's own JSON call: the session cookie only, never an API token,
    so that a leaked token cannot mint more tokens."""
    user = await session_user(request, db)
    if user is None:
        raise HTTPException(401, detail="Your session has ended. Sign in again to continue.")
    if request.method in UNSAFE_METHODS and not same_origin(request):
        raise HTTPException(403, detail="Cross-site request refused.")
    return user


SignedIn = Annotated[User, Depends(signed_in)]


def to_sign_in(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/accounts/login/?next={quote(target, safe='/')}", status_code=303)


def render(request: Request, template: str, user: User, context: dict[str, Any], status_code: int = 200) -> Response:
    return templates.TemplateResponse(
        request, template, {"user": user, "organization": user.organization.name, **context}, status_code=status_code
    )


def session_ended() -> Response:
    """The answer to a page's own script when its session is gone (the script says so in words)."""
    return JSONResponse({"detail": "Your session has ended. Sign in again to continue."}, status_code=401)


def duration_text(seconds: float | None) -> str:
    """As the pages' script writes durations (lf.duration): "1 h 05 min", "12 min", "40 s"."""
    if seconds is None:
        return "–"
    whole = max(0, round(seconds))
    hours, minutes = whole // 3600, whole % 3600 // 60
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min"
    return f"{whole} s"
