"""Watching prints: scored frames → detector state, records, detection hours, alerts, pauses,
ignore masks and feedback shots; and the live pipeline's gating and rate limit."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select
from starlette.testclient import TestClient

from agent_helpers import agent_headers, bearer, frame, jpeg, status
from conftest import IDLE, PRINTING, FakeAgent, Farm, Member, now
from layerfleet.accounts.models import User
from layerfleet.app import create_app
from layerfleet.commands.bus import AgentCommand, InProcessCommandBus
from layerfleet.config import Settings
from layerfleet.detection import FrameResult
from layerfleet.detection.models import Alert, PredictionFrame
from layerfleet.fleet.models import Printer
from layerfleet.fleet.watch_reasons import REASON_NO_DETECTION_HOURS
from layerfleet.prints.models import Print, PrintShotFeedback
from layerfleet.watching.frames import FrameOutcome, apply_frame, pick_feedback_frames

FAILING_P, CLEAN_P = 0.9, 0.05
DECISION_P_OF_A_SURE_FAILURE = 2.0  # detection.evidence.SCORE_TO_P × score 1


def result(p: float, *, at: tuple[float, float] = (320, 240), boxes: int = 1) -> FrameResult:
    """What the detector says about a frame whose boxes sum to ``p``: from 0.5 on, a frame the
    image head is sure about (score 1, so the decision p is 2.0); below, a clean one (score 0)."""
    share = p / boxes if boxes else 0.0
    found = [(at[0] + 20 * n, at[1], 60.0, 40.0, share) for n in range(boxes)] if p else []
    return FrameResult(score=1.0 if p >= 0.5 else 0.0, p=p, boxes=found, width=640, height=480)


class Watch:
    """Feeds scored frames to one printer's current print, as the pipeline would."""

    def __init__(self, farm: Farm, settings: Settings, printer: Printer, *, start: datetime | None = None) -> None:
        self.farm, self.settings, self.printer_id = farm, settings, printer.id
        self.clock = start or now()
        self.picture = jpeg(640, 480)

    async def frame(self, p: float, *, seconds: float = 10.0, unlimited: bool = False, **kwargs: Any
                    ) -> FrameOutcome | None:
        self.clock += timedelta(seconds=seconds)

        async def work(session: Any) -> FrameOutcome | None:
            outcome = await apply_frame(session, self.farm.bus, self.printer_id, self.picture, result(p, **kwargs),
                                        self.clock, data_dir=self.settings.data_dir, unlimited_hours=unlimited)
            await session.commit()
            return outcome

        return await self.farm.run(work)  # type: ignore[no-any-return]

    async def frames(self, p: float, count: int, **kwargs: Any) -> list[FrameOutcome | None]:
        return [await self.frame(p, **kwargs) for _ in range(count)]


async def watched_printer(farm: Farm, owner: Member | None = None, **fields: Any) -> tuple[Printer, Print, FakeAgent]:
    owner = owner or await farm.member()
    printer = await farm.printer(owner, status=PRINTING, **fields)
    print_ = await farm.print(printer, current=True)
    return printer, print_, await farm.connect_agent(printer)


async def load(farm: Farm, model: type[Any], key: int) -> Any:
    async def get(session: Any) -> Any:
        return await session.get(model, key)

    return await farm.run(get)


async def rows(farm: Farm, model: type[Any], **where: Any) -> list[Any]:
    async def get(session: Any) -> list[Any]:
        query = select(model).filter_by(**where).order_by(model.id)
        return list((await session.execute(query)).scalars())

    return await farm.run(get)  # type: ignore[no-any-return]


def commands(agent: FakeAgent) -> list[AgentCommand]:
    return [m for m in agent.received if isinstance(m, AgentCommand)]


# --- decisions and actions ---------------------------------------------------------------------------

async def test_spaghetti_warns_then_pauses_with_the_printers_pause_settings(farm: Farm, settings: Settings) -> None:
    printer, print_, agent = await watched_printer(farm, retract_on_pause=3.0, lift_z_on_pause=5.0,
                                                   tools_off_on_pause=False, bed_off_on_pause=True)
    watch = Watch(farm, settings, printer)
    clean = await watch.frames(CLEAN_P, 40)
    assert all(o is not None and o.alert is None for o in clean)
    outcomes = await watch.frames(FAILING_P, 12)
    alerts = await rows(farm, Alert, print_id=print_.id)
    assert [a.kind for a in alerts] == ["WARNING", "FAILURE"]
    assert alerts[1].paused and not alerts[0].paused
    first_alert = next(n for n, o in enumerate(outcomes) if o and o.alert)
    assert first_alert <= 6  # "within a few scored frames"
    assert [(c.cmd, c.args, c.initiator) for c in commands(agent)] == [
        ("pause", {"retract": 3.0, "lift_z": 5.0, "tools_off": False, "bed_off": True}, "system")]
    stored = await load(farm, Print, print_.id)
    assert stored.alerted_at is not None and stored.paused_at is not None
    assert stored.detection_frames == 52
    assert (await load(farm, Printer, printer.id)).normalized_p > 2 / 3


async def test_with_action_none_a_failure_only_alerts_once_until_acknowledged(farm: Farm, settings: Settings) -> None:
    printer, print_, agent = await watched_printer(farm, action_on_failure="NONE")
    watch = Watch(farm, settings, printer)
    await watch.frames(CLEAN_P, 40)
    await watch.frames(FAILING_P, 30)
    assert commands(agent) == []
    assert len(await rows(farm, Alert, print_id=print_.id)) == 1  # suppressed while unacknowledged

    async def acknowledge(session: Any) -> None:
        found = await session.get(Print, print_.id)
        found.alert_acknowledged_at = watch.clock
        await session.commit()

    await farm.run(acknowledge)
    await watch.frames(FAILING_P, 8)  # 80 s: inside the 90 s cooldown
    assert len(await rows(farm, Alert, print_id=print_.id)) == 1
    await watch.frames(FAILING_P, 2)
    assert len(await rows(farm, Alert, print_id=print_.id)) == 2


async def test_a_paused_or_muted_or_idle_printer_is_not_scored(farm: Farm, settings: Settings) -> None:
    printer, print_, _ = await watched_printer(farm)
    watch = Watch(farm, settings, printer)
    assert await watch.frame(CLEAN_P) is not None

    async def change(session: Any, **fields: Any) -> None:
        found = await session.get(Printer, printer.id)
        for key, value in fields.items():
            setattr(found, key, value)
        await session.commit()

    await farm.run(lambda s: change(s, status=IDLE))
    assert await watch.frame(CLEAN_P) is None
    await farm.run(lambda s: change(s, status=PRINTING, watching_enabled=False))
    assert await watch.frame(CLEAN_P) is None
    await farm.run(lambda s: change(s, watching_enabled=True))
    muted = await farm.print(printer, current=True, alert_muted_at=now())
    assert await watch.frame(CLEAN_P) is None
    assert len(await rows(farm, PredictionFrame, print_id=print_.id)) == 1
    assert await rows(farm, PredictionFrame, print_id=muted.id) == []


async def test_detection_hours_are_charged_for_watched_time(farm: Farm, settings: Settings) -> None:
    owner = await farm.member(dh_balance=1.0)
    printer, print_, _ = await watched_printer(farm, owner)
    watch = Watch(farm, settings, printer)
    await watch.frames(CLEAN_P, 7)  # the first frame starts the clock; six gaps of 10 s follow
    await watch.frame(CLEAN_P, seconds=600)  # the agent was away: not charged
    balance = (await load(farm, User, owner.user.id)).dh_balance
    assert balance == pytest.approx(1.0 - 60 / 3600)
    assert (await load(farm, Print, print_.id)).watched_seconds == pytest.approx(60)
    await watch.frames(CLEAN_P, 3, unlimited=True)
    assert (await load(farm, User, owner.user.id)).dh_balance == pytest.approx(balance)


async def test_a_print_may_run_the_balance_negative_and_then_watching_stops(
        farm: Farm, settings: Settings, client: httpx.AsyncClient) -> None:
    owner = await farm.member(dh_balance=35 / 3600)  # thirty-five seconds left
    printer, _, _ = await watched_printer(farm, owner)
    watch = Watch(farm, settings, printer)
    outcomes = await watch.frames(CLEAN_P, 6)
    assert all(outcomes[:5]) and outcomes[5] is None  # charged below zero, then no longer watched
    assert (await load(farm, User, owner.user.id)).dh_balance < 0
    shown = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    assert shown["not_watching_reason"] == REASON_NO_DETECTION_HOURS


async def test_detections_under_an_ignore_mask_do_not_count(farm: Farm, settings: Settings) -> None:
    printer, _, agent = await watched_printer(farm, ignore_masks=[[0.4, 0.4, 0.6, 0.6]])
    watch = Watch(farm, settings, printer)
    await watch.frames(CLEAN_P, 35)
    outcomes = await watch.frames(FAILING_P, 15, at=(320, 240))  # a bed logo in the middle of the picture
    assert all(o and o.alert is None and o.frame.p == 0 and o.frame.ignored_boxes == 1 for o in outcomes)
    assert commands(agent) == []
    outside = await watch.frames(FAILING_P, 15, at=(80, 80))
    assert any(o and o.alert for o in outside)


# --- records, prediction_json, feedback ----------------------------------------------------------------

async def test_frames_are_recorded_and_served_as_prediction_json(
        farm: Farm, settings: Settings, client: httpx.AsyncClient) -> None:
    owner = await farm.member()
    printer, print_, _ = await watched_printer(farm, owner)
    watch = Watch(farm, settings, printer)
    await watch.frames(CLEAN_P, 3)
    await watch.frame(FAILING_P, boxes=2)
    records = (await client.get(f"/api/v1/prints/{print_.id}/prediction_json", headers=owner.headers)).json()
    assert [r["frame_number"] for r in records] == [1, 2, 3, 4]
    last = records[-1]
    assert last["p"] == pytest.approx(DECISION_P_OF_A_SURE_FAILURE) and len(last["detections"]) == 2
    assert last["score"] == 1.0 and sum(d[1] for d in last["detections"]) == pytest.approx(FAILING_P)
    assert set(last) >= {"time", "ewm_mean", "rolling_mean_short", "rolling_mean_long", "normalized_p"}
    frames = await rows(farm, PredictionFrame, print_id=print_.id)
    assert frames[0].tagged_image_path is None  # nothing above 0.2 to draw
    tagged = Image.open(settings.data_dir / "media" / frames[-1].tagged_image_path)
    original = Image.open(settings.data_dir / "media" / frames[-1].image_path)
    assert tagged.size == original.size == (640, 480)
    assert tagged.getpixel((290, 220)) != original.getpixel((290, 220))  # a box edge is drawn there
    other = await farm.member(organization="Other")
    assert (await client.get(f"/api/v1/prints/{print_.id}/prediction_json", headers=other.headers)).status_code == 404


def test_feedback_frames_are_the_highest_at_least_two_minutes_apart() -> None:
    start = now()
    frames = [PredictionFrame(frame_number=n, p=p, taken_at=start + timedelta(seconds=10 * n))
              for n, p in enumerate([0.1, 0.9, 0.8, 0.0, 0.3] + [0.2] * 60 + [0.95])]
    chosen = pick_feedback_frames(frames)
    assert chosen[0].frame_number == 1 and chosen[-1].frame_number == 65
    assert len(chosen) <= 7
    times = [f.taken_at for f in chosen]
    assert all(b - a >= timedelta(minutes=2) for a, b in pairwise(times))
    assert all(f.p > 0 for f in chosen)


async def test_feedback_shots_are_made_when_the_print_ends(
        farm: Farm, settings: Settings, client: httpx.AsyncClient) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    # An app of its own: TestClient runs it in its own thread and event loop.
    with TestClient(create_app(settings)) as server, \
            server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        ws.receive_json()
        ts = int(now().timestamp())
        ws.send_json(frame(status("Printing", printing=True, file="a.gcode"), ts=ts, event="PrintStarted"))
        found = None
        for _ in range(200):
            found = (await load(farm, Printer, printer.id)).current_print_id
            if found:
                break
            await asyncio.sleep(0.02)
        assert found
        watch = Watch(farm, settings, printer)
        for p in [0.5, 0.1, 0.7, 0.0] * 10:
            await watch.frame(p, seconds=60)
        ws.send_json(frame(status("Operational", file="a.gcode"), ts=ts, event="PrintDone"))
        for _ in range(200):
            shots = await rows(farm, PrintShotFeedback, print_id=found)
            if shots:
                break
            await asyncio.sleep(0.02)
    assert 1 <= len(shots) <= 7
    listed = (await client.get("/api/v1/prints/", params={"filter": "need_print_shot_feedback"},
                               headers=owner.headers)).json()
    assert [p["id"] for p in listed] == [found]


# --- masks through the API -------------------------------------------------------------------------------

async def test_ignore_masks_are_edited_through_patch(farm: Farm, client: httpx.AsyncClient) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    url = f"/api/v1/printers/{printer.id}/"
    saved = await client.patch(url, headers=owner.headers, json={"ignore_masks": [[0.1, 0.2, 0.3, 0.4]]})
    assert saved.status_code == 200 and saved.json()["ignore_masks"] == [[0.1, 0.2, 0.3, 0.4]]
    corners = await client.patch(url, headers=owner.headers, json={"ignore_masks": [[0.3, 0.4, 0.1, 0.2]]})
    assert corners.json()["ignore_masks"] == [[0.1, 0.2, 0.3, 0.4]]  # any two opposite corners
    for bad in ([[0.1, 0.2, 0.3]], [[0.1, 0.2, 0.3, 1.5]], [["a", 0, 1, 1]],
                [[0, 0, 1, 1]] * 33, "everything"):
        refused = await client.patch(url, headers=owner.headers, json={"ignore_masks": bad})
        assert refused.status_code == 400 and "ignore_masks" in refused.json(), (bad, refused.text)
    assert (await client.get(url, headers=owner.headers)).json()["ignore_masks"] == [[0.1, 0.2, 0.3, 0.4]]
    cleared = await client.patch(url, headers=owner.headers, json={"ignore_masks": []})
    assert cleared.json()["ignore_masks"] == []


# --- the live pipeline ------------------------------------------------------------------------------------

class ScriptedDetector:
    """Stands in for the model where the test is about the pipeline, not the network."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.p = CLEAN_P

    def detect(self, images: list[bytes]) -> list[FrameResult]:
        self.batches.append(len(images))
        return [result(self.p) for _ in images]


@pytest.fixture
def watching_app(settings: Settings) -> Any:
    app = create_app(settings.model_copy(update={"detection_enabled": True, "detection_interval_seconds": 1.0}),
                     command_bus=InProcessCommandBus())
    app.state.services.watching.detector = ScriptedDetector()
    return app


async def test_the_pipeline_scores_one_frame_per_interval_of_watched_printers_only(
        settings: Settings, farm: Farm) -> None:
    # An interval of its own, long enough for six uploads on a loaded machine.
    watching_app = create_app(settings.model_copy(update={"detection_enabled": True,
                                                          "detection_interval_seconds": 3.0}),
                              command_bus=InProcessCommandBus())
    watching_app.state.services.watching.detector = ScriptedDetector()
    owner = await farm.member()
    watched = await farm.printer(owner, status=PRINTING)
    await farm.print(watched, current=True)
    idle = await farm.printer(owner, status=IDLE)
    transport = httpx.ASGITransport(app=watching_app)
    async with watching_app.router.lifespan_context(watching_app), \
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as agent:
        pipeline = watching_app.state.services.watching
        for _ in range(3):
            for printer in (watched, idle):
                answer = await agent.post("/api/v1/octo/pic/", headers=agent_headers(printer),
                                          files={"pic": ("p.jpg", jpeg(640, 480), "image/jpeg")})
                assert answer.status_code == 200
        for _ in range(100):
            if pipeline.scored:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert pipeline.scored == 1  # three pictures within the interval: one is scored
        await asyncio.sleep(3.0)
        await agent.post("/api/v1/octo/pic/", headers=agent_headers(watched),
                         files={"pic": ("p.jpg", jpeg(640, 480), "image/jpeg")})
        for _ in range(100):
            if pipeline.scored == 2:
                break
            await asyncio.sleep(0.02)
        assert pipeline.scored == 2
    frames = await rows(farm, PredictionFrame)
    assert len(frames) == 2
    assert (await load(farm, Printer, idle.id)).pic_path is not None  # pictures still update pic


async def test_each_scored_frame_keeps_the_heaters_temperatures(farm: Farm, settings: Settings) -> None:
    owner = await farm.member()
    printer, print_, _ = await watched_printer(farm, owner)
    hot = {**PRINTING, "temperatures": {"tool0": {"actual": 214.46, "target": 215, "offset": 0},
                                        "bed": {"actual": 60, "target": 60.0}, "chamber": "not a heater",
                                        "tool1": {"actual": None, "target": float("nan")}}}

    async def heat_up(session: Any) -> None:
        found = await session.get(Printer, printer.id)
        found.status = {**hot, "temperatures": {k: v for k, v in hot["temperatures"].items() if k != "tool1"}}
        await session.commit()

    watch = Watch(farm, settings, printer)
    await watch.frame(CLEAN_P)
    await farm.run(heat_up)
    await watch.frame(CLEAN_P)
    frames = await rows(farm, PredictionFrame, print_id=print_.id)
    assert [f.temperatures for f in frames] == [None, {"tool0": [214.5, 215.0], "bed": [60.0, 60.0]}]
    from layerfleet.watching.frames import reported_temperatures

    assert reported_temperatures(hot) == {"tool0": [214.5, 215.0], "bed": [60.0, 60.0], "tool1": [None, None]}
