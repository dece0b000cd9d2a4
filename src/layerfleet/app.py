"""The ASGI application: one domain core, served through each API dialect and the web pages."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from layerfleet import __version__, web
from layerfleet.agents.gateway import AgentGateway
from layerfleet.api import access_keys, eiger_v3, media, obico_agent, obico_v1, printwatch
from layerfleet.api.error_handlers import install_error_handlers
from layerfleet.api.services import Services
from layerfleet.commands.bus import CommandBus, InProcessCommandBus
from layerfleet.config import Settings, load_settings
from layerfleet.database import create_engine, create_sessionmaker
from layerfleet.fleet.events import FleetEvents, RedisFleetEvents
from layerfleet.jobs import create_job_queue
from layerfleet.library.slice_jobs import SliceJobs
from layerfleet.printwatch.inference import PrintWatchInference
from layerfleet.ratelimit import RateLimiter
from layerfleet.scheduling.dispatcher import Dispatcher
from layerfleet.scheduling.reports import ReportService
from layerfleet.watching.pipeline import WatchingPipeline
from layerfleet.watching.sink import FrameSink, NullFrameSink

log = logging.getLogger(__name__)

SESSION_COOKIE = "layerfleet_session"

_DRF_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Either {detail: message} or {field: [messages]} for invalid values",
    "additionalProperties": True,
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI documents validation errors as 422; our dialects answer 400."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": _DRF_ERROR_SCHEMA}}}

    for path, path_item in schema.get("paths", {}).items():
        for method, operation in path_item.items():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses["400"] = error("Invalid request; nothing was changed")
            if path.startswith("/api/"):
                responses.setdefault("401", error("Not authenticated"))
                if method != "get":
                    responses.setdefault("403", error("Your role does not allow this"))
    schema.setdefault("components", {})["securitySchemes"] = {
        "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                  "description": "`Token <key>` or `Bearer <key>`; create one with `layerfleet token create EMAIL`"},
        "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
    }
    schema["security"] = [{"token": []}, {"session": []}]
    app.openapi_schema = schema
    return schema


# Anonymous linking: a code has a million values, so guessing must stay slow.
VERIFY_CALLS, VERIFY_WINDOW_SECONDS = 20, 600
# LAN discovery: an agent polls every 5 s, 120 times at most.
DISCOVERY_CALLS, DISCOVERY_WINDOW_SECONDS = 300, 600


def _default_bus(settings: Settings) -> CommandBus:
    if settings.redis_url:
        from layerfleet.commands.redis_bus import RedisCommandBus

        return RedisCommandBus(settings.redis_url)
    return InProcessCommandBus()


def _default_events(settings: Settings) -> FleetEvents:
    if settings.redis_url:
        return RedisFleetEvents(settings.redis_url, namespace=settings.redis_namespace)
    return FleetEvents()


def create_app(
    settings: Settings | None = None,
    *,
    command_bus: CommandBus | None = None,
    frame_sink: FrameSink | None = None,
) -> FastAPI:
    settings = settings or load_settings()
    engine = create_engine(settings.effective_database_url, echo=settings.db_echo)
    bus = command_bus or _default_bus(settings)
    sessionmaker = create_sessionmaker(engine)
    events = _default_events(settings)
    gateway = AgentGateway(sessionmaker, bus, events=events)

    pipeline: WatchingPipeline | None = None
    if frame_sink is None and settings.detection_enabled:
        pipeline = WatchingPipeline(
            sessionmaker, bus, data_dir=settings.data_dir, interval_seconds=settings.detection_interval_seconds,
            batch_size=settings.detection_batch_size, unlimited_hours=settings.unlimited_detection_hours,
            events=events,
        )

    slicing = SliceJobs(
        sessionmaker, create_job_queue(settings), settings.data_dir, workers=settings.job_workers,
        sole_worker=settings.redis_url is None, timeout=settings.slice_timeout_seconds,
    )
    dispatcher = Dispatcher(sessionmaker, bus, settings.effective_secret_key)
    reports = ReportService(sessionmaker, settings.data_dir)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        await events.start()
        if pipeline is not None:
            await pipeline.start()
        await slicing.start()
        await dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.close()
            await reports.close()
            await slicing.close()
            await gateway.close_all()
            if pipeline is not None:
                await pipeline.close()
            await events.close()
            await bus.close()
            await engine.dispose()

    app = FastAPI(
        title="Layerfleet",
        version=__version__,
        description="Print-farm server: Obico-compatible REST API v1 (printers, prints).",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = Services(
        settings=settings, engine=engine, sessionmaker=sessionmaker, command_bus=bus, agent_gateway=gateway,
        fleet_events=events, frame_sink=frame_sink or pipeline or NullFrameSink(), watching=pipeline,
        slice_jobs=slicing, dispatcher=dispatcher, reports=reports,
        # The PrintWatch API borrows the pipeline's detector when there is one, else loads its own.
        printwatch_inference=PrintWatchInference(lambda: pipeline.detector if pipeline else None),
        verify_throttle=RateLimiter(VERIFY_CALLS, VERIFY_WINDOW_SECONDS),
        discovery_throttle=RateLimiter(DISCOVERY_CALLS, DISCOVERY_WINDOW_SECONDS),
    )
    app.state.card_feed = web.fleet.CardFeed(sessionmaker, events)

    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.effective_secret_key,
        session_cookie=SESSION_COOKIE,
        max_age=settings.session_max_age_seconds,
        same_site="lax",
        https_only=settings.session_cookie_secure,
    )
    install_error_handlers(app)
    app.include_router(obico_v1.router)
    app.include_router(obico_agent.router)
    app.include_router(printwatch.router)
    app.include_router(eiger_v3.router)
    app.include_router(access_keys.router)
    app.include_router(media.router)
    app.include_router(web.router)
    app.mount("/static/swagger-ui", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")
    app.mount("/static", StaticFiles(packages=[("layerfleet.web", "static")]), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        # Served from the package: pages never load anything from a CDN.
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Layerfleet API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
