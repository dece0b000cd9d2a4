"""A second network asked on the frames the first finds suspicious (`detection.runtime`): what
it changes, when it is asked, which one the server runs, and models that cannot be paired."""

from __future__ import annotations

from pathlib import Path

import pytest

from defect_models import tiny_model
from layerfleet import metrics
from layerfleet.detection import Detector
from layerfleet.detection.runtime import (
    MODEL_ENV,
    SECOND_OPINION_ENV,
    SECOND_OPINION_FROM,
    SECOND_OPINION_FROM_ENV,
    ModelMissing,
    configured_second_opinion_from,
    mean_in_logit_space,
    second_opinion_path,
    shipped_model_path,
)

REPO = Path(__file__).resolve().parents[1]
PICTURES = sorted((REPO.parent / "shared" / "datasets" / "print-failures" / "images" / "val").glob("*.jpg"))[:3]


def asked_so_far() -> float:
    return metrics.REGISTRY.get_sample_value("layerfleet_detection_second_opinions_total") or 0.0


def test_the_average_is_taken_in_logit_space() -> None:
    assert mean_in_logit_space([0.9, 0.1]) == pytest.approx(0.5)
    assert mean_in_logit_space([0.99, 0.5]) == pytest.approx(1 / (1 + 99 ** -0.5))
    assert mean_in_logit_space([1.0, 0.0]) == pytest.approx(0.5)  # clipped, not a division by zero


def test_a_suspicious_frame_gets_the_average_and_keeps_the_first_network_s_boxes(tmp_path: Path) -> None:
    sure = tiny_model(tmp_path / "sure.onnx", failure=0.9, defect=0.9)
    doubtful = tiny_model(tmp_path / "doubtful.onnx", failure=0.1, defect=0.2)
    alone = Detector(sure)
    pair = Detector(sure, second_opinion=doubtful, second_opinion_from=0.5)
    frames = [alone.prepare(path.read_bytes()) for path in PICTURES]
    before = asked_so_far()
    for both, first in zip(pair.run(frames), alone.run(frames), strict=True):
        assert both.score == pytest.approx(0.5, abs=1e-5)
        assert both.defect_score == pytest.approx(mean_in_logit_space([0.9, 0.2]), abs=1e-5)
        assert both.boxes == first.boxes and both.defect_boxes == first.defect_boxes and both.p == first.p
    assert pair.second_opinions == len(frames) and alone.second_opinions == 0
    assert asked_so_far() - before == len(frames)  # /metrics: what the second opinion costs


def test_a_frame_below_the_gate_costs_one_network(tmp_path: Path) -> None:
    calm = tiny_model(tmp_path / "calm.onnx", failure=0.05, defect=0.3)
    alarmed = tiny_model(tmp_path / "alarmed.onnx", failure=0.95, defect=0.95)
    pair = Detector(calm, second_opinion=alarmed, second_opinion_from=0.1)
    before = asked_so_far()
    results = pair.detect([path.read_bytes() for path in PICTURES] + [b"not a picture"])
    assert [round(r.score, 4) for r in results[:-1]] == [0.05] * len(PICTURES)  # type: ignore[union-attr]
    assert pair.second_opinions == 0 and asked_so_far() == before
    every = Detector(calm, second_opinion=alarmed, second_opinion_from=0.0)
    assert every.detect_one(PICTURES[0].read_bytes()).score == pytest.approx(mean_in_logit_space([0.05, 0.95]))
    assert every.second_opinions == 1


def test_models_that_cannot_share_a_frame_are_refused(tmp_path: Path) -> None:
    tiny = tiny_model(tmp_path / "tiny.onnx")
    with pytest.raises(ModelMissing, match="does not match"):  # 256 px and 64 px
        Detector(shipped_model_path(), second_opinion=tiny)
    with pytest.raises(ModelMissing, match="does not match"):  # one has the defect output, the other not
        Detector(tiny, second_opinion=tiny_model(tmp_path / "older.onnx", with_defects=False))
    with pytest.raises(ModelMissing, match="no detection model"):
        Detector(tiny, second_opinion=tmp_path / "gone.onnx")


def test_which_second_opinion_the_server_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(SECOND_OPINION_ENV, raising=False)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    packaged = second_opinion_path()
    assert packaged is not None and packaged.is_file() and packaged.parent == shipped_model_path().parent
    shipped = Detector()
    assert shipped.second_opinion == packaged and shipped.second_opinion_from == SECOND_OPINION_FROM
    assert Detector(shipped_model_path()).second_opinion is None  # a named model scores alone
    # Another first model: the packaged second opinion was not chosen to offset its errors.
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "mine.onnx"))
    assert second_opinion_path() is None
    monkeypatch.setenv(SECOND_OPINION_ENV, str(tmp_path / "second.onnx"))
    assert second_opinion_path() == tmp_path / "second.onnx"
    monkeypatch.delenv(MODEL_ENV)
    for off in ("none", "off", ""):
        monkeypatch.setenv(SECOND_OPINION_ENV, off)
        assert second_opinion_path() is None
        assert Detector().second_opinion is None


def test_the_gate_is_configured_within_zero_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECOND_OPINION_FROM_ENV, raising=False)
    assert configured_second_opinion_from() == SECOND_OPINION_FROM
    monkeypatch.setenv(SECOND_OPINION_FROM_ENV, "0.3")
    assert configured_second_opinion_from() == 0.3
    for bad in ("1.5", "-0.1", "often", "nan"):
        monkeypatch.setenv(SECOND_OPINION_FROM_ENV, bad)
        with pytest.raises(ValueError, match=SECOND_OPINION_FROM_ENV):
            configured_second_opinion_from()
