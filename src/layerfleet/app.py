"""The ASGI application: one domain core, served through each API dialect and the web pages."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.middleware.sessions import SessionMiddleware

from layerfleet import __version__, web
from layerfleet.agents.gateway import AgentGateway
from layerfleet.api import access_key_admin, eiger_v3, media, metrics_endpoint, obico_agent, obico_v1, printwatch
from layerfleet.api.body_limits import BodyLimits
from layerfleet.api.deps import SESSION_COOKIE
from layerfleet.api.error_handlers import install_error_handlers
from layerfleet.api.services import Services
from layerfleet.commands.bus import CommandBus, InProcessCommandBus
from layerfleet.config import Settings, load_settings
from layerfleet.database import create_engine, create_sessionmaker
from layerfleet.detection.runtime import Detector
from layerfleet.finetuning.jobs import FinetuneJobs
from layerfleet.fleet.events import FleetEvents, RedisFleetEvents
from layerfleet.jobs import create_job_queue
from layerfleet.library.slice_jobs import SliceJobs
from layerfleet.notifications.delivery import Notifier
from layerfleet.printwatch.inference import PrintWatchInference
from layerfleet.ratelimit import RateLimiter
from layerfleet.scheduling.dispatcher import Dispatcher
from layerfleet.scheduling.reports import ReportService
from layerfleet.timelapses.jobs import TimelapseJobs
from layerfleet.timelapses.recording import FrameRecorder, RecordingSink
from layerfleet.watching.frame_stream import FrameStream
from layerfleet.watching.pipeline import WatchingPipeline
from layerfleet.watching.scoring_worker import FrameScorer
from layerfleet.watching.sink import FrameSink, NullFrameSink

log = logging.getLogger(__name__)


_DRF_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Either {detail: message} or {field: [messages]} for invalid values",
    "additionalProperties": True,
}


_EIGER_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["message"], "properties": {"message": {"type": "string"}},
    "description": "With an X-Reference-ID header, also in the server's log line for the request",
}
PRINTWATCH_PATHS = ("/api/v2/", "/feedback")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI documents validation errors as 422; our dialects answer 400."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description,
                         tags=app.openapi_tags)
    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": _DRF_ERROR_SCHEMA}}}

    def eiger_error(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": _EIGER_ERROR_SCHEMA}}}

    for path, path_item in schema.get("paths", {}).items():
        for method, operation in path_item.items():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                invalid = eiger_error if path.startswith("/api/v3/") else error
                responses["400"] = invalid("Invalid request; nothing was changed")
            if path.startswith(PRINTWATCH_PATHS):
                # PrintWatch clients authenticate with the api_key inside the body; every answer is a 200.
                operation["security"] = []
                continue
            if path.startswith("/api/v3/"):
                operation["security"] = [{"basic": []}, {"session": []}]
                # Any Eiger request may be invalid, name a missing object or (a change) meet a
                # state that refuses it; each answer is the dialect's {"message"}.
                for status, description in (("400", "Invalid request; nothing was changed"),
                                            ("401", "Not authenticated"), ("404", "No such object"),
                                            ("413", "The request body is too large")):
                    responses.setdefault(status, eiger_error(description))
                if method != "get":
                    responses.setdefault("403", eiger_error("Your role does not allow this"))
                    responses.setdefault("409", eiger_error("The state of things does not allow this now"))
                continue
            if path.startswith("/api/"):
                responses.setdefault("401", error("Not authenticated"))
                if method != "get":
                    responses.setdefault("403", error("Your role does not allow this"))
    schema.setdefault("components", {})["securitySchemes"] = {
        "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                  "description": "`Token <key>` or `Bearer <key>`; create one with `layerfleet token create EMAIL`"},
        "basic": {"type": "http", "scheme": "basic",
                  "description": "Eiger v3: access key and secret key; create them with `layerfleet accesskey create`"},
        "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
    }
    schema["security"] = [{"token": []}, {"session": []}]
    app.openapi_schema = schema
    return schema


API_DESCRIPTION = """\
A self-hosted print-farm server that speaks three API dialects, each with its own credentials
and error shape:

- **Obico v1** (`/api/v1/`): printers, prints, linking, and the Obico agents' protocol.
  `Authorization: Token <key>`; errors as `{"detail": …}` or `{"field": ["…"]}`.
- **PrintWatch** (`/api/v2/`, `/feedback`): failure detection for the PrintWatch OctoPrint
  plugin and Klipper client; the API key travels in the body and every answer is HTTP 200
  with the outcome's code inside.
- **Eiger v3** (`/api/v3/`): the Markforged Eiger print-farm API (parts, builds, devices, print
  jobs, users) with HTTP Basic access keys; errors as `{"message": …}` with `X-Reference-ID`.
  Operations marked *Layerfleet extension* are ours, beyond the Eiger specification.

The dashboard's signed-in session cookie is accepted by every dialect but PrintWatch.
"""

_OBICO = "Obico v1 dialect (`/api/v1/`)"
_EIGER = "Eiger v3 dialect (`/api/v3/`)"
API_TAGS: list[dict[str, Any]] = [
    {"name": "Obico v1: printers", "description": f"{_OBICO}: printers, their settings and actions."},
    {"name": "Obico v1: prints", "description": f"{_OBICO}: prints, verdicts and feedback frames."},
    {"name": "Obico v1: linking printers", "description": f"{_OBICO}: one-time codes that link an agent."},
    {"name": "Obico v1: users", "description": f"{_OBICO}: the signed-in member."},
    {"name": "Layerfleet: alerts", "description": f"{_OBICO}, Layerfleet extension: failure alerts."},
    {"name": "Layerfleet: notifications",
     "description": f"{_OBICO}, Layerfleet extension: where alerts and print events are sent."},
    {"name": "Layerfleet: access keys", "description": "Layerfleet extension: a member's Eiger access keys."},
    {"name": "Layerfleet: PrintWatch keys", "description": "Layerfleet extension: the organization's PrintWatch keys."},
    {"name": "PrintWatch API",
     "description": "PrintWatch dialect (`/api/v2/`, `/feedback`): frames scored for failures."},
    {"name": "Parts", "description": f"{_EIGER}: STL uploads, slicing, slicer profiles, part versions."},
    {"name": "Builds", "description": f"{_EIGER}: plates of part versions, and build approvals."},
    {"name": "Devices", "description": f"{_EIGER}: printers, their status and queues."},
    {"name": "Print Jobs", "description": f"{_EIGER}: builds printing or printed on a device."},
    {"name": "Users", "description": f"{_EIGER}: the organization's members."},
]

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


def frame_stream(settings: Settings) -> FrameStream:
    """Where servers hand claimed frames to `layerfleet worker`s, and the workers take them."""
    assert settings.redis_url is not None  # Settings insists on it with scoring_on_workers
    return FrameStream(settings.redis_url, settings.data_dir, namespace=settings.redis_namespace,
                       backlog_limit=settings.scoring_backlog_limit,
                       claim_idle_seconds=settings.scoring_takeover_seconds)


def watching_scorer(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> FrameScorer:
    """A `layerfleet worker`'s share of watching: frames from the servers' stream, scored and
    applied there; pauses reach the agents over the Redis command bus, changes the dashboards
    over the Redis fleet events."""
    bus, events = _default_bus(settings), _default_events(settings)
    pipeline = WatchingPipeline(sessionmaker, bus, data_dir=settings.data_dir,
                                interval_seconds=settings.detection_interval_seconds,
                                batch_size=settings.detection_batch_size,
                                unlimited_hours=settings.unlimited_detection_hours, events=events)
    return FrameScorer(pipeline, frame_stream(settings), connections=(bus, events))


def timelapse_jobs(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], *, workers: int,
                   sole_worker: bool, detector: Callable[[], Detector | None] = lambda: None) -> TimelapseJobs:
    """Timelapse jobs on a queue of their own (in Redis, under their own keys): a process that
    runs only slice jobs never takes, and drops, a timelapse job."""
    queue = create_job_queue(settings, namespace=f"{settings.redis_namespace}:timelapses")
    return TimelapseJobs(sessionmaker, queue, settings, workers=workers, sole_worker=sole_worker,
                         detector=detector, stale_seconds=settings.timelapse_stale_seconds)


def finetune_jobs(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], *, workers: int,
                  sole_worker: bool, on_change: Callable[[], None] = lambda: None) -> FinetuneJobs:
    """Fine-tuning jobs on a queue of their own (in Redis, under their own keys): hours of
    training never hold up a slice or a video behind them."""
    queue = create_job_queue(settings, namespace=f"{settings.redis_namespace}:finetune")
    return FinetuneJobs(sessionmaker, queue, settings, workers=workers, sole_worker=sole_worker, on_change=on_change)


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
    gateway = AgentGateway(sessionmaker, bus, events=events,
                           offline_alert_seconds=settings.printer_offline_minutes * 60,
                           silent_after_seconds=settings.agent_silent_minutes * 60)

    pipeline: WatchingPipeline | None = None
    if frame_sink is None and settings.detection_enabled:
        pipeline = WatchingPipeline(
            sessionmaker, bus, data_dir=settings.data_dir, interval_seconds=settings.detection_interval_seconds,
            batch_size=settings.detection_batch_size, unlimited_hours=settings.unlimited_detection_hours,
            events=events, stream=frame_stream(settings) if settings.scoring_on_workers else None,
        )

    slicing = SliceJobs(
        sessionmaker, create_job_queue(settings), settings.data_dir, workers=settings.job_workers,
        sole_worker=settings.redis_url is None, timeout=settings.slice_timeout_seconds,
    )
    dispatcher = Dispatcher(sessionmaker, bus, settings.effective_secret_key)
    timelapses = timelapse_jobs(settings, sessionmaker, workers=settings.timelapse_workers,
                                sole_worker=settings.redis_url is None,
                                detector=lambda: pipeline.detector if pipeline else None)
    sink: FrameSink = frame_sink or pipeline or NullFrameSink()
    if settings.timelapse_enabled:
        sink = RecordingSink(FrameRecorder(sessionmaker, settings.data_dir,
                                           interval_seconds=settings.timelapse_frame_interval_seconds,
                                           min_free_bytes=settings.timelapse_min_free_bytes), sink)
    reports = ReportService(sessionmaker, settings.data_dir)
    finetuning = finetune_jobs(settings, sessionmaker, workers=settings.finetune_workers,
                               sole_worker=settings.redis_url is None,
                               on_change=lambda: pipeline.models.forget() if pipeline else None)
    notifier = Notifier(sessionmaker, settings, sole_worker=settings.redis_url is None)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        await events.start()
        gateway.start()
        if pipeline is not None:
            await pipeline.start()
        await slicing.start()
        await timelapses.start()
        await finetuning.start()
        await dispatcher.start()
        if settings.notification_workers:
            await notifier.start()
        try:
            yield
        finally:
            await notifier.close()
            await dispatcher.close()
            await reports.close()
            await slicing.close()
            await timelapses.close()
            await finetuning.close()
            await gateway.close_all()
            if pipeline is not None:
                await pipeline.close()
            await events.close()
            await bus.close()
            await engine.dispose()

    app = FastAPI(
        title="Layerfleet",
        version=__version__,
        description=API_DESCRIPTION,
        openapi_tags=API_TAGS,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = Services(
        settings=settings, engine=engine, sessionmaker=sessionmaker, command_bus=bus, agent_gateway=gateway,
        fleet_events=events, frame_sink=sink, watching=pipeline,
        slice_jobs=slicing, timelapses=timelapses, dispatcher=dispatcher, reports=reports,
        # The PrintWatch API borrows the pipeline's detector when there is one, else loads its own.
        printwatch_inference=PrintWatchInference(lambda: pipeline.detector if pipeline else None),
        notifier=notifier,
        verify_throttle=RateLimiter(VERIFY_CALLS, VERIFY_WINDOW_SECONDS),
        discovery_throttle=RateLimiter(DISCOVERY_CALLS, DISCOVERY_WINDOW_SECONDS),
        finetuning=finetuning,
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
    app.add_middleware(BodyLimits)
    install_error_handlers(app)
    app.include_router(obico_v1.router)
    app.include_router(obico_agent.router)
    app.include_router(printwatch.router)
    app.include_router(eiger_v3.router)
    app.include_router(access_key_admin.router)
    app.include_router(media.router)
    app.include_router(metrics_endpoint.router)
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
