"""Whether a newly trained model replaces the shipped one: the shipping rule as one command.

    python -m training.ship --model training/runs/X/model.onnx [--second-opinion PATH] [--against PATH] [--json]

The rule was fixed before the run it judges, and looks only at data the training may have seen
or chosen on — never at the extra set's holdout groups, which stay the published figures of
data the model never saw. The candidate ships when it is better per frame and no worse over
whole prints:

- **per frame** (`training.evaluate` on val and extra-val): the mean of their image AUROCs is
  higher, and on neither set does recall at ≤ 1 % FPR fall;
- **over whole prints** (`training.temporal`): on EmptyDeck printer P1's real webcam prints (P1
  trains; P2 is never looked at here) and on the simulated normal prints, false pauses and false
  warnings per 100 print-hours are not higher; of the simulated failing prints no fewer are
  paused, no more before their onset, and the onset → pause p90 is at most one scored frame
  (10 s) longer.

A second training run passed the per-frame half and paused P1's normal prints falsely
(docs/model.md, "The shipping rule and the runs judged by it"): hence the second half.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerfleet.detection import Detector
from layerfleet.detection.runtime import SECOND_OPINION_FROM, ModelMissing
from training.evaluate import DEFAULT_DATA, described, detector_from, evaluate_sets
from training.extra import DEFAULT_EXTRA
from training.temporal import SECONDS_PER_FRAME, temporal_figures

PER_FRAME_SETS = ("val", "extra-val")
TRAINING_PRINTER = "webcam_normal_P1"
KEEP = 3  # exit status when the candidate does not ship
# The shipped model's figures at the default sizes, so a run is judged in one measurement, not
# two; used only while the shipped model is the one they were measured on.
SHIPPED_FIGURES = Path(__file__).with_name("shipped-figures.json")
# Raised whenever what the figures measure changes, so saved figures of an older measurement are
# not compared with new ones (2: training.temporal weighs frames as the server does, 2026-12-04).
MEASUREMENT = 2


@dataclass(frozen=True)
class Verdict:
    ships: bool
    reasons: list[str]  # why not, one line each; empty when it ships


def model_figures(detector: Detector, data: Path, extra: Path, **temporal: Any) -> dict[str, Any]:
    """What the rule reads of one detector (a model, or a model with its second opinion):
    per-frame figures of ``PER_FRAME_SETS`` and the temporal figures (``temporal`` passes sizes
    to `training.temporal.temporal_figures`)."""
    per_frame = evaluate_sets(detector, PER_FRAME_SETS, data, extra)
    return {**identity(detector), "measurement": MEASUREMENT, "sizes": temporal,
            "per_frame": per_frame, "temporal": temporal_figures(detector, extra, **temporal)}


def identity(detector: Detector) -> dict[str, Any]:
    """Which networks, asked how: saved figures are used only for the same."""
    second = detector.second_opinion
    return {"model": str(detector.model_path), "model_sha256": sha256(detector.model_path),
            "second_opinion": second and str(second), "second_opinion_sha256": second and sha256(second),
            "second_opinion_from": detector.second_opinion_from if second else None}


def sha256(model: Path) -> str:
    return hashlib.sha256(model.read_bytes()).hexdigest()


def saved_figures(path: Path, detector: Detector, sizes: dict[str, Any]) -> dict[str, Any] | None:
    """The figures saved at ``path`` if they are ``detector``'s at these sizes, measured as now."""
    if not path.is_file():
        return None
    saved: dict[str, Any] = json.loads(path.read_text())
    now = identity(detector)
    same = (all(saved.get(key) == now[key] for key in ("model_sha256", "second_opinion_sha256", "second_opinion_from"))
            and saved.get("sizes") == sizes and saved.get("measurement") == MEASUREMENT)
    return saved if same else None


def _number(figures: dict[str, Any], *keys: str) -> float:
    value: Any = figures
    for key in keys:
        value = value[key]
    return float("nan") if value is None else float(value)


def verdict(candidate: dict[str, Any], shipped: dict[str, Any]) -> Verdict:
    reasons: list[str] = []

    def mean_auroc(figures: dict[str, Any]) -> float:
        return sum(_number(figures, "per_frame", name, "auroc") for name in PER_FRAME_SETS) / len(PER_FRAME_SETS)

    new, old = mean_auroc(candidate), mean_auroc(shipped)
    if not new > old:
        reasons.append(f"mean AUROC of {' and '.join(PER_FRAME_SETS)} is {new:.4f}, not above {old:.4f}")
    for name in PER_FRAME_SETS:
        new, old = (_number(f, "per_frame", name, "recall_at_1pct_fpr") for f in (candidate, shipped))
        if new < old:
            reasons.append(f"{name}: recall at <=1 % FPR falls {old:.3f} -> {new:.3f}")
    for prints in (TRAINING_PRINTER, "simulated_normal"):
        for rate in ("false_pauses_per_100h", "false_warnings_per_100h"):
            new, old = (_number(f, "temporal", prints, rate) for f in (candidate, shipped))
            if new > old or (math.isnan(new) and not math.isnan(old)):
                reasons.append(f"{prints}: {rate} rises {old:.1f} -> {new:.1f}")
    failing = [(_number(f, "temporal", "simulated_failing", "paused_share"),
                _number(f, "temporal", "simulated_failing", "paused_before_onset"),
                _number(f, "temporal", "simulated_failing", "onset_to_pause_p90_s")) for f in (candidate, shipped)]
    (share, early, p90), (old_share, old_early, old_p90) = failing
    if share < old_share:
        reasons.append(f"simulated failing prints paused falls {old_share:.2f} -> {share:.2f}")
    if early > old_early:
        reasons.append(f"simulated failing prints paused before their onset rise {old_early:.0f} -> {early:.0f}")
    if not (p90 <= old_p90 + SECONDS_PER_FRAME or (math.isnan(p90) and math.isnan(old_p90))):
        reasons.append(f"simulated onset -> pause p90 {old_p90:.0f} s -> {p90:.0f} s")
    return Verdict(not reasons, reasons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the candidate ONNX model")
    parser.add_argument("--second-opinion", type=Path, default=None, metavar="MODEL",
                        help="the candidate's second opinion (a pair is judged as the server would run it)")
    parser.add_argument("--second-opinion-from", type=float, default=None, metavar="SCORE",
                        help=f"the score from which the candidate's second opinion is asked (default "
                             f"{SECOND_OPINION_FROM})")
    parser.add_argument("--against", type=Path, default=None,
                        help="the model to replace alone (default: the shipped one with its second opinion), or "
                             "the JSON this command printed for it with --figures")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--extra", type=Path, default=DEFAULT_EXTRA)
    parser.add_argument("--figures", action="store_true",
                        help="print the model's figures as JSON and stop (for --against; the shipped "
                             "model's at the default sizes are training/shipped-figures.json)")
    parser.add_argument("--json", action="store_true", help="one JSON object: both models' figures and the verdict")
    parser.add_argument("--printers", type=int, default=6, help="simulated printers (training.temporal)")
    parser.add_argument("--prints", type=int, default=2)
    parser.add_argument("--failing", type=int, default=2)
    parser.add_argument("--hours", type=float, default=2.0)
    args = parser.parse_args()
    if not (args.extra / "manifest.csv").is_file():
        parser.error(f"{args.extra} holds no manifest.csv: the rule needs the extra set's val groups and P1")
    sizes = {"printers": args.printers, "prints": args.prints, "failing": args.failing, "hours": args.hours}
    candidate_detector = detector_from(args, parser)
    # Both sides are loaded before either is measured: a wrong path fails at once, not minutes in.
    against_detector: Detector | None = None
    if not args.figures and not (args.against is not None and args.against.suffix == ".json"):
        try:
            against_detector = Detector(args.against)  # None: the shipped model with its second opinion
        except ModelMissing as exc:
            parser.error(str(exc))
    candidate = model_figures(candidate_detector, args.data, args.extra, **sizes)
    if args.figures:
        print(json.dumps(candidate, default=str))
        return
    if against_detector is None:
        shipped = json.loads(args.against.read_text())
        against = str(args.against)
    else:
        against = described(against_detector)
        found = saved_figures(SHIPPED_FIGURES, against_detector, sizes)
        shipped = found or model_figures(against_detector, args.data, args.extra, **sizes)
    judged = verdict(candidate, shipped)
    if args.json:
        print(json.dumps({"candidate": candidate, "shipped": shipped, "ships": judged.ships,
                          "reasons": judged.reasons}, default=str))
    else:
        print(f"candidate {described(candidate_detector)}\nagainst   {against}")
        print("SHIPS" if judged.ships else "KEEP the shipped model:\n  " + "\n  ".join(judged.reasons))
    sys.exit(0 if judged.ships else KEEP)


if __name__ == "__main__":
    main()
