"""What the application is made of, built once by ``layerfleet.app.create_app`` and handed to
request handlers through the typed dependencies of ``layerfleet.api.deps``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from layerfleet.agents.gateway import AgentGateway
from layerfleet.commands.bus import CommandBus
from layerfleet.config import Settings
from layerfleet.finetuning.jobs import FinetuneJobs
from layerfleet.fleet.events import FleetEvents
from layerfleet.library.slice_jobs import SliceJobs
from layerfleet.notifications.delivery import Notifier
from layerfleet.printwatch.inference import PrintWatchInference
from layerfleet.ratelimit import RateLimiter
from layerfleet.scheduling.dispatcher import Dispatcher
from layerfleet.scheduling.reports import ReportService
from layerfleet.timelapses.jobs import TimelapseJobs
from layerfleet.watching.pipeline import WatchingPipeline
from layerfleet.watching.sink import FrameSink


@dataclass
class Services:  # not frozen: tests put their own parts in
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    command_bus: CommandBus
    agent_gateway: AgentGateway
    fleet_events: FleetEvents
    # Where agents' pictures go: the watching pipeline, or a test's own sink.
    frame_sink: FrameSink
    watching: WatchingPipeline | None
    slice_jobs: SliceJobs
    timelapses: TimelapseJobs
    dispatcher: Dispatcher
    reports: ReportService
    printwatch_inference: PrintWatchInference
    # Sends the notification outbox (a loop started in the lifespan) and test messages.
    notifier: Notifier
    # Anonymous linking and LAN discovery, throttled per address.
    verify_throttle: RateLimiter
    discovery_throttle: RateLimiter
    # Fine-tuning the detector per organization (a poller and the queue's handler, in the lifespan).
    finetuning: FinetuneJobs
