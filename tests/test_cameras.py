"""Every camera watched: pictures of several cameras per printer, each scored at the interval,
combined into the print's one decision state; ignore masks per camera; what the API and the
agent say of cameras. The last test is the whole path with a real agent, server and model."""

from __future__ import annotations

import asyncio
import io
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.async_api import Page, expect

from agent_helpers import agent_headers, jpeg, until
from browser import browser, page, sign_in  # noqa: F401  (fixtures)
from conftest import PRINTING, Farm, Member, now
from layerfleet.accounts.models import Role
from layerfleet.app import create_app
from layerfleet.commands.bus import InProcessCommandBus
from layerfleet.config import Settings
from layerfleet.detection import decisions
from layerfleet.detection.models import Alert, PredictionFrame
from layerfleet.fleet.models import Printer, PrinterCamera
from layerfleet.printer_agent.camera import NamedCamera
from layerfleet.printer_agent.config import AgentConfig, ConfigError
from layerfleet.printer_agent.connector import PrinterState
from layerfleet.printer_agent.runner import AgentRunner, Cadence, Stopped
from layerfleet.prints.models import Print
from layerfleet.simulator.printer import SimulatedCamera, SimulatedPrinter, SimulationOptions
from layerfleet.simulator.render import render_frame
from layerfleet.watching.frames import CAMERA_EVIDENCE_MAX_AGE, PRIMARY, FrameOutcome, apply_frame, combine
from test_watching import CLEAN_P, FAILING_P, ScriptedDetector, commands, load, result, rows, watched_printer

SIDE = "side"


# --- the combining rule ---------------------------------------------------------------------------------

class Evidence:
    """A print's ``detection_cameras`` and last step, advanced as ``apply_frame`` does."""

    def __init__(self) -> None:
        self.cameras: dict[str, Any] | None = None
        self.last_step: datetime | None = None
        self.steps: list[tuple[str, float]] = []  # (camera whose frame stepped, p it stepped with)
        self.frame = 0

    def see(self, camera: str, p: float, at: datetime) -> bool:
        weighing = combine(self.cameras, camera, p, at, self.last_step)
        if weighing.steps:
            self.frame += 1
            self.last_step = at if self.last_step is None else max(self.last_step, at)
            self.steps.append((camera, weighing.p))
        self.cameras = {**weighing.cameras, camera: {"p": p, "at": weighing.latest.isoformat(), "frame": self.frame,
                                                     "waiting": not weighing.steps}}
        return weighing.steps


def test_with_one_camera_every_frame_steps_with_its_own_p() -> None:
    evidence, start = Evidence(), now()
    ps = [0.1, 2.0, 0.0, 0.7]
    assert all(evidence.see(PRIMARY, p, start + timedelta(seconds=10 * n)) for n, p in enumerate(ps))
    assert evidence.steps == [(PRIMARY, p) for p in ps]


def test_a_late_frame_steps_and_does_not_hold_back_the_next() -> None:
    # A worker died with frames 2 and 3 taken; another applied 4 and 5 before taking them over.
    evidence, start = Evidence(), now()
    order = [0, 1, 4, 5, 2, 3, 6, 7]
    stepped = [evidence.see(PRIMARY, 0.1 * n, start + timedelta(seconds=10 * n)) for n in order]
    assert stepped == [True] * 8
    assert [p for _, p in evidence.steps] == [0.1 * n for n in order]
    # Two cameras: a late frame of one (the primary's 20 s frame came first) waits, as an on-time
    # frame does when the other camera stepped since; the rounds go on as before after it.
    two = Evidence()
    for at, camera in [(0, PRIMARY), (3, SIDE), (20, PRIMARY), (13, SIDE), (23, SIDE), (30, PRIMARY)]:
        two.see(camera, CLEAN_P, start + timedelta(seconds=at))
    assert [camera for camera, _ in two.steps] == [PRIMARY, PRIMARY, PRIMARY]
    assert two.see(SIDE, 2.0, start + timedelta(seconds=43)) is False
    assert two.see(PRIMARY, CLEAN_P, start + timedelta(seconds=40))  # arrives after the side's 43 s frame
    assert two.steps[-1] == (PRIMARY, 2.0)  # the side camera's failing frame, weighed
    # A late frame that waits is weighed at the next step, though older than that step's time.
    late = Evidence()
    for at, camera in [(0, PRIMARY), (3, SIDE), (20, PRIMARY)]:
        late.see(camera, CLEAN_P, start + timedelta(seconds=at))
    assert late.see(SIDE, 2.0, start + timedelta(seconds=13)) is False
    assert late.see(PRIMARY, CLEAN_P, start + timedelta(seconds=30)) and late.steps[-1] == (PRIMARY, 2.0)
    assert late.see(PRIMARY, CLEAN_P, start + timedelta(seconds=40)) and late.steps[-1] == (PRIMARY, CLEAN_P)


def test_two_cameras_step_once_a_round_with_the_highest_evidence() -> None:
    evidence, start = Evidence(), now()
    for n in range(20):
        evidence.see(PRIMARY, CLEAN_P, start + timedelta(seconds=10 * n))
        evidence.see(SIDE, 2.0 if n >= 10 else CLEAN_P, start + timedelta(seconds=10 * n + 3))
    assert len(evidence.steps) == 20  # one step per round, not per frame
    # The side camera's failing frames each count once, at full strength, one round late:
    # the normal primary camera does not dilute them.
    assert [p for _, p in evidence.steps[11:]] == [2.0] * 9
    assert all(p == CLEAN_P for _, p in evidence.steps[:11])


def test_a_failure_seen_by_one_camera_moves_the_decision_as_if_it_were_the_only_camera() -> None:
    start = now()
    alone, combined = decisions.PrintScores(), decisions.PrintScores()
    alone_base, combined_base = decisions.PrinterBaseline(), decisions.PrinterBaseline()
    evidence = Evidence()
    for n in range(60):
        failing = n >= 40
        alone, alone_base = decisions.advance(alone, alone_base, 2.0 if failing else CLEAN_P)
        evidence.see(SIDE, 2.0 if failing else CLEAN_P, start + timedelta(seconds=10 * n))
        evidence.see(PRIMARY, CLEAN_P, start + timedelta(seconds=10 * n + 4))
    for _, p in evidence.steps:
        combined, combined_base = decisions.advance(combined, combined_base, p)
    assert combined == alone
    assert decisions.should_pause(combined, combined_base, 1.0)


def test_when_one_camera_stops_the_other_steps_alone() -> None:
    evidence, start = Evidence(), now()
    for n in range(3):
        evidence.see(PRIMARY, CLEAN_P, start + timedelta(seconds=10 * n))
        evidence.see(SIDE, CLEAN_P, start + timedelta(seconds=10 * n + 3))
    stepped = [evidence.see(SIDE, 2.0, start + timedelta(seconds=10 * n + 3)) for n in range(3, 8)]
    assert stepped == [True] * 5
    assert [p for _, p in evidence.steps[-5:]] == [2.0] * 5


def test_old_evidence_of_another_camera_is_not_weighed() -> None:
    start = now()
    last_step = start - timedelta(seconds=1)
    cameras = {SIDE: {"p": 2.0, "at": start.isoformat(), "frame": 1},
               PRIMARY: {"p": 0.0, "at": last_step.isoformat(), "frame": 1}}
    stale = combine(cameras, PRIMARY, 0.1, start + CAMERA_EVIDENCE_MAX_AGE + timedelta(seconds=5), last_step)
    assert stale.steps and stale.p == 0.1 and stale.source == PRIMARY
    fresh = combine(cameras, PRIMARY, 0.1, start + timedelta(seconds=7), last_step)
    assert fresh.steps and fresh.p == 2.0 and fresh.source == SIDE and fresh.source_entry == cameras[SIDE]


def test_a_new_camera_waits_for_the_next_step_unless_the_print_has_none() -> None:
    start = now()
    recent = {PRIMARY: {"p": 0.0, "at": start.isoformat(), "frame": 3}}
    assert not combine(recent, SIDE, 2.0, start + timedelta(seconds=3), start).steps
    assert combine(None, SIDE, 2.0, start, None).steps
    # A print watched before cameras were combined (no entries yet) steps as it always did.
    assert combine(None, PRIMARY, 0.1, start + timedelta(seconds=10), start).steps


# --- applying frames of several cameras -------------------------------------------------------------------

class Rounds:
    """Feeds each camera's scored frame to a printer's print, a round every ten seconds, the side
    camera three seconds after the primary, as the pipeline would."""

    def __init__(self, farm: Farm, settings: Settings, printer: Printer) -> None:
        self.farm, self.settings, self.printer_id = farm, settings, printer.id
        self.start = now()
        self.rounds = 0
        self.picture = jpeg(640, 480)

    async def frame(self, camera: str | None, p: float, taken_at: datetime, **kwargs: Any) -> FrameOutcome | None:
        async def work(session: Any) -> FrameOutcome | None:
            outcome = await apply_frame(session, self.farm.bus, self.printer_id, self.picture, result(p, **kwargs),
                                        taken_at, camera=camera, data_dir=self.settings.data_dir)
            await session.commit()
            return outcome

        return await self.farm.run(work)  # type: ignore[no-any-return]

    async def round(self, primary: float, side: float, **kwargs: Any) -> list[FrameOutcome | None]:
        self.rounds += 1
        base = self.start + timedelta(seconds=10 * self.rounds)
        return [await self.frame(None, primary, base, **kwargs),
                await self.frame(SIDE, side, base + timedelta(seconds=3), **kwargs)]


async def add_camera(farm: Farm, printer: Printer, name: str = SIDE, **fields: Any) -> None:
    async def add(session: Any) -> None:
        session.add(PrinterCamera(printer_id=printer.id, name=name, **fields))
        await session.commit()

    await farm.run(add)


async def test_spaghetti_on_the_second_camera_alone_alerts_and_pauses(farm: Farm, settings: Settings) -> None:
    printer, print_, agent = await watched_printer(farm, retract_on_pause=3.0)
    await add_camera(farm, printer)
    watch = Rounds(farm, settings, printer)
    for _ in range(35):
        assert not any(o and o.alert for o in await watch.round(CLEAN_P, CLEAN_P))
    outcomes = [o for _ in range(12) for o in await watch.round(CLEAN_P, FAILING_P)]
    alerts = await rows(farm, Alert, print_id=print_.id)
    assert [a.kind for a in alerts] == ["WARNING", "FAILURE"] and alerts[1].paused
    assert [c.cmd for c in commands(agent)] == ["pause"]
    assert sum(1 for o in outcomes if o and o.alert) == 2
    shown = [await load(farm, PredictionFrame, a.frame_id) for a in alerts]
    assert [f.camera for f in shown] == [SIDE, SIDE] and all(f.boxes for f in shown)  # the camera that saw it
    assert all(a.details["camera"] == SIDE for a in alerts)
    stored = await load(farm, Print, print_.id)
    assert stored.detection_frames == 47  # one step per round of two cameras
    frames = await rows(farm, PredictionFrame, print_id=print_.id)
    assert len(frames) == 94 and {f.camera for f in frames} == {None, SIDE}
    assert len({f.image_path for f in frames}) == 94  # no camera's picture overwrites another's


async def test_a_mask_on_one_camera_does_not_hide_the_other(farm: Farm, settings: Settings) -> None:
    middle = [[0.4, 0.4, 0.6, 0.6]]
    printer, _, agent = await watched_printer(farm, ignore_masks=middle)
    await add_camera(farm, printer)
    watch = Rounds(farm, settings, printer)
    for _ in range(35):
        await watch.round(CLEAN_P, CLEAN_P)
    # Both cameras see something in the middle of their picture; only the primary's is masked.
    outcomes = [await watch.round(FAILING_P, FAILING_P, at=(320, 240)) for _ in range(12)]
    primary, side = [o for o, _ in outcomes], [o for _, o in outcomes]
    assert all(o and o.frame.p == 0 and o.frame.ignored_boxes == 1 for o in primary)
    assert all(o and o.frame.p > 0 and o.frame.ignored_boxes == 0 for o in side)
    assert [c.cmd for c in commands(agent)] == ["pause"]


async def test_a_mask_on_the_second_camera_hides_only_its_own_findings(farm: Farm, settings: Settings) -> None:
    printer, print_, agent = await watched_printer(farm)
    await add_camera(farm, printer, ignore_masks=[[0.4, 0.4, 0.6, 0.6]])
    watch = Rounds(farm, settings, printer)
    for _ in range(35):
        await watch.round(CLEAN_P, CLEAN_P)
    outcomes = [await watch.round(CLEAN_P, FAILING_P, at=(320, 240)) for _ in range(15)]
    assert all(side and side.frame.p == 0 and side.frame.ignored_boxes == 1 for _, side in outcomes)
    assert commands(agent) == [] and await rows(farm, Alert, print_id=print_.id) == []
    outside = [await watch.round(CLEAN_P, FAILING_P, at=(80, 80)) for _ in range(12)]
    assert any(o and o.alert for pair in outside for o in pair)


async def test_prediction_json_says_which_camera(farm: Farm, settings: Settings, client: httpx.AsyncClient) -> None:
    owner = await farm.member()
    printer, print_, _ = await watched_printer(farm, owner)
    await add_camera(farm, printer)
    watch = Rounds(farm, settings, printer)
    await watch.round(CLEAN_P, FAILING_P)
    await watch.round(CLEAN_P, CLEAN_P)
    records = (await client.get(f"/api/v1/prints/{print_.id}/prediction_json", headers=owner.headers)).json()
    assert [(r["frame_number"], r["camera"], r["primary_camera"]) for r in records] == [
        (1, None, True), (1, SIDE, False), (2, None, True), (2, SIDE, False)]
    assert records[1]["detections"][0][1] == FAILING_P and records[3]["detections"][0][1] == CLEAN_P


# --- pictures from the agent ---------------------------------------------------------------------------

async def post_picture(client: httpx.AsyncClient, printer: Printer, picture: bytes | None = None,
                       **fields: str) -> httpx.Response:
    return await client.post("/api/v1/octo/pic/", headers=agent_headers(printer), data=fields,
                             files={"pic": ("p.jpg", picture or jpeg(64, 48), "image/jpeg")})


async def cameras_of(farm: Farm, printer: Printer) -> dict[str, PrinterCamera]:
    return {c.name: c for c in await rows(farm, PrinterCamera, printer_id=printer.id)}


async def test_each_named_camera_keeps_its_own_latest_picture(
        farm: Farm, settings: Settings, client: httpx.AsyncClient) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    assert (await post_picture(client, printer)).status_code == 200  # no camera fields: the primary
    primary_pic = (await load(farm, Printer, printer.id)).pic_path
    assert primary_pic is not None
    # As moonraker-obico sends them (Python's words for booleans).
    answer = await post_picture(client, printer, jpeg(64, 48, (10, 200, 10)), camera_name="side",
                                is_primary_camera="False", is_nozzle_camera="False")
    assert answer.status_code == 200 and answer.json() == {"result": "ok"}
    await post_picture(client, printer, camera_name="Nozzle cam", is_primary_camera="False", is_nozzle_camera="True")
    cameras = await cameras_of(farm, printer)
    assert set(cameras) == {"side", "Nozzle cam"}
    assert cameras["Nozzle cam"].nozzle and not cameras["side"].nozzle
    assert (await load(farm, Printer, printer.id)).pic_path == primary_pic  # not the primary's picture
    first = cameras["side"].pic_path
    assert first and (settings.data_dir / "media" / first).exists()
    await asyncio.sleep(0.01)
    await post_picture(client, printer, jpeg(64, 48, (10, 10, 200)), camera_name="side", is_primary_camera="false")
    second = (await cameras_of(farm, printer))["side"].pic_path
    assert second != first and not (settings.data_dir / "media" / first).exists()
    # Not a camera one can tell apart: ignored, as before.
    await post_picture(client, printer, is_primary_camera="false")
    assert len(await cameras_of(farm, printer)) == 2

    listed = (await client.get(f"/api/v1/printers/{printer.id}/cameras/", headers=owner.headers)).json()
    assert [(c["name"], c["primary"], c["nozzle"]) for c in listed] == [
        (None, True, False), ("Nozzle cam", False, True), ("side", False, False)]
    image = await client.get(listed[2]["pic"]["img_url"], headers=owner.headers)
    pixel = Image.open(io.BytesIO(image.content)).convert("RGB").getpixel((32, 24))
    assert image.status_code == 200 and isinstance(pixel, tuple) and pixel[2] > 150  # the side camera's latest


async def test_bad_camera_names_are_refused_and_cameras_are_bounded(farm: Farm, client: httpx.AsyncClient) -> None:
    printer = await farm.printer(await farm.member())
    refused = await post_picture(client, printer, camera_name="x" * 65, is_primary_camera="false")
    assert refused.status_code == 400 and "camera_name" in refused.json()
    for n in range(10):
        answer = await post_picture(client, printer, camera_name=f"cam {n}", is_primary_camera="false")
        assert answer.status_code == 200
    assert len(await cameras_of(farm, printer)) == 8


async def test_ignore_masks_per_camera_through_the_api(farm: Farm, client: httpx.AsyncClient) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    await post_picture(client, printer, camera_name="side", is_primary_camera="false")
    url = f"/api/v1/printers/{printer.id}/cameras/"
    saved = await client.patch(url, headers=owner.headers,
                               json={"camera": "side", "ignore_masks": [[0.5, 0.6, 0.1, 0.2]]})
    assert saved.status_code == 200
    assert {c["name"]: c["ignore_masks"] for c in saved.json()} == {None: [], "side": [[0.1, 0.2, 0.5, 0.6]]}
    primary = await client.patch(url, headers=owner.headers, json={"camera": None, "ignore_masks": [[0, 0, 0.2, 0.2]]})
    assert primary.status_code == 200
    # The printer's own field stays the primary camera's, for clients that know one camera.
    shown = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    assert shown["ignore_masks"] == [[0.0, 0.0, 0.2, 0.2]]
    assert (await client.patch(f"/api/v1/printers/{printer.id}/", headers=owner.headers,
                               json={"ignore_masks": []})).json()["ignore_masks"] == []
    assert (await cameras_of(farm, printer))["side"].ignore_masks == [[0.1, 0.2, 0.5, 0.6]]

    unknown = await client.patch(url, headers=owner.headers, json={"camera": "rear", "ignore_masks": []})
    assert unknown.status_code == 404
    for bad in ({"camera": "side", "ignore_masks": [[0, 0, 2, 1]]}, {"camera": "side"},
                {"camera": "side", "ignore_masks": "all"}, {"camera": "", "ignore_masks": []}):
        answer = await client.patch(url, headers=owner.headers, json=bad)
        assert answer.status_code == 400, (bad, answer.text)
    operator = await farm.member(role=Role.OPERATOR)
    forbidden = await client.patch(url, headers=operator.headers, json={"camera": "side", "ignore_masks": []})
    assert forbidden.status_code == 403
    other = await farm.member(organization="Other")
    assert (await client.get(url, headers=other.headers)).status_code == 404


@pytest.fixture
def watching_app(settings: Settings) -> Any:
    app = create_app(settings.model_copy(update={"detection_enabled": True, "detection_interval_seconds": 1.0}),
                     command_bus=InProcessCommandBus())
    app.state.services.watching.detector = ScriptedDetector()
    return app


async def test_every_camera_but_the_nozzle_camera_is_scored_at_the_interval(watching_app: Any, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    print_ = await farm.print(printer, current=True)
    transport = httpx.ASGITransport(app=watching_app)
    async with watching_app.router.lifespan_context(watching_app), \
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as agent:
        pipeline = watching_app.state.services.watching
        for _ in range(3):  # three pictures of each camera within the interval
            assert (await post_picture(agent, printer)).status_code == 200
            await post_picture(agent, printer, camera_name="side", is_primary_camera="false")
            await post_picture(agent, printer, camera_name="nozzle", is_primary_camera="false", is_nozzle_camera="true")
        await until(lambda: _scored(pipeline, 2))
        await asyncio.sleep(0.3)
        assert pipeline.scored == 2  # one per watched camera
    frames = await rows(farm, PredictionFrame, print_id=print_.id)
    assert sorted(f.camera or "" for f in frames) == ["", "side"]
    assert (await cameras_of(farm, printer))["nozzle"].pic_path is not None  # shown, not scored


async def _scored(pipeline: Any, count: int) -> bool:
    return bool(pipeline.scored >= count)


# --- the printer page -------------------------------------------------------------------------------------

async def three_cameras(live_url: str, farm: Farm) -> tuple[Member, Printer]:
    """A watched printer whose agent sent a picture of its primary, side and nozzle cameras."""
    owner = await farm.member()
    printer, _, _ = await watched_printer(farm, owner, name="Two views")
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as agent:
        for fields in ({}, {"camera_name": SIDE, "is_primary_camera": "false"},
                       {"camera_name": "nozzle", "is_primary_camera": "false", "is_nozzle_camera": "true"}):
            assert (await post_picture(agent, printer, jpeg(640, 480, (90, 90, 90)), **fields)).status_code == 200
    return owner, printer

async def test_the_printer_page_shows_every_camera_with_its_boxes(
        live_url: str, farm: Farm, settings: Settings, page: Page) -> None:  # noqa: F811
    owner, printer = await three_cameras(live_url, farm)
    watch = Rounds(farm, settings, printer)
    await watch.frame(SIDE, FAILING_P, now())  # the side camera's latest frame has a box in the middle
    await sign_in(page, live_url, owner.user.email, then=f"/printers/{printer.id}/")
    tiles = page.locator("#camera-tiles figure")
    await expect(tiles).to_have_count(2)
    await expect(tiles.nth(0)).to_contain_text("nozzle (nozzle camera, shown but not watched)")
    await expect(tiles.nth(1)).to_contain_text("side (watched)")
    side = tiles.nth(1)
    await side.scroll_into_view_if_needed()
    await expect(side.locator("img")).to_have_attribute("src", re.compile(r"/media/.*/cameras/"))
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#camera-tiles img')].every((i) => i.complete && i.naturalWidth)")
    red = await side.locator("canvas").evaluate("""(c) => {
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let red = 0;
        for (let i = 0; i < data.length; i += 4) if (data[i + 3] && data[i] > 200 && data[i + 1] < 100) red++;
        return red;
    }""")
    assert red > 20  # the box the detector drew around the side camera's spaghetti
    nozzle_red = await tiles.nth(0).locator("canvas").evaluate("""(c) => {
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return data.some((v, i) => i % 4 === 3 && v > 0);
    }""")
    assert nozzle_red is False  # never scored: nothing drawn


async def test_an_ignore_area_drawn_on_another_camera_is_that_camera_s_own(
        live_url: str, farm: Farm, page: Page) -> None:  # noqa: F811
    owner, printer = await three_cameras(live_url, farm)
    await sign_in(page, live_url, owner.user.email, then=f"/printers/{printer.id}/")
    picker = page.locator("#mask-camera")
    await expect(picker.locator("option")).to_have_text(["Main camera", SIDE])  # a nozzle camera is not watched
    await picker.select_option(SIDE)
    await expect(page.locator("#mask-list")).to_contain_text("No ignore areas.")
    await page.get_by_role("button", name="Draw an ignore area").click()
    canvas = page.locator(f'#camera-tiles canvas[data-camera="{SIDE}"]')
    await canvas.scroll_into_view_if_needed()
    box = await canvas.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    await page.mouse.down()
    await page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.8, steps=5)
    await page.mouse.up()
    await expect(page.locator("#toasts")).to_contain_text("Ignore area saved")
    await expect(page.locator("#mask-list")).to_contain_text("Area 1: from 50 %, 50 % to 90 %, 80 %")
    cameras = await cameras_of(farm, printer)
    assert cameras[SIDE].ignore_masks == [pytest.approx([0.5, 0.5, 0.9, 0.8], abs=0.01)]
    assert cameras["nozzle"].ignore_masks in (None, [])
    assert (await load(farm, Printer, printer.id)).ignore_masks in (None, [])  # the main camera keeps none
    painted = await canvas.evaluate("""(c) => {
        const ctx = c.getContext('2d');
        const at = (fx, fy) =>
            Array.from(ctx.getImageData(Math.round(fx * c.width), Math.round(fy * c.height), 1, 1).data);
        return [at(0.7, 0.65), at(0.2, 0.2)];
    }""")
    assert painted[0][3] > 0 and painted[0][2] > painted[0][0]  # blue inside the area
    assert painted[1][3] == 0

    await picker.select_option("Main camera")
    await expect(page.locator("#mask-list")).to_contain_text("No ignore areas.")
    await picker.select_option(SIDE)
    await page.get_by_role("button", name="Remove ignore area 1").click()
    await expect(page.locator("#mask-list")).to_contain_text("No ignore areas.")
    assert (await cameras_of(farm, printer))[SIDE].ignore_masks == []


# --- the agent's cameras ---------------------------------------------------------------------------------

def test_the_agent_reads_a_list_of_cameras(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('server = "http://farm"\ntoken = "t"\n[moonraker]\nurl = "http://printer"\n'
                      '[camera]\nsnapshot_url = "http://cam/1"\n'
                      '[[cameras]]\nname = "side"\nstream_url = "http://cam/2"\n'
                      '[[cameras]]\nname = "nozzle"\nsnapshot_url = "http://cam/3"\nnozzle = true\n')
    read = AgentConfig.from_file(config)
    assert read.snapshot_url == "http://cam/1"
    assert [(c.name, c.snapshot_url, c.stream_url, c.nozzle) for c in read.cameras] == [
        ("side", None, "http://cam/2", False), ("nozzle", "http://cam/3", None, True)]
    for bad in ('[[cameras]]\nsnapshot_url = "http://cam/2"\n',
                '[[cameras]]\nname = "a"\n',
                '[[cameras]]\nname = "a"\nsnapshot_url = "u"\nstream_url = "v"\n',
                '[[cameras]]\nname = "a"\nsnapshot_url = "u"\n[[cameras]]\nname = "a"\nsnapshot_url = "v"\n',
                '[[cameras]]\nname = "a"\nsnapshot_url = "u"\nnozzle = "yes"\n',
                '[[cameras]]\nname = "a"\nsnapshot_url = "u"\nzoom = 2\n'):
        config.write_text('server = "http://farm"\n' + bad)
        with pytest.raises(ConfigError):
            AgentConfig.from_file(config)


class FrontCamera(SimulatedCamera):
    """The printer seen from the front: the part hides the tangle growing behind it."""

    def render(self) -> bytes:
        image, _ = render_frame(self.printer.scene, self.printer.progress, spaghetti=0.0,
                                seed=self.printer.frame_seed)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=self.quality)
        return out.getvalue()


FAST = Cadence(idle_status=1.0, active_status=0.3, watched_picture=0.4, unwatched_picture=5.0,
               min_backoff=0.1, max_backoff=0.5, http_timeout=10.0)
FAILS_SOON = SimulationOptions(speed=10.0, fail_rate=1.0, min_print_minutes=10, max_print_minutes=10,
                               idle_seconds=(1.0, 1.0), heating_rate=20.0, first_print_fails=True,
                               first_print_preheated=True)


async def test_two_cameras_end_to_end_spaghetti_on_the_second_alone_is_paused_through_a_mask_on_the_first(
        farm: Farm, settings: Settings) -> None:
    """The Must-show: a real agent sends two cameras' pictures; the server scores both with the
    shipped model. The primary camera never sees the failure, and a mask covers all of it; the
    second camera sees spaghetti, and the print is alerted on and paused."""
    from live_server import LiveServer

    owner: Member = await farm.member()
    printer = await farm.printer(owner, name="Two cameras", retract_on_pause=2.0)
    watching = settings.model_copy(update={"detection_enabled": True, "detection_interval_seconds": 0.3})
    with LiveServer(watching) as url:
        async with httpx.AsyncClient(base_url=url, headers=owner.headers, timeout=10) as api:
            masked = await api.patch(f"/api/v1/printers/{printer.id}/cameras/",
                                     json={"camera": None, "ignore_masks": [[0, 0, 1, 1]]})
            assert masked.status_code == 200
            simulated = SimulatedPrinter("two cameras", FAILS_SOON, seed=5)
            runner = AgentRunner(url, printer.auth_token, simulated, FrontCamera(simulated),
                                 cameras=[NamedCamera(SIDE, SimulatedCamera(simulated))], cadence=FAST)
            task = asyncio.create_task(runner.run())
            try:
                alert = await until(lambda: _failure_alert(api, printer.id), within=150)
                assert alert["paused"] is True
                await until(lambda: _is_paused(simulated), within=20)
                assert runner.commands_received[-1]["cmd"] == "pause"
            finally:
                runner.stop()
                assert await asyncio.wait_for(task, 30) == Stopped.REQUESTED  # an agent stops promptly
    stored = await rows(farm, Alert, printer_id=printer.id)
    failure = next(a for a in stored if a.kind == "FAILURE")
    shown = await load(farm, PredictionFrame, failure.frame_id)
    assert shown.camera == SIDE and shown.boxes
    frames = await rows(farm, PredictionFrame, print_id=failure.print_id)
    primary = [f for f in frames if f.camera is None]
    assert primary and max(f.p for f in primary) < 0.5 and not any(f.boxes for f in primary)
    assert max(f.p for f in frames if f.camera == SIDE) > 1.0


async def _failure_alert(api: httpx.AsyncClient, printer_id: int) -> dict[str, Any] | None:
    found = (await api.get("/api/v1/alerts/", params={"printer_id": printer_id})).json()
    return next((a for a in found if a["kind"] == "FAILURE"), None)


async def _is_paused(printer: SimulatedPrinter) -> bool:
    return printer.state is PrinterState.PAUSED
