"""training/ship.py: the rule that decides whether a trained model replaces the shipped one —
better per frame on val, no worse over whole prints — and its command end to end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from training.ship import KEEP, verdict

REPO = Path(__file__).resolve().parents[1]
EXTRA = REPO.parent / "shared" / "datasets" / "print-failures-extra"


def figures(auroc: float = 0.97, extra_auroc: float = 0.95, recall: float = 0.7, p1_pauses: float = 0.0,
            p1_warnings: float = 19.0, p90: float = 99.0) -> dict[str, Any]:
    normal = {"false_pauses_per_100h": 0.0, "false_warnings_per_100h": 0.0}
    return {
        "per_frame": {"val": {"auroc": auroc, "recall_at_1pct_fpr": recall},
                      "extra-val": {"auroc": extra_auroc, "recall_at_1pct_fpr": 0.5}},
        "temporal": {"simulated_normal": dict(normal),
                     "simulated_failing": {"paused_share": 1.0, "paused_before_onset": 0,
                                           "onset_to_pause_p90_s": p90},
                     "webcam_normal_P1": {"false_pauses_per_100h": p1_pauses, "false_warnings_per_100h": p1_warnings},
                     "webcam_normal_P2": {"false_pauses_per_100h": 0.0, "false_warnings_per_100h": 0.0}},
    }


def test_a_model_no_better_per_frame_is_kept() -> None:
    shipped = figures()
    same = verdict(copy.deepcopy(shipped), shipped)
    assert not same.ships and len(same.reasons) == 1 and "mean AUROC" in same.reasons[0]


def test_a_model_better_per_frame_and_no_worse_over_prints_ships() -> None:
    assert verdict(figures(auroc=0.985), figures()).ships
    # One set better, the other a little worse: the mean decides.
    assert verdict(figures(auroc=0.99, extra_auroc=0.945), figures()).ships
    assert not verdict(figures(auroc=0.975, extra_auroc=0.94), figures()).ships


def test_what_an_operator_feels_over_whole_prints_can_keep_a_better_per_frame_model() -> None:
    """The second training run (docs/model.md): better on val, and P1's normal prints paused."""
    judged = verdict(figures(auroc=0.985, p1_pauses=14.0, p1_warnings=86.0), figures())
    assert not judged.ships
    assert judged.reasons == ["webcam_normal_P1: false_pauses_per_100h rises 0.0 -> 14.0",
                              "webcam_normal_P1: false_warnings_per_100h rises 19.0 -> 86.0"]
    slower = verdict(figures(auroc=0.985, p90=187.0), figures())
    assert slower.reasons == ["simulated onset -> pause p90 99 s -> 187 s"]
    assert verdict(figures(auroc=0.985, p90=109.0), figures()).ships  # one scored frame later is allowed
    never = verdict(figures(auroc=0.985, p90=float("nan")), figures())
    assert not never.ships  # no failing print paused at all
    fewer = figures(auroc=0.985)
    fewer["per_frame"]["extra-val"]["recall_at_1pct_fpr"] = 0.4
    assert verdict(fewer, figures()).reasons == ["extra-val: recall at <=1 % FPR falls 0.500 -> 0.400"]


def test_the_command_judges_the_shipped_model_against_its_own_figures(tmp_path: Path) -> None:
    small = ["--printers", "1", "--prints", "1", "--failing", "1", "--hours", "0.25"]
    from layerfleet.detection.runtime import shipped_model_path

    model = str(shipped_model_path())
    measured = subprocess.run([sys.executable, "-m", "training.ship", "--model", model, "--figures", *small],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
    assert measured.returncode == 0, measured.stderr[-2000:]
    own = json.loads(measured.stdout)
    assert own["per_frame"]["val"]["auroc"] > 0.9 and own["per_frame"]["extra-val"]["images"] > 50
    assert own["temporal"]["webcam_normal_P1"]["print_hours"] > 1
    saved = tmp_path / "shipped.json"
    saved.write_text(measured.stdout)
    judged = subprocess.run([sys.executable, "-m", "training.ship", "--model", model, "--against", str(saved),
                             "--json", *small], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert judged.returncode == KEEP, judged.stderr[-2000:]
    answer = json.loads(judged.stdout)
    assert answer["ships"] is False and answer["reasons"] == [
        f"mean AUROC of val and extra-val is {_mean(own):.4f}, not above {_mean(own):.4f}"]
    missing = subprocess.run([sys.executable, "-m", "training.ship", "--model", model, "--extra", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "manifest.csv" in missing.stderr
    gone = subprocess.run([sys.executable, "-m", "training.ship", "--model", model, "--against",
                           str(tmp_path / "gone.onnx")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 2 and "no detection model" in gone.stderr  # before minutes of measuring
    assert EXTRA.is_dir()


def _mean(figures: dict[str, Any]) -> float:
    return float(figures["per_frame"]["val"]["auroc"] + figures["per_frame"]["extra-val"]["auroc"]) / 2


def test_the_kept_figures_are_the_shipped_detector_s_and_no_other_s(tmp_path: Path) -> None:
    """The shipped model with its second opinion, as the server runs them."""
    from training.ship import MEASUREMENT, SHIPPED_FIGURES, saved_figures

    from layerfleet.detection import Detector
    from layerfleet.detection.runtime import shipped_model_path

    defaults = {"printers": 6, "prints": 2, "failing": 2, "hours": 2.0}
    shipped = Detector()
    kept = saved_figures(SHIPPED_FIGURES, shipped, defaults)
    assert kept is not None, "the shipped model changed: refresh training/shipped-figures.json (--figures)"
    assert kept["temporal"]["webcam_normal_P1"]["print_hours"] > 5 and kept["per_frame"]["val"]["images"] > 100
    assert saved_figures(SHIPPED_FIGURES, shipped, {**defaults, "hours": 0.25}) is None
    assert shipped.second_opinion is not None
    assert saved_figures(SHIPPED_FIGURES, Detector(shipped_model_path()), defaults) is None  # the first alone
    assert saved_figures(SHIPPED_FIGURES, Detector(shipped.second_opinion), defaults) is None
    other_second = Detector(shipped_model_path(), second_opinion=shipped_model_path())
    assert saved_figures(SHIPPED_FIGURES, other_second, defaults) is None
    asked_later = Detector(second_opinion_from=shipped.second_opinion_from + 0.1)
    assert saved_figures(SHIPPED_FIGURES, asked_later, defaults) is None
    older = tmp_path / "older.json"
    older.write_text(json.dumps({**kept, "measurement": MEASUREMENT - 1}))
    assert saved_figures(older, shipped, defaults) is None  # measured another way
