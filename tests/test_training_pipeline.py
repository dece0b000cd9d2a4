"""The real training pipeline, a few steps on a handful of images from ../shared, exported
to ONNX and INT8 and loaded by the runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from layerfleet.detection import Detector

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "print-failures"


def test_train_a_few_steps_export_and_load(tmp_path: Path) -> None:
    assert (DATA / "images" / "train").is_dir(), "the training data set must be beside the project"
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--data", str(DATA), "--out", str(out), "--limit", "6",
         "--steps", "2", "--batch", "4", "--workers", "0", "--synthetic", "4", "--export-size", "288"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "step 2/2" in log and "exported" in log
    model = out / "model.onnx"
    detector = Detector(model)
    assert detector.input_size == 288
    picture = next((DATA / "images" / "val").glob("*.jpg")).read_bytes()
    scored = detector.detect_one(picture)
    assert 0.0 <= scored.score <= 1.0

    from training.export import calibration_frames, quantize_int8

    int8 = quantize_int8(model, tmp_path / "int8.onnx", calibration_frames(DATA, 4), 288)
    assert int8.stat().st_size < model.stat().st_size / 2
    quantized = Detector(int8).detect_one(picture)
    assert quantized.score == pytest.approx(scored.score, abs=0.25)
