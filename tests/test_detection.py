"""The shipped failure detector through its runtime: generated frames, batches, bad input."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerfleet.detection import ALERT_SCORE, BadImage, Detector, FrameResult
from layerfleet.detection.runtime import nms, shipped_model_path
from layerfleet.simulator.render import Scene, render_frame

SEEDS = range(10)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


def frame(seed: int, spaghetti: float, width: int = 640, height: int = 480) -> tuple[bytes, list]:
    import random

    image, boxes = render_frame(Scene.random(random.Random(seed)), 0.5, spaghetti=spaghetti, seed=seed,
                                width=width, height=height)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue(), boxes


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_the_shipped_model_is_in_the_package_and_small() -> None:
    path = shipped_model_path()
    assert path.is_file()
    assert path.stat().st_size <= 20 * 1024 * 1024


def test_clean_simulator_frames_score_low(detector: Detector) -> None:
    results = [detector.detect_one(frame(seed, 0.0)[0]) for seed in SEEDS]
    assert all(isinstance(r, FrameResult) for r in results)
    low = [r.score < ALERT_SCORE for r in results]
    assert sum(low) >= len(results) - 1, [round(r.score, 3) for r in results]
    assert np.mean([r.score for r in results]) < 0.25


def test_frames_with_spaghetti_score_high_with_boxes_on_it(detector: Detector) -> None:
    scores, hits = [], 0
    for seed in SEEDS:
        data, truth = frame(seed, 0.9)
        result = detector.detect_one(data)
        scores.append(result.score)
        (tx0, ty0, tx1, ty1), = truth
        for xc, yc, w, h, conf in result.boxes:
            assert conf > 0.08 and w > 0 and h > 0
            if tx0 <= xc <= tx1 and ty0 <= yc <= ty1:
                hits += 1
                break
    assert sum(s >= ALERT_SCORE for s in scores) >= len(scores) - 1, [round(s, 3) for s in scores]
    assert hits >= len(scores) - 2


def test_p_is_the_sum_of_box_confidences_and_boxes_are_in_image_pixels(detector: Detector) -> None:
    data, _ = frame(3, 1.0, width=1280, height=720)
    result = detector.detect_one(data)
    assert result.p == pytest.approx(sum(box[4] for box in result.boxes))
    for xc, yc, w, h, _conf in result.boxes:
        assert 0 <= xc <= 1280 and 0 <= yc <= 720 and w <= 1280 and h <= 720


def test_a_batch_scores_each_frame_as_alone_and_survives_a_bad_one(detector: Detector) -> None:
    frames = [frame(seed, 0.9 if seed % 2 else 0.0)[0] for seed in range(4)]
    alone = [detector.detect_one(f) for f in frames]
    batch = detector.detect([frames[0], b"garbage", frames[1], frames[2], frames[3]])
    assert isinstance(batch[1], BadImage)
    together = [batch[0], batch[2], batch[3], batch[4]]
    for a, b in zip(alone, together, strict=True):
        assert isinstance(b, FrameResult)
        assert b.score == pytest.approx(a.score, abs=1e-4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not a picture at all", "not a readable image"),
        (frame(1, 0.0)[0][:3000], "damaged or truncated"),
        (png_header_only(20000, 20000), "too large"),
        (png_header_only(9000, 9000), "megapixels"),
    ],
    ids=["empty", "text", "truncated-jpeg", "20000x20000", "bomb-81MP"],
)
def test_bad_input_raises_a_clear_error(detector: Detector, data: bytes, message: str) -> None:
    with pytest.raises(BadImage, match=message):
        detector.detect_one(data)


def test_an_unreadable_picture_is_explained_without_the_servers_internals(detector: Detector) -> None:
    with pytest.raises(BadImage) as refused:
        detector.detect_one(b"GIF89a but not really" * 10)
    assert "object at 0x" not in str(refused.value) and "BytesIO" not in str(refused.value)
    assert "not a readable image" in str(refused.value)


def test_other_formats_and_modes_are_read(detector: Detector) -> None:
    for mode in ("RGBA", "L", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (300, 200)).save(buffer, "PNG")
        assert 0.0 <= detector.detect_one(buffer.getvalue()).score <= 1.0


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.3])) == [1, 2]


def test_cli_json_prints_one_line_per_image(tmp_path: Path) -> None:
    (tmp_path / "clean.jpg").write_bytes(frame(2, 0.0)[0])
    (tmp_path / "failing.jpg").write_bytes(frame(5, 1.0)[0])
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    result = subprocess.run([sys.executable, "-m", "layerfleet", "detect", str(tmp_path), "--json"],
                            capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3 and result.returncode == 1
    by_name = {Path(line["path"]).name: line for line in lines}
    assert "error" in by_name["broken.jpg"]
    assert by_name["failing.jpg"]["score"] > by_name["clean.jpg"]["score"]
    for name in ("clean.jpg", "failing.jpg"):
        line = by_name[name]
        assert set(line) == {"path", "score", "p", "boxes", "defect_score", "defect_boxes"}
        assert 0.0 <= line["defect_score"] <= 1.0  # the shipped model has the defect output
        assert all(len(box) == 5 for box in line["defect_boxes"])
        assert all(len(box) == 5 for box in line["boxes"])
    table = subprocess.run([sys.executable, "-m", "layerfleet", "detect", str(tmp_path / "clean.jpg")],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "clean.jpg" in table.stdout and "score" in table.stdout


def test_the_runtime_does_not_need_torch() -> None:
    code = ("import sys, layerfleet.detection, layerfleet.cli; "
            "from layerfleet.detection import Detector; Detector(); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
