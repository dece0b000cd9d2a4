"""The detector's second output, quality defects (issue 19): the runtime with and without it,
`layerfleet detect --json`, the quality warning (its own alert kind, never a pause, once per
print), prediction JSON and the PrintWatch answer."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from conftest import Farm, now
from defect_models import tiny_model
from layerfleet.accounts.models import Role
from layerfleet.config import Settings
from layerfleet.detection import Detector, FrameResult
from layerfleet.detection.models import Alert, AlertKind
from layerfleet.notifications import messages
from layerfleet.notifications.models import NotificationEvent, OutboxEvent
from layerfleet.prints.models import Print
from layerfleet.printwatch.inference import PrintWatchInference
from layerfleet.watching.frames import apply_frame
from layerfleet.watching.quality import DEFECT_FRAMES_TO_WARN
from test_notifications import make_target
from test_printwatch import infer, key, owner, register  # noqa: F401  (fixtures)
from test_watching import Watch, commands, load, rows, watched_printer


def picture(width: int = 640, height: int = 480) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def defect_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models") / "defects.onnx", failure=0.05, defect=0.9)


# --- the runtime --------------------------------------------------------------------------------------

def test_a_model_with_the_defect_output_gives_a_defect_score_and_boxes(defect_model: Path) -> None:
    detector = Detector(defect_model)
    assert detector.has_defects
    result = detector.detect_one(picture())
    assert result.score == pytest.approx(0.05) and result.boxes == []
    assert result.defect_score == pytest.approx(0.9)
    # The lower-right cell of the 64 px input, back in the 640×480 picture (letterbox pad 8 px).
    [(xc, yc, w, h, conf)] = result.defect_boxes
    assert (xc, yc, w, h) == pytest.approx((480, 380, 240, 200)) and conf == pytest.approx(0.9)
    shown = result.as_json()
    assert shown["defect_score"] == 0.9 and shown["defect_boxes"] == [[480.0, 380.0, 240.0, 200.0, 0.9]]


def test_a_batch_keeps_each_frames_defect_result(defect_model: Path) -> None:
    detector = Detector(defect_model)
    results = detector.detect([picture(), b"not a picture", picture(1280, 720)])
    assert results[0].defect_score == pytest.approx(0.9)  # type: ignore[union-attr]
    assert not isinstance(results[1], FrameResult)
    assert isinstance(results[2], FrameResult) and results[2].width == 1280 and len(results[2].defect_boxes) == 1


def test_a_model_without_the_defect_output_keeps_working(tmp_path: Path) -> None:
    older = Detector(tiny_model(tmp_path / "older.onnx", with_defects=False))
    assert not older.has_defects
    result = older.detect_one(picture())
    assert result.score == pytest.approx(0.05)
    assert result.defect_score is None and result.defect_boxes == []
    assert result.as_json()["defect_score"] is None


def test_the_shipped_model_reports_defects() -> None:
    shipped = Detector()  # trained with the defect head (issue 19): five outputs
    assert shipped.has_defects
    score = shipped.detect_one(picture()).defect_score
    assert score is not None and 0.0 <= score <= 1.0


def test_detect_json_reports_the_defect_output(defect_model: Path, tmp_path: Path) -> None:
    (tmp_path / "frame.jpg").write_bytes(picture())
    run = subprocess.run([sys.executable, "-m", "layerfleet", "detect", str(tmp_path), "--json",
                          "--model", str(defect_model)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    [line] = [json.loads(text) for text in run.stdout.splitlines()]
    assert line["defect_score"] == 0.9 and line["defect_boxes"] == [[480.0, 380.0, 240.0, 200.0, 0.9]]
    table = subprocess.run([sys.executable, "-m", "layerfleet", "detect", str(tmp_path / "frame.jpg"),
                            "--model", str(defect_model)], capture_output=True, text=True, timeout=120)
    header, row = table.stdout.splitlines()
    assert "defect" in header and row.split()[3] == "0.900"


# --- the quality warning ------------------------------------------------------------------------------

def defect_result(defect: float | None, failure: float = 0.0) -> FrameResult:
    boxes = [(480.0, 380.0, 240.0, 200.0, defect)] if defect is not None else []
    return FrameResult(score=failure, p=0.0, boxes=[], width=640, height=480, defect_score=defect,
                       defect_boxes=boxes)


class DefectWatch(Watch):
    async def defect_frame(self, defect: float | None) -> Any:
        self.clock += timedelta(seconds=10)

        async def work(session: Any) -> Any:
            outcome = await apply_frame(session, self.farm.bus, self.printer_id, self.picture, defect_result(defect),
                                        self.clock, data_dir=self.settings.data_dir)
            await session.commit()
            return outcome

        return await self.farm.run(work)


async def test_defects_raise_one_quality_warning_per_print_and_never_a_pause(
        farm: Farm, settings: Settings, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", [NotificationEvent.QUALITY_WARNING.value])
    printer, print_, agent = await watched_printer(farm, admin)
    watch = DefectWatch(farm, settings, printer)
    for _ in range(5):
        await watch.defect_frame(None)  # a model without the defect output: nothing to count
        await watch.defect_frame(0.3)  # below the threshold
    assert (await load(farm, Print, print_.id)).defect_frames == 0
    for _ in range(DEFECT_FRAMES_TO_WARN - 1):
        await watch.defect_frame(0.9)
    assert await rows(farm, Alert, print_id=print_.id) == []  # one frame or two may be a glare
    for _ in range(20):
        await watch.defect_frame(0.9)
    [alert] = await rows(farm, Alert, print_id=print_.id)
    assert alert.kind == AlertKind.QUALITY.value == "QUALITY" and alert.paused is False
    assert alert.details["defect_score"] == 0.9 and len(alert.details["defect_boxes"]) == 1
    assert commands(agent) == []  # never a pause
    stored = await load(farm, Print, print_.id)
    assert stored.quality_alerted_at is not None and stored.paused_at is None
    assert stored.alerted_at is None  # the failure rules' state is untouched
    [event] = await rows(farm, OutboxEvent, print_id=print_.id)
    assert event.kind == NotificationEvent.QUALITY_WARNING.value and event.payload["paused"] is False
    assert event.payload["boxes"] == [[480.0, 380.0, 240.0, 200.0, 0.9]]
    assert "quality defect" in messages.title_of(event)
    assert any("goes on" in line for line in messages.lines_of(event))

    following = await farm.print(printer, current=True)  # the next print may warn again
    for _ in range(DEFECT_FRAMES_TO_WARN):
        await watch.defect_frame(0.9)
    assert [a.kind for a in await rows(farm, Alert, print_id=following.id)] == ["QUALITY"]


async def test_prediction_json_reports_the_defect_output(farm: Farm, settings: Settings,
                                                         client: httpx.AsyncClient) -> None:
    owner_ = await farm.member()
    printer, print_, _ = await watched_printer(farm, owner_)
    watch = DefectWatch(farm, settings, printer)
    await watch.defect_frame(None)
    await watch.defect_frame(0.9)
    first, second = (await client.get(f"/api/v1/prints/{print_.id}/prediction_json", headers=owner_.headers)).json()
    assert first["defect_score"] is None and first["defect_detections"] == []
    assert second["defect_score"] == 0.9
    assert second["defect_detections"] == [["defect", 0.9, [480.0, 380.0, 240.0, 200.0]]]
    assert second["detections"] == []  # the failure detections are apart


async def test_defect_boxes_under_an_ignore_mask_are_not_kept(farm: Farm, settings: Settings) -> None:
    printer, _, _ = await watched_printer(farm, ignore_masks=[[0.6, 0.6, 1.0, 1.0]])
    watch = DefectWatch(farm, settings, printer)
    outcome = await watch.defect_frame(0.9)
    assert outcome.frame.defect_boxes == [] and outcome.frame.defect_score == pytest.approx(0.9)


# --- PrintWatch ---------------------------------------------------------------------------------------

async def test_the_printwatch_answer_carries_the_defect_fields(app: Any, client: httpx.AsyncClient, farm: Farm,
                                                               key: str, defect_model: Path) -> None:  # noqa: F811
    await register(client, key)
    shipped = await infer(client, key)
    assert shipped["statusCode"] == 200 and 0.0 <= shipped["defect_score"] <= 1.0
    assert isinstance(shipped["defect_boxes"], list)
    shared = app.state.services.printwatch_inference
    app.state.services.printwatch_inference = PrintWatchInference(load=lambda: Detector(defect_model))
    try:
        from test_printwatch import rewind

        await rewind(farm)
        answer = await infer(client, key)
    finally:
        app.state.services.printwatch_inference = shared
    assert answer["statusCode"] == 200
    assert answer["defect_detected"] == "False"  # the seed's field still means a failure
    assert answer["defect_score"] == 0.9
    # 640 × 480 picture → the clients' 640 × 640 space: y scaled by 4/3.
    [[cx, cy, w, h]] = answer["defect_boxes"]
    assert (cx, cy, w, h) == pytest.approx((480.0, 506.7, 240.0, 266.7), abs=0.1)
    assert set(shipped) <= set(answer)


def test_the_print_timeline_tells_a_quality_warning_from_a_failure() -> None:
    from layerfleet.web.prints import timeline

    start = now()
    print_ = Print(started_at=start, filename="vase.gcode")
    quality = Alert(kind=AlertKind.QUALITY.value, normalized_p=0.1, paused=False,
                    created_at=start + timedelta(minutes=5), details={"defect_score": 0.87})
    events = timeline(print_, [quality])
    shown = next(e for e in events if e.title == "Quality defect seen")
    assert shown.tone == "warn" and "87 %" in shown.detail and "went on" in shown.detail
    assert not any("failure" in e.title.lower() for e in events)
