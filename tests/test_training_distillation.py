"""Distillation (`training.train --distill-from`): the teachers score as the server scores a pair,
and their scores move what the failure score learns."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training.distillation import Teachers
from training.model import FailureDetector, detection_loss

from layerfleet.detection import Detector
from layerfleet.detection.runtime import SECOND_OPINION_MODEL, SHIPPED_MODEL

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "src" / "layerfleet" / "detection" / "models"


def _frames(count: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    frames = []
    for i in range(count):
        pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        pixels[200:320, 100 + 40 * i:300 + 40 * i] = (230, 230, 240)  # something to look at
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        frames.append(buffer.getvalue())
    return frames


def test_the_teachers_score_a_batch_as_the_server_scores_it_with_its_second_opinion() -> None:
    first, second = MODELS / SHIPPED_MODEL, MODELS / SECOND_OPINION_MODEL
    server = Detector(first, second_opinion=second, second_opinion_from=0.0, threads=1)
    prepared = [server.prepare(data) for data in _frames(4)]
    expected = [result.score for result in server.run(prepared)]
    batch = torch.from_numpy(np.stack([p.pixels for p in prepared]).astype(np.float32)).permute(0, 3, 1, 2)

    taught = Teachers([first, second], threads=1, second_opinion_from=0.0).image_scores(batch)
    assert taught.tolist() == pytest.approx(expected, abs=1e-4)
    alone = Teachers([first], threads=1).image_scores(batch)
    assert alone.tolist() == pytest.approx([r.score for r in Detector(first, threads=1).run(prepared)], abs=1e-4)
    assert alone.tolist() != pytest.approx(taught.tolist(), abs=1e-4), "the second opinion must change something"
    # A training batch at another size is resized to the teachers' input first.
    larger = torch.nn.functional.interpolate(batch, size=(320, 320))
    assert Teachers([first], threads=1).image_scores(larger).shape == (4,)


def test_the_failure_score_learns_the_given_share_from_the_teachers() -> None:
    torch.manual_seed(0)
    model = FailureDetector(64, pretrained=False).eval()
    images = torch.rand(2, 3, 64, 64) * 255
    targets = [torch.zeros(0, 5), torch.zeros(0, 5)]
    flags = torch.tensor([[1.0, 0, 0, 1, 0], [0.0, 0, 0, 1, 0]])
    plain, parts = detection_loss(model, images, targets, flags)
    same, _ = detection_loss(model, images, targets, flags, teacher=flags[:, 0], distill=0.5)
    assert same.item() == pytest.approx(plain.item(), rel=1e-6), "teachers agreeing with the labels change nothing"
    unsure = torch.tensor([0.5, 0.5])
    _, half_parts = detection_loss(model, images, targets, flags, teacher=unsure, distill=0.5)
    _, full_parts = detection_loss(model, images, targets, flags, teacher=unsure, distill=1.0)
    logit = model.forward_raw(images)[2][:, 0]
    taught = torch.nn.functional.binary_cross_entropy_with_logits(logit, unsure).item()
    assert full_parts["image"] == pytest.approx(taught, rel=1e-5)
    assert half_parts["image"] == pytest.approx((parts["image"] + taught) / 2, rel=1e-5)


def test_a_network_is_trained_with_the_shipped_pair_as_teachers_and_a_missing_teacher_stops_it(
        tmp_path: Path) -> None:
    command = [sys.executable, "-m", "training.train", "--limit", "2", "--steps", "1", "--batch", "2",
               "--workers", "0", "--synthetic", "2", "--size", "64", "--export-size", "64", "--distill-from"]
    taught = subprocess.run([*command, str(MODELS / SHIPPED_MODEL), str(MODELS / SECOND_OPINION_MODEL),
                             "--out", str(tmp_path / "taught")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert taught.returncode == 0, taught.stderr[-3000:]
    log = (tmp_path / "taught" / "train.log").read_text()
    teachers = f"['{MODELS / SHIPPED_MODEL}', '{MODELS / SECOND_OPINION_MODEL}']"
    assert f"taught by {teachers} (0.5 of the failure score)" in log
    assert Detector(tmp_path / "taught" / "model.onnx").input_size == 64

    result = subprocess.run([*command, str(tmp_path / "nowhere.onnx"), "--out", str(tmp_path / "run")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "no teacher model at" in result.stderr
    assert not (tmp_path / "run" / "model.onnx").exists()


def test_the_shipped_pair_is_trained_from_scratch_by_one_command(tmp_path: Path) -> None:
    out = tmp_path / "pair"
    command = [sys.executable, "-m", "training.train", "--limit", "2", "--steps", "1", "--batch", "2",
               "--workers", "0", "--synthetic", "2", "--size", "64", "--export-size", "64", "--out", str(out),
               "--seed", "5", "--teacher-seeds", "3", "4", "--distill-weight", "0.25"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    teachers = out / "teachers"
    first_teacher, second_teacher = teachers / "model.onnx", teachers / "second-opinion" / "model.onnx"
    assert first_teacher.read_bytes() != second_teacher.read_bytes()
    log = (out / "train.log").read_text()
    assert f"taught by {[str(first_teacher), str(second_teacher)]} (0.25 of the failure score)" in log
    assert "teachers and student in" in log
    assert "taught by the labels alone" in (teachers / "train.log").read_text()
    # The student ships with the teachers' second network as its second opinion.
    assert (out / "second-opinion" / "model.onnx").read_bytes() == second_teacher.read_bytes()
    assert (out / "model.onnx").read_bytes() not in (first_teacher.read_bytes(), second_teacher.read_bytes())
    pair = Detector(out / "model.onnx", second_opinion=out / "second-opinion" / "model.onnx")
    assert pair.input_size == 64

    refused = subprocess.run([*command, "--distill-from", str(first_teacher)], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2
    assert "not with --distill-from or --second-opinion-seed" in refused.stderr
