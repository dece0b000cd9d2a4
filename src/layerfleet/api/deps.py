"""Request dependencies: database session, the authenticated user, and role checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role, User
from layerfleet.agents.bus import CommandBus

SESSION_USER_KEY = "user_id"
SESSION_AUTH_KEY = "auth"
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


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


def session_auth_marker(user: User) -> str:
    # Stored in the cookie beside the user id: a changed password ends older sessions.
    return (user.password_hash or "")[-16:]


def _origin_matches(request: Request) -> bool:
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None:
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
    if request.method in _UNSAFE_METHODS and not _origin_matches(request):
        # A cookie alone must not let another site change anything.
        raise HTTPException(403, detail="Cross-site request refused.")
    return user


async def session_user(request: Request, db: AsyncSession) -> User | None:
    """The user signed in by the session cookie, if the session is still valid."""
    user_id = request.session.get(SESSION_USER_KEY) if "session" in request.scope else None
    if not isinstance(user_id, int):
        return None
    user = await accounts.get_active_user(db, user_id)
    if user is None or request.session.get(SESSION_AUTH_KEY) != session_auth_marker(user):
        request.session.clear()
        return None
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def require_role(role: Role) -> Callable[..., Coroutine[Any, Any, User]]:
    async def check(user: CurrentUser) -> User:
        ensure_role(user, role)
        return user

    return check


Operator = Annotated[User, Depends(require_role(Role.OPERATOR))]
Admin = Annotated[User, Depends(require_role(Role.ADMIN))]


def base_url(request: Request) -> str:
    configured: str | None = request.app.state.settings.base_url
    return (configured or str(request.base_url)).rstrip("/")


def ensure_role(user: User, role: Role) -> None:
    """Role check made after the object lookup, so that an object of another
    organization answers 404 whatever the caller's role."""
    if not user.role_enum.allows(role):
        raise HTTPException(403, detail=f"You do not have permission to perform this action (needs {role.value}).")
