"""Request dependencies: the application's services, database session, the authenticated
user, and role checks. Handlers take these typed dependencies, never ``app.state``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.requests import HTTPConnection
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role, User
from layerfleet.agents.gateway import AgentGateway
from layerfleet.api.services import Services
from layerfleet.commands.bus import CommandBus
from layerfleet.config import Settings
from layerfleet.fleet.events import FleetEvents
from layerfleet.library.slice_jobs import SliceJobs
from layerfleet.notifications.delivery import Notifier
from layerfleet.printwatch.inference import PrintWatchInference
from layerfleet.scheduling.dispatcher import Dispatcher
from layerfleet.scheduling.reports import ReportService
from layerfleet.timelapses.jobs import TimelapseJobs
from layerfleet.watching.sink import FrameSink

SESSION_KEY = "sid"
SESSION_COOKIE = "layerfleet_session"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def services_of(connection: HTTPConnection) -> Services:
    """The one place that reads the application's state (a request's or a websocket's)."""
    services: Services = connection.app.state.services
    return services


async def _services(connection: HTTPConnection) -> Services:
    # The dependencies here are coroutines: FastAPI runs a plain function in its thread pool,
    # a thread hop per dependency per request (a fifth of an agent's picture upload's CPU).
    return services_of(connection)


AppServices = Annotated[Services, Depends(_services)]


async def _settings(services: AppServices) -> Settings:
    return services.settings


AppSettings = Annotated[Settings, Depends(_settings)]


async def _agent_gateway(services: AppServices) -> AgentGateway:
    return services.agent_gateway


Gateway = Annotated[AgentGateway, Depends(_agent_gateway)]


async def _fleet_events(services: AppServices) -> FleetEvents:
    return services.fleet_events


FleetStream = Annotated[FleetEvents, Depends(_fleet_events)]


async def _frame_sink(services: AppServices) -> FrameSink:
    return services.frame_sink


PictureSink = Annotated[FrameSink, Depends(_frame_sink)]


async def _slice_jobs(services: AppServices) -> SliceJobs:
    return services.slice_jobs


SliceQueue = Annotated[SliceJobs, Depends(_slice_jobs)]


async def _timelapses(services: AppServices) -> TimelapseJobs:
    return services.timelapses


Timelapses = Annotated[TimelapseJobs, Depends(_timelapses)]


async def _dispatcher(services: AppServices) -> Dispatcher:
    return services.dispatcher


Dispatch = Annotated[Dispatcher, Depends(_dispatcher)]


async def _reports(services: AppServices) -> ReportService:
    return services.reports


Reports = Annotated[ReportService, Depends(_reports)]


async def _printwatch_inference(services: AppServices) -> PrintWatchInference:
    return services.printwatch_inference


Inference = Annotated[PrintWatchInference, Depends(_printwatch_inference)]


async def _notifier(services: AppServices) -> Notifier:
    return services.notifier


Notifications = Annotated[Notifier, Depends(_notifier)]


async def get_db(services: AppServices) -> AsyncIterator[AsyncSession]:
    async with services.sessionmaker() as session:
        yield session


Db = Annotated[AsyncSession, Depends(get_db)]


async def get_bus(services: AppServices) -> CommandBus:
    return services.command_bus


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
    configured = services_of(request).settings.base_url
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
    services_of(request).fleet_events.publish(organization_id, [printer_id])


def base_url(request: Request) -> str:
    configured = services_of(request).settings.base_url
    return (configured or str(request.base_url)).rstrip("/")


def ensure_role(user: User, role: Role) -> None:
    """Role check made after the object lookup, so that an object of another
    organization answers 404 whatever the caller's role."""
    if not user.role_enum.allows(role):
        raise HTTPException(403, detail=f"You do not have permission to perform this action (needs {role.value}).")
