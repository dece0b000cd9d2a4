"""Request dependencies: database session, the authenticated user, and role checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role, User
from layerfleet.agents.bus import CommandBus

SESSION_KEY = "sid"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


Db = Annotated[AsyncSession, Depends(get_db)]


def get_bus(request: Request) -> CommandBus:
    bus: CommandBus = request.app.state.command_bus
    return bus


Bus = Annotated[CommandBus, Depends(get_bus)]


def _unauthenticated(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": 'Token realm="api"'})


def same_origin(request: Request) -> bool:
    """Whether a browser request comes from our own pages (a cookie alone proves nothing)."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    configured: str | None = request.app.state.settings.base_url
    if configured:
        # Behind a proxy that rewrites Host, the public URL is what the browser sends.
        public = urlsplit(configured)
        if origin == f"{public.scheme}://{public.netloc}":
            return True
    return origin.split("://", 1)[-1] == request.headers.get("host", "")


async def current_user(request: Request, db: Db) -> User:
    header = request.headers.get("authorization")
    if header:
        scheme, _, key = header.partition(" ")
        if scheme.lower() not in {"token", "bearer"} or not key.strip():
            raise _unauthenticated("Invalid token header. Use 'Token <key>' or 'Bearer <key>'.")
        user = await accounts.user_for_api_key(db, key.strip())
        if user is None:
            raise _unauthenticated("Invalid token.")
        if db.dirty:
            await db.commit()
        return user

    user = await session_user(request, db)
    if user is None:
        raise _unauthenticated("Authentication credentials were not provided.")
    if request.method in UNSAFE_METHODS and not same_origin(request):
        # A cookie alone must not let another site change anything.
        raise HTTPException(403, detail="Cross-site request refused.")
    return user


async def session_user(request: Request, db: AsyncSession) -> User | None:
    """The user signed in by the session cookie, if the session is still valid."""
    key = request.session.get(SESSION_KEY) if "session" in request.scope else None
    if not isinstance(key, str):
        return None
    user = await accounts.user_for_web_session(db, key)
    if user is None:
        request.session.clear()
        return None
    if db.dirty:
        await db.commit()
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def require_role(role: Role) -> Callable[..., Coroutine[Any, Any, User]]:
    async def check(user: CurrentUser) -> User:
        ensure_role(user, role)
        return user

    return check


Operator = Annotated[User, Depends(require_role(Role.OPERATOR))]
Admin = Annotated[User, Depends(require_role(Role.ADMIN))]


def printer_changed(request: Request, organization_id: int, printer_id: int) -> None:
    """Tell the fleet's live pages that a request changed this printer."""
    request.app.state.fleet_events.publish(organization_id, [printer_id])


def base_url(request: Request) -> str:
    configured: str | None = request.app.state.settings.base_url
    return (configured or str(request.base_url)).rstrip("/")


def ensure_role(user: User, role: Role) -> None:
    """Role check made after the object lookup, so that an object of another
    organization answers 404 whatever the caller's role."""
    if not user.role_enum.allows(role):
        raise HTTPException(403, detail=f"You do not have permission to perform this action (needs {role.value}).")
