"""Scoring on `layerfleet worker` processes (LAYERFLEET_SCORING_ON_WORKERS): servers only receive
pictures; workers take the frames from Redis, score and apply them; a worker killed with
SIGKILL mid-batch loses no frame and scores none twice."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from agent_helpers import jpeg
from conftest import Farm
from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.detection.models import PredictionFrame
from layerfleet.fleet.models import Printer
from layerfleet.prints.models import Print
from layerfleet.watching.frame_stream import GROUP, FrameStream
from layerfleet.watching.pipeline import PendingFrame, WatchingPipeline
from redis_helpers import forget_namespace
from test_notifications import free_port
from test_watching import watched_printer
from test_worker import REDIS_URL, _redis_answers

TAKEOVER_SECONDS = 2.0


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    if not await _redis_answers():
        if os.environ.get("CI"):
            pytest.fail("Redis must run at 127.0.0.1:6379 in CI")
        pytest.skip("no Redis at 127.0.0.1:6379")
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    await forget_namespace(REDIS_URL, name)


def scaled(settings: Settings, namespace: str, **changes: Any) -> Settings:
    return settings.model_copy(update={
        "redis_url": REDIS_URL, "redis_namespace": namespace, "scoring_on_workers": True, "detection_enabled": True,
        "unlimited_detection_hours": True, "scoring_takeover_seconds": TAKEOVER_SECONDS, **changes})


async def start_worker(settings: Settings, *extra_env: tuple[str, str]) -> asyncio.subprocess.Process:
    env = {**os.environ, "LAYERFLEET_DATA_DIR": str(settings.data_dir),
           "LAYERFLEET_DATABASE_URL": settings.effective_database_url, "LAYERFLEET_REDIS_URL": REDIS_URL,
           "LAYERFLEET_REDIS_NAMESPACE": settings.redis_namespace, "LAYERFLEET_SECRET_KEY": "test-secret",
           "LAYERFLEET_SCORING_ON_WORKERS": "true", "LAYERFLEET_UNLIMITED_DETECTION_HOURS": "true",
           "LAYERFLEET_SCORING_TAKEOVER_SECONDS": str(TAKEOVER_SECONDS),
           "LAYERFLEET_DETECTION_INTERVAL_SECONDS": str(settings.detection_interval_seconds),
           "LAYERFLEET_NOTIFICATION_WORKERS": "false", **dict(extra_env)}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "layerfleet", "worker", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def stop(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()
    assert process.stdout is not None
    return (await process.stdout.read()).decode(errors="replace")


async def until(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)
    return result


async def test_a_server_scores_nothing_itself_and_a_worker_scores_what_it_received(
        settings: Settings, farm: Farm, namespace: str, app: Any) -> None:
    """The whole path across processes: an upload to the server → Redis → a worker process
    scores it and pauses the printer through the Redis command bus → the agent's websocket."""
    from layerfleet.printer_agent.connector import PrinterState
    from layerfleet.printer_agent.runner import AgentRunner, Cadence, Stopped
    from layerfleet.simulator.printer import SimulatedCamera, SimulatedPrinter, SimulationOptions
    from live_server import LiveServer

    server_settings = scaled(settings, namespace, detection_interval_seconds=0.2)
    owner = await farm.member()
    printer = await farm.printer(owner, name="Sim")
    simulated = SimulatedPrinter("Sim", SimulationOptions(
        speed=10.0, fail_rate=1.0, min_print_minutes=6, max_print_minutes=6, idle_seconds=(3600.0, 3600.0),
        heating_rate=20.0, first_print_preheated=True), seed=21)
    simulated.idle_left = 0.5
    cadence = Cadence(idle_status=1.0, active_status=0.3, watched_picture=0.3, unwatched_picture=0.3,
                      min_backoff=0.1, max_backoff=0.5, http_timeout=5.0)
    worker = await start_worker(server_settings)
    server = LiveServer(server_settings)
    try:
        with server as url:
            runner = AgentRunner(url, printer.auth_token, simulated, SimulatedCamera(simulated), cadence=cadence)
            task = asyncio.create_task(runner.run())
            try:
                def state() -> PrinterState:
                    return simulated.state

                deadline = time.monotonic() + 90
                while state() is not PrinterState.PAUSED:
                    assert time.monotonic() < deadline, f"not paused: {state()}"
                    assert worker.returncode is None, "the worker died"
                    await asyncio.sleep(0.3)
                async with httpx.AsyncClient(base_url=url, headers=owner.headers, timeout=20) as api:
                    prints = (await api.get("/api/v1/prints/")).json()
                    records = (await api.get(f"/api/v1/prints/{prints[0]['id']}/prediction_json")).json()
                assert len(records) >= 3 and max(r["p"] for r in records) > 1.0
                services = server.server.config.app.state.services
                # The server received and claimed, but never loaded the detector to score.
                assert services.watching.detector is None and services.watching.scored == 0
            finally:
                runner.stop()
                assert await asyncio.wait_for(task, 30) is Stopped.REQUESTED
    finally:
        output = await stop(worker)
    assert "scoring frames" in output


async def seeded_printers(farm: Farm, count: int) -> list[tuple[Printer, Print]]:
    owner = await farm.member()
    made = []
    for n in range(count):
        printer, print_, _agent = await watched_printer(farm, owner, name=f"P{n}")
        made.append((printer, print_))
    return made


async def frames_of(farm: Farm) -> list[tuple[int, Any]]:
    async def get(session: Any) -> list[tuple[int, Any]]:
        found = await session.execute(select(PredictionFrame.print_id, PredictionFrame.taken_at))
        return [(row[0], row[1]) for row in found]

    return await farm.run(get)  # type: ignore[no-any-return]


async def test_a_worker_killed_mid_batch_loses_no_frame_and_scores_none_twice(
        settings: Settings, farm: Farm, namespace: str, app: Any) -> None:
    worker_settings = scaled(settings, namespace, detection_interval_seconds=0.0)
    stream = FrameStream(REDIS_URL, settings.data_dir, namespace=namespace, claim_idle_seconds=TAKEOVER_SECONDS)
    await stream.start()
    redis: Redis = Redis.from_url(REDIS_URL, decode_responses=True)
    first = await start_worker(worker_settings, ("LAYERFLEET_DETECTION_BATCH_SIZE", "16"))
    second: asyncio.subprocess.Process | None = None
    try:
        printers = await seeded_printers(farm, 24)
        picture = jpeg(640, 480, (110, 115, 120))
        start = utcnow()
        expected: set[tuple[int, Any]] = set()
        for round_ in range(10):
            for printer, print_ in printers:
                received_at = start + timedelta(seconds=round_, microseconds=printer.id)
                assert await stream.push(PendingFrame(printer.id, printer.organization_id, picture, received_at))
                expected.add((print_.id, received_at))

        async def taken_and_unacknowledged() -> bool:
            summary: Any = await redis.xpending(stream.key, GROUP)
            return int(summary["pending"]) > 0 and bool(await frames_of(farm))

        await until(taken_and_unacknowledged, 60, "the first worker took frames and applied some")
        first.kill()  # SIGKILL: no chance to finish or hand back its batch
        await first.wait()
        pending: Any = await redis.xpending(stream.key, GROUP)
        assert int(pending["pending"]) > 0, "the worker died with frames taken and not acknowledged"
        applied_by_first = len(await frames_of(farm))
        assert 0 < applied_by_first < len(expected)

        metrics_port = free_port()
        second = await start_worker(worker_settings, ("LAYERFLEET_WORKER_METRICS_PORT", str(metrics_port)))

        async def all_done() -> bool:
            summary: Any = await redis.xpending(stream.key, GROUP)
            return int(await redis.xlen(stream.key)) == 0 and int(summary["pending"]) == 0

        await until(all_done, 90, "the second worker finished the stream, the dead worker's frames included")
        stored = await frames_of(farm)
        assert len(stored) == len(expected), "a frame was lost or scored twice"
        assert {(print_id, taken_at) for print_id, taken_at in stored} == expected

        async def counts(session: Any) -> list[tuple[int, int]]:
            found = await session.execute(select(Print.detection_frames, func.count(PredictionFrame.id))
                                          .join(PredictionFrame, PredictionFrame.print_id == Print.id)
                                          .group_by(Print.id))
            return [(row[0], row[1]) for row in found]

        # One decision state per print: every frame advanced it once, whichever worker applied it.
        assert all(state == stored_frames == 10 for state, stored_frames in await farm.run(counts))

        async def pictures_removed() -> bool:  # just after their acknowledgement
            return not await asyncio.to_thread(os.listdir, stream.pictures)

        await until(pictures_removed, 10, "the pictures of applied frames are removed")

        # The worker's own metrics (Prometheus scrapes each process): what it scored.
        async with httpx.AsyncClient(timeout=10) as scraper:
            scraped = (await scraper.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        scored_by_second = float(re.search(r"^layerfleet_watching_frames_scored_total (\S+)$", scraped,
                                           re.MULTILINE).group(1))  # type: ignore[union-attr]
        assert scored_by_second == len(expected) - applied_by_first
    finally:
        outputs = [await stop(process) for process in (first, second) if process is not None]
        await stream.close()
        await redis.aclose()
    assert "took over" in outputs[1], outputs[1]


async def test_a_taken_over_frame_already_applied_is_not_applied_again(
        settings: Settings, farm: Farm) -> None:
    """The window the SIGKILL test may or may not hit: applied, not acknowledged, taken over."""
    printer, print_, _agent = await watched_printer(farm)
    pipeline = WatchingPipeline(farm.sessionmaker, farm.bus, data_dir=settings.data_dir, interval_seconds=0.0)
    await pipeline.load_detector()
    received_at = utcnow()
    frame = PendingFrame(printer.id, printer.organization_id, jpeg(640, 480, (110, 115, 120)), received_at)
    scored = await pipeline.score([frame])
    await pipeline.apply_scored(scored)
    again = PendingFrame(frame.printer_id, frame.organization_id, frame.jpeg, received_at, taken_over=True)
    await pipeline.apply_scored([(again, scored[0][1])])
    later = PendingFrame(frame.printer_id, frame.organization_id, frame.jpeg, received_at + timedelta(seconds=10),
                         taken_over=True)
    await pipeline.apply_scored([(later, scored[0][1])])
    assert [taken_at for _, taken_at in await frames_of(farm)] == [received_at, later.received_at]
    stored = await farm.run(lambda s: s.get(Print, print_.id))
    assert stored.detection_frames == 2


def test_scoring_on_workers_needs_redis(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LAYERFLEET_REDIS_URL"):
        Settings(data_dir=tmp_path, scoring_on_workers=True)
