"""The real training pipeline, a few steps on a handful of images from ../shared (both data
sets, every kind of synthetic sample: simulator frames, composites, clutter), exported to ONNX
with the defect output and to INT8, and loaded by the runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from defect_models import tiny_model
from layerfleet.detection import Detector

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "print-failures"
EXTRA = REPO.parent / "shared" / "datasets" / "print-failures-extra"


def test_train_a_few_steps_export_and_load(tmp_path: Path) -> None:
    assert (DATA / "images" / "train").is_dir(), "the training data set must be beside the project"
    assert (EXTRA / "manifest.csv").is_file(), "the extra data set must be beside the project"
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--data", str(DATA), "--extra", str(EXTRA), "--out", str(out),
         "--limit", "6", "--steps", "2", "--batch", "4", "--workers", "0", "--synthetic", "4",
         "--export-size", "288", "--second-opinion-seed", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The shipped pair is one command: the second opinion, the same recipe with its own seed.
    second = out / "second-opinion" / "model.onnx"
    assert "exported" in (out / "second-opinion" / "train.log").read_text()
    assert second.read_bytes() != (out / "model.onnx").read_bytes()
    assert Detector(out / "model.onnx", second_opinion=second).second_opinion == second
    log = (out / "train.log").read_text()
    assert "step 2/2" in log and "exported" in log
    assert '"defect":' in log  # the defect head's loss is trained
    counts = json.loads(log.split("synthetic per epoch: ")[1].split(";")[0])
    assert counts["composite"] >= 1 and counts["clutter"] >= 1 and counts["simulator"] >= 1
    # print-failures' 6 + 6 and the extra set's train and val rows (one of each kind at least).
    train_images = int(log.split("train ")[1].split(" images")[0])
    assert train_images > 6
    assert '"defect_auroc":' in log

    model = out / "model.onnx"
    detector = Detector(model)
    assert detector.input_size == 288 and detector.has_defects
    picture = next((DATA / "images" / "val").glob("*.jpg")).read_bytes()
    scored = detector.detect_one(picture)
    assert 0.0 <= scored.score <= 1.0
    assert scored.defect_score is not None and 0.0 <= scored.defect_score <= 1.0

    from training.export import calibration_frames, quantize_int8

    int8 = quantize_int8(model, tmp_path / "int8.onnx", calibration_frames(DATA, 4), 288)
    assert int8.stat().st_size < model.stat().st_size / 2
    quantized = Detector(int8).detect_one(picture)
    assert quantized.score == pytest.approx(scored.score, abs=0.25)
    assert quantized.defect_score is not None

    evaluated = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--model", str(model), "--data", str(DATA), "--extra", str(EXTRA),
         "--sets", "extra-holdout", "--json"], cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    figures = json.loads(evaluated.stdout)["sets"]["extra-holdout"]
    assert figures["images"] > 100 and figures["defect_images"] > 0
    assert 0.0 <= figures["defect_auroc"] <= 1.0 and 0.0 <= figures["auroc"] <= 1.0


def test_the_pair_fails_as_a_whole_when_one_network_cannot_be_trained(tmp_path: Path) -> None:
    # The two networks train in their own processes; the command must not say nothing and exit 0
    # when one of them died (here: the data set is missing, which stops both).
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--data", str(tmp_path / "missing"), "--no-extra",
         "--out", str(tmp_path / "run"), "--limit", "2", "--steps", "1", "--workers", "0",
         "--second-opinion-seed", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode != 0
    assert "training failed for" in result.stderr and "second-opinion" in result.stderr
    assert "no train images at" in result.stderr
    assert not (tmp_path / "run" / "model.onnx").exists()


def test_a_weight_average_is_exported_and_frozen_batch_norms_may_keep_imagenet_s_statistics(tmp_path: Path) -> None:
    """Two short epochs (the second is where the shipped recipe lets the frozen layers' batch
    norms follow the data) with ``--ema`` and ``--keep-imagenet-bn``."""
    import torch
    from training.model import FailureDetector

    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--data", str(DATA), "--extra", str(EXTRA), "--out", str(out),
         "--limit", "4", "--epochs", "2", "--batch", "4", "--size", "160", "--workers", "0", "--synthetic", "4",
         "--export-size", "160", "--ema", "0.9", "--keep-imagenet-bn"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "weight average 0.9" in log and "frozen batch norms ImageNet" in log
    assert "epoch 1 done" in log and "exported" in log
    saved = torch.load(out / "last.pt", weights_only=False)["model"]
    imagenet = FailureDetector(160).state_dict()
    frozen_norms = [name for name in saved if name.startswith(("backbone._bn0.", "backbone._blocks.0."))
                    and ("running_mean" in name or "running_var" in name)]
    assert frozen_norms
    for name in frozen_norms:
        assert torch.allclose(saved[name], imagenet[name], atol=1e-5), name
    trained = [name for name in saved if name.startswith("backbone._blocks.10.") and "running_mean" in name]
    assert trained and any(not torch.allclose(saved[n], imagenet[n], atol=1e-5) for n in trained)
    assert Detector(out / "model.onnx").input_size == 160


def test_evaluate_reports_the_shipped_model_s_defect_figures_and_n_a_for_a_model_without_them(
        tmp_path: Path) -> None:
    run = [sys.executable, "-m", "training.evaluate", "--data", str(DATA), "--extra", str(EXTRA), "--sets", "extra-val"]
    table = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert table.returncode == 0, table.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[2:] if line.strip()}
    assert 0.5 < float(rows["defect_auroc"][0]) <= 1.0 and 0.0 <= float(rows["ap50_defect"][0]) <= 1.0
    assert 0.5 < float(rows["auroc"][0]) <= 1.0
    older = tiny_model(tmp_path / "older.onnx", with_defects=False)  # as the 2026-11-21 model: no defect output
    figures = json.loads(subprocess.run([*run, "--model", str(older), "--json"], cwd=REPO, capture_output=True,
                                        text=True, timeout=600).stdout)["sets"]["extra-val"]
    assert figures["defect_auroc"] is None and figures["ap50_defect"] is None and figures["defect_images"] > 0
    bad = subprocess.run([*run[:-1], "val,nowhere"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown set" in bad.stderr


def test_evaluate_measures_a_model_with_a_second_opinion(tmp_path: Path) -> None:
    sure = tiny_model(tmp_path / "sure.onnx", failure=0.9, defect=0.9)
    doubtful = tiny_model(tmp_path / "doubtful.onnx", failure=0.02, defect=0.2)
    run = [sys.executable, "-m", "training.evaluate", "--data", str(DATA), "--extra", str(EXTRA), "--sets", "val",
           "--json", "--model", str(sure)]
    answers = [json.loads(subprocess.run(run + extra, cwd=REPO, capture_output=True, text=True, timeout=600).stdout)
               for extra in ([], ["--second-opinion", str(doubtful)], ["--second-opinion", str(doubtful),
                                                                        "--second-opinion-from", "0.95"])]
    alone, pair, never_asked = answers
    images = alone["sets"]["val"]["images"]
    assert alone["second_opinion"] is None and alone["sets"]["val"]["recall_at_0.5"] == 1.0
    assert pair["second_opinion"] == str(doubtful) and pair["second_opinions"] == images
    assert pair["sets"]["val"]["recall_at_0.5"] == 0.0  # every score is the average of 0.9 and 0.02: 0.30
    assert never_asked["second_opinions"] == 0 and never_asked["sets"] == alone["sets"] | {
        "val": alone["sets"]["val"] | {"ms_per_image": never_asked["sets"]["val"]["ms_per_image"]}}
    refused = subprocess.run([*run[:-2], "--second-opinion", str(sure)], cwd=REPO, capture_output=True, text=True,
                             timeout=120)  # the shipped 256 px model and a 64 px one
    assert refused.returncode == 2 and "does not match" in refused.stderr


def test_validating_only_after_the_last_epoch_exports_the_same_weights(tmp_path: Path) -> None:
    """``--val-every 0`` (what the one command does) skips validation until the last epoch; it
    must not change what is trained, or the one command would no longer make the shipped model."""
    import torch

    logs, weights = [], []
    for every in ("1", "0"):
        out = tmp_path / f"every-{every}"
        result = subprocess.run(
            [sys.executable, "-m", "training.train", "--data", str(DATA), "--extra", str(EXTRA), "--out", str(out),
             "--limit", "4", "--epochs", "2", "--batch", "4", "--size", "160", "--workers", "0", "--synthetic", "4",
             "--export-size", "160", "--threads", "1", "--val-every", every],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        logs.append((out / "train.log").read_text())
        weights.append(torch.load(out / "last.pt", weights_only=False)["model"])
    every_epoch, at_end = logs
    first_epoch_line = next(line for line in at_end.splitlines() if "epoch 0 done" in line)
    assert "val" not in first_epoch_line
    assert "val {" in next(line for line in every_epoch.splitlines() if "epoch 0 done" in line)
    assert "val {" in next(line for line in at_end.splitlines() if "epoch 1 done" in line)
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_a_killed_pair_command_stops_both_networks(tmp_path: Path) -> None:
    """SIGTERM to the command must not leave its two trainings running on their own."""
    import signal
    import time

    out = tmp_path / "run"
    command = subprocess.Popen(
        [sys.executable, "-m", "training.train", "--data", str(DATA), "--no-extra", "--out", str(out),
         "--limit", "2", "--steps", "100000", "--batch", "2", "--size", "64", "--export-size", "64", "--workers", "0",
         "--synthetic", "2", "--threads", "2", "--second-opinion-seed", "3"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    logs = [out / "train.log", out / "second-opinion" / "train.log"]
    deadline = time.monotonic() + 300
    while not all(log.is_file() and "step 20/" in log.read_text() for log in logs):
        assert command.poll() is None, command.stderr.read() if command.stderr else ""
        assert time.monotonic() < deadline, "the two trainings did not get going"
        time.sleep(0.5)
    children = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(command.pid)], capture_output=True,
                                                   text=True).stdout.split()]
    assert len(children) >= 2
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=60) != 0
    for pid in children:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], pid
    sizes = [log.stat().st_size for log in logs]
    time.sleep(3)
    assert [log.stat().st_size for log in logs] == sizes  # nothing trains on
    assert not (out / "model.onnx").exists()
