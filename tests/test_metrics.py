"""Operational signals: the Prometheus /metrics endpoint (admins only) moves with the pictures
agents post and the frames the pipeline scores; connected agents are counted; a full scoring
queue never drops frames silently (counted, logged once, and the fleet page says so)."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from agent_helpers import agent_headers, bearer, jpeg
from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import PRINTING, Farm, Member
from layerfleet import metrics
from layerfleet.accounts.models import Role
from layerfleet.app import create_app
from layerfleet.commands.bus import InProcessCommandBus
from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.detection import FrameResult
from layerfleet.fleet.models import Printer
from layerfleet.watching import pipeline as pipeline_module
from layerfleet.watching.pipeline import WatchingPipeline
from live_server import LiveServer


def clean() -> FrameResult:
    return FrameResult(score=0.0, p=0.0, boxes=[], width=640, height=480)


class QuickDetector:
    def detect(self, images: list[bytes]) -> list[FrameResult]:
        return [clean() for _ in images]


class SlowDetector:
    """Holds every batch until the test lets it go: the queue behind it fills up."""

    def __init__(self) -> None:
        self.busy = threading.Event()
        self.release = threading.Event()

    def detect(self, images: list[bytes]) -> list[FrameResult]:
        self.busy.set()
        self.release.wait(20)
        return [clean() for _ in images]


def parse(text: str) -> dict[str, float]:
    """Every sample of an exposition, keyed ``name{label="value",…}`` (labels sorted)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


async def scrape(client: httpx.AsyncClient, member: Member) -> dict[str, float]:
    answer = await client.get("/metrics", headers=member.headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


async def watched(farm: Farm, owner: Member, name: str) -> Printer:
    printer = await farm.printer(owner, name, status=PRINTING)
    await farm.print(printer, current=True)
    return printer


async def test_metrics_move_with_pictures_posted_and_frames_scored(farm: Farm, settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"detection_enabled": True, "detection_interval_seconds": 5.0}),
                     command_bus=InProcessCommandBus())
    app.state.services.watching.detector = QuickDetector()
    admin = await farm.member(Role.ADMIN)
    printers = [await watched(farm, admin, f"P{n}") for n in range(3)]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        before = await scrape(client, admin)
        for printer in printers:
            for _ in range(2):  # the second within the interval: received, not scored
                answer = await client.post("/api/v1/octo/pic/", headers=agent_headers(printer),
                                           files={"pic": ("pic", jpeg(640, 480))})
                assert answer.status_code == 200
        pipeline = app.state.services.watching
        for _ in range(250):
            if pipeline.scored == 3:
                break
            await asyncio.sleep(0.02)
        assert pipeline.scored == 3
        after = await scrape(client, admin)

    def moved(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert moved("layerfleet_watching_pictures_received_total") == 6
    assert moved("layerfleet_watching_frames_queued_total") == 3
    assert moved("layerfleet_watching_frames_scored_total") == 3
    assert moved("layerfleet_watching_frames_dropped_total") == 0
    assert moved("layerfleet_watching_scoring_lag_seconds_count") == 3
    # Scored in well under ten seconds: every one of them lands in the 10 s bucket.
    assert moved('layerfleet_watching_scoring_lag_seconds_bucket{le="10.0"}') == 3
    assert after["layerfleet_watching_queue_depth"] == 0
    assert after["layerfleet_watching_oldest_unscored_frame_age_seconds"] == 0
    assert after["layerfleet_watching_queue_capacity"] >= pipeline_module.MAX_WAITING_FRAMES
    assert after["process_resident_memory_bytes"] > 0


async def test_notification_deliveries_are_counted_by_channel_and_outcome(
        client: httpx.AsyncClient, farm: Farm) -> None:
    admin = await farm.member(Role.ADMIN)
    before = await scrape(client, admin)
    metrics.count_notification_delivery("email", "delivered")
    metrics.count_notification_delivery("email", "failed")
    metrics.count_notification_delivery("email", "delivered")
    with pytest.raises(ValueError, match="outcome"):
        metrics.count_notification_delivery("email", "sent-ish")
    after = await scrape(client, admin)
    key = 'layerfleet_notification_deliveries_total{{channel="email",outcome="{}"}}'
    assert after[key.format("delivered")] - before.get(key.format("delivered"), 0) == 2
    assert after[key.format("failed")] - before.get(key.format("failed"), 0) == 1


async def test_only_admins_read_the_metrics(client: httpx.AsyncClient, farm: Farm) -> None:
    assert (await client.get("/metrics")).status_code == 401
    for role in (Role.VIEWER, Role.OPERATOR):
        member = await farm.member(role)
        answer = await client.get("/metrics", headers=member.headers)
        assert answer.status_code == 403
        assert "layerfleet_" not in answer.text
    for role in (Role.ADMIN, Role.OWNER):
        member = await farm.member(role)
        assert "layerfleet_agents_connected" in (await client.get("/metrics", headers=member.headers)).text


async def test_connected_agents_are_counted(farm: Farm, settings: Settings) -> None:
    admin = await farm.member(Role.ADMIN)
    printer = await farm.printer(admin, "Voron")

    def connected(server: TestClient) -> float:
        answer = server.get("/metrics", headers=admin.headers)
        assert answer.status_code == 200
        return parse(answer.text)["layerfleet_agents_connected"]

    # An app of its own: TestClient runs it in its own thread and event loop.
    with TestClient(create_app(settings)) as server:
        alone = connected(server)
        with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
            ws.receive_json()
            assert connected(server) == alone + 1
        for _ in range(500):  # the gateway forgets the connection in its own thread
            if connected(server) == alone:
                break
            await asyncio.sleep(0.02)
        assert connected(server) == alone


async def test_a_full_queue_drops_frames_loudly_and_the_fleet_page_says_watching_is_behind(
        farm: Farm, settings: Settings, app: Any, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    owner = await farm.member()
    printers = [await watched(farm, owner, f"P{n}") for n in range(5)]
    detector = SlowDetector()
    pipeline = WatchingPipeline(farm.sessionmaker, farm.bus, data_dir=settings.data_dir, interval_seconds=10.0,
                                batch_size=1, detector=detector, queue_size=2)  # type: ignore[arg-type]
    monkeypatch.setattr(app.state.services, "watching", pipeline)
    signed = await client.post("/accounts/login/", data={"email": owner.user.email, "password": "password-123"})
    assert signed.status_code == 303
    await pipeline.start()
    try:
        picture = jpeg(640, 480)
        # The first frame, taken by the worker, has waited 30 s already: behind without a drop.
        await pipeline.submit(printers[0].id, owner.user.organization_id, picture, utcnow() - timedelta(seconds=30))
        assert await asyncio.to_thread(detector.busy.wait, 10)
        health = pipeline.health()
        assert health.behind and health.dropped_last_minute == 0 and health.oldest_waiting_seconds >= 30

        dropped_before = parse((await client.get("/metrics", headers=owner.headers)).text)[
            "layerfleet_watching_frames_dropped_total"]
        with caplog.at_level(logging.WARNING, logger="layerfleet.watching.pipeline"):
            for printer in printers[1:]:
                await pipeline.submit(printer.id, owner.user.organization_id, picture, utcnow())
        # Two wait in the queue (its size), two found it full.
        assert pipeline.queue.qsize() == 2 and pipeline.dropped == 2
        health = pipeline.health()
        assert health.behind and health.dropped_last_minute == 2 and health.queue_depth == 2
        scraped = parse((await client.get("/metrics", headers=owner.headers)).text)
        assert scraped["layerfleet_watching_frames_dropped_total"] - dropped_before == 2
        assert scraped["layerfleet_watching_oldest_unscored_frame_age_seconds"] >= 30
        behind_lines = [r for r in caplog.records if "watching is behind" in r.getMessage()]
        assert len(behind_lines) == 1  # rate-limited: one line for both drops
        assert "queue is full" in behind_lines[0].getMessage()
        # A dropped frame leaves its printer unclaimed: its next picture may be scored at once.
        dropped_printer = await farm.run(lambda s: s.get(Printer, printers[4].id))
        assert dropped_printer.last_scored_at is None

        page = await client.get("/")
        assert page.status_code == 200
        assert 'id="watching-behind" class="behind"' in page.text
        assert "Watching is behind" in page.text and "2 pictures due for scoring went unscored" in page.text

        detector.release.set()
        for _ in range(250):
            if pipeline.scored == 3:
                break
            await asyncio.sleep(0.02)
        assert pipeline.scored == 3
        assert pipeline.health().oldest_waiting_seconds == 0
        # Still behind while the drops are recent; once they are older than the window, not.
        assert pipeline.health().behind
        monkeypatch.setattr(pipeline_module, "BEHIND_WINDOW_SECONDS", 0.0)
        await asyncio.sleep(0.01)
        assert not pipeline.health().behind
        page = await client.get("/")
        assert 'id="watching-behind" class="behind hidden"' in page.text
    finally:
        detector.release.set()
        await pipeline.close()


async def test_the_fleet_page_shows_live_when_watching_falls_behind_and_catches_up(
        farm: Farm, settings: Settings, page: Page, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from layerfleet.web import fleet as fleet_pages

    monkeypatch.setattr(fleet_pages, "KEEPALIVE_SECONDS", 0.2)  # the stream looks again this often
    owner = await farm.member()
    printer = await watched(farm, owner, "Voron")
    live = LiveServer(settings.model_copy(update={"detection_enabled": True}))
    pipeline: WatchingPipeline = live.server.config.app.state.services.watching
    pipeline.detector = QuickDetector()  # type: ignore[assignment]
    with live as url:
        await sign_in(page, url, owner.user.email)
        banner = page.locator("#watching-behind")
        await expect(page.locator("#live")).to_have_text("● Live")
        await expect(banner).to_be_hidden()
        # What a full queue does (test_a_full_queue_… fills one for real).
        pipeline._drop(printer.id)
        await expect(banner).to_be_visible()
        await expect(banner).to_contain_text("Watching is behind")
        await expect(banner).to_contain_text("1 picture due for scoring went unscored in the last minute")
        monkeypatch.setattr(pipeline_module, "BEHIND_WINDOW_SECONDS", 0.0)  # the drop is old news now
        await expect(banner).to_be_hidden()


async def test_the_job_queue_reports_its_backlog_and_running_jobs() -> None:
    from layerfleet.jobs import InProcessJobQueue

    def waiting() -> float:
        return metrics.REGISTRY.get_sample_value("layerfleet_job_queue_backlog", {"queue": "in-process"}) or 0.0

    def running() -> float:
        return metrics.REGISTRY.get_sample_value("layerfleet_jobs_running") or 0.0

    waiting_before, running_before = waiting(), running()
    queue = InProcessJobQueue(close_timeout=1.0)
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(job_id: str) -> None:
        started.set()
        await release.wait()

    for n in range(3):
        await queue.enqueue("slow", str(n))
    assert waiting() - waiting_before == 3
    await queue.start({"slow": handler})
    await asyncio.wait_for(started.wait(), 5)
    assert waiting() - waiting_before == 2  # one taken: it runs
    assert running() - running_before == 1
    release.set()
    for _ in range(250):
        if waiting() == waiting_before and running() == running_before:
            break
        await asyncio.sleep(0.02)
    assert waiting() == waiting_before
    assert running() == running_before
    await queue.close()
