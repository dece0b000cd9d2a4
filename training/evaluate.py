"""Evaluate an exported model through the same runtime the server uses.

    python -m training.evaluate [--model PATH [--second-opinion PATH]] [--sets val,extra-holdout] [--json]

Sets: ``val`` (print-failures' val split), ``extra-val`` and ``extra-holdout`` (the groups of
print-failures-extra that `training.extra` keeps for validation and for evaluation only; the
holdout groups are never trained on or used to pick a checkpoint). Per set: image-level AUROC of
the failure score (images with a failure vs all others), recall at ≤ 1 % false-positive rate,
recall / false-positive rate at the shipped threshold 0.5 (also on normal frames only), AP50
per class (failure, defect) on images with boxes, and the defect score's AUROC on images whose
defects are known. Figures a model or a set cannot give (a model without the defect output, a
set without defect labels) are "n/a" in the table and null in the JSON.

Without ``--model`` it measures what the server runs: the shipped model with its second opinion
(`layerfleet.detection.runtime`). ``--model`` alone measures that model alone; ``--second-opinion``
adds a second network, asked from ``--second-opinion-from`` (0 averages every frame).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from layerfleet.detection import Detector
from layerfleet.detection.runtime import ALERT_SCORE, SECOND_OPINION_FROM, ModelMissing, iou
from training.data import read_yolo_boxes

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "print-failures"


SETS = ("val", "extra-val", "extra-holdout")
DEFAULT_SETS = ("val", "extra-holdout")
CLASSES = {"failure": 0, "defect": 2}


def read_failure_boxes(label: Path, width: int, height: int) -> np.ndarray:
    rows = []
    if label.exists():
        for line in label.read_text().splitlines():
            parts = line.split()
            if parts and int(parts[0]) == 0:
                x, y, w, h = (float(v) for v in parts[1:5])
                rows.append([(x - w / 2) * width, (y - h / 2) * height, (x + w / 2) * width, (y + h / 2) * height])
    return np.array(rows, dtype=np.float32).reshape(-1, 4)


def average_precision(detections: list[tuple[float, int, np.ndarray]], truth: list[np.ndarray]) -> float:
    """All-point interpolated AP at IoU 0.5 (VOC 2010+ style)."""
    total = sum(len(t) for t in truth)
    if total == 0:
        return float("nan")
    matched = [np.zeros(len(t), dtype=bool) for t in truth]
    hits = []
    for _conf, image, box in sorted(detections, key=lambda d: -d[0]):
        gt = truth[image]
        hit = False
        if len(gt):
            overlaps = iou(box, gt)
            best = int(overlaps.argmax())
            if overlaps[best] >= 0.5 and not matched[image][best]:
                matched[image][best] = hit = True
        hits.append(hit)
    tp = np.cumsum(hits)
    fp = np.cumsum([not h for h in hits])
    recall = tp / total
    precision = tp / np.maximum(tp + fp, 1)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[1.0], precision, [0.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    positives, negatives = scores[labels], scores[~labels]
    if not len(positives) or not len(negatives):
        return float("nan")
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return float(wins / (len(positives) * len(negatives)))


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> tuple[float, float]:
    """Best recall with false-positive rate ≤ max_fpr, and the threshold that gives it."""
    negatives = np.sort(scores[~labels])[::-1]
    allowed = int(np.floor(max_fpr * len(negatives)))
    # Alert when score > threshold: at most `allowed` negatives may be above it.
    threshold = float(negatives[allowed]) if allowed < len(negatives) else float("-inf")
    return float((scores[labels] > threshold).mean()), threshold


def _nan_to_none(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass(frozen=True)
class Item:
    """One evaluation image: the bytes the runtime sees and what is known about it."""

    name: str
    data: bytes
    failure: bool
    defect: bool | None  # None: not known
    normal: bool  # a frame with nothing wrong, known from complete labels
    boxes: dict[int, np.ndarray] | None  # class → x0, y0, x1, y1 in original pixels; None: image-level only


def main_items(data: Path, split: str) -> list[Item]:
    items = []
    for path in sorted((data / "images" / split).glob("*.jpg")):
        raw = path.read_bytes()
        width, height = Image.open(io.BytesIO(raw)).size
        boxes = read_yolo_boxes(data / "labels" / split / (path.stem + ".txt"), width, height)
        failure = bool((boxes[:, 0] == 0).any())
        items.append(Item(path.name, raw, failure, None if failure else False, not failure,
                          {c: boxes[boxes[:, 0] == c, 1:] for c in CLASSES.values()}))
    return items


def extra_items(extra: Path, split: str) -> list[Item]:
    """The extra set's images of one split, their overlays masked as in training."""
    from training.extra import read_extra

    items = []
    for index, sample in enumerate(read_extra(extra, split)):
        buffer = io.BytesIO()
        sample.image.save(buffer, "JPEG", quality=95)
        boxes = {c: sample.boxes[sample.boxes[:, 0] == c, 1:] for c in CLASSES.values()} if sample.boxed else None
        normal = sample.boxed and not sample.failure and sample.defect is False
        items.append(Item(f"{sample.group}#{index}", buffer.getvalue(), bool(sample.failure), sample.defect,
                          normal, boxes))
    return items


def load_set(name: str, data: Path, extra: Path) -> list[Item]:
    if name == "val":
        return main_items(data, "val")
    if name in ("extra-val", "extra-holdout"):
        return extra_items(extra, name.removeprefix("extra-"))
    raise ValueError(f"unknown set {name!r}; sets: {', '.join(SETS)}")


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` / ``--second-opinion`` / ``--second-opinion-from``, as every measuring command
    reads them (`detector_from`)."""
    parser.add_argument("--model", type=Path, default=None,
                        help="ONNX model (default: the shipped one with its second opinion)")
    parser.add_argument("--second-opinion", type=Path, default=None, metavar="MODEL",
                        help="a second network asked on the frames --model finds suspicious, the two scores "
                             "averaged in logit space (default: none with --model, the shipped one without)")
    parser.add_argument("--second-opinion-from", type=float, default=None, metavar="SCORE",
                        help=f"the first network's score from which the second is asked (default "
                             f"{SECOND_OPINION_FROM}; 0: every frame)")


def detector_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Detector:
    try:
        return Detector(args.model, second_opinion=args.second_opinion, second_opinion_from=args.second_opinion_from)
    except ModelMissing as exc:
        parser.error(str(exc))


def described(detector: Detector) -> str:
    if detector.second_opinion is None:
        return str(detector.model_path)
    return f"{detector.model_path} + {detector.second_opinion} from {detector.second_opinion_from:g}"


def score_items(detector: Detector, items: Sequence[Item]) -> dict[str, object]:
    truth: dict[int, list[np.ndarray]] = {c: [] for c in CLASSES.values()}
    detections: dict[int, list[tuple[float, int, np.ndarray]]] = {c: [] for c in CLASSES.values()}
    scores, defect_scores, max_conf = [], [], []
    started = time.perf_counter()
    for start in range(0, len(items), 8):
        chunk = items[start:start + 8]
        results = detector.run([detector.prepare(item.data) for item in chunk])
        for item, result in zip(chunk, results, strict=True):
            scores.append(result.score)
            defect_scores.append(result.defect_score)
            max_conf.append(max((b[4] for b in result.boxes), default=0.0))
            if item.boxes is None:
                continue  # image-level labels say nothing about boxes
            index = len(truth[0])
            for cls, found in ((0, result.boxes), (2, result.defect_boxes)):
                truth[cls].append(item.boxes[cls])
                for xc, yc, w, h, conf in found:
                    detections[cls].append((conf, index, np.array([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2])))
    elapsed = time.perf_counter() - started
    s, y = np.array(scores), np.array([i.failure for i in items], dtype=bool)
    normal = np.array([i.normal for i in items], dtype=bool)
    recall_1, threshold_1 = recall_at_fpr(s, y, 0.01) if (~y).any() and y.any() else (float("nan"), float("nan"))
    known = [k for k, item in enumerate(items) if item.defect is not None and defect_scores[k] is not None]
    defect_truth = np.array([bool(items[k].defect) for k in known], dtype=bool)
    defect_s = np.array([defect_scores[k] for k in known], dtype=float)
    has_defect_output = detector.has_defects
    return {
        "images": len(items),
        "failure_images": int(y.sum()),
        "negative_images": int((~y).sum()),
        "normal_images": int(normal.sum()),
        "defect_images": sum(1 for i in items if i.defect),
        "auroc": auroc(s, y),
        "recall_at_1pct_fpr": recall_1,
        "threshold_at_1pct_fpr": threshold_1,
        f"recall_at_{ALERT_SCORE}": float((s[y] >= ALERT_SCORE).mean()) if y.any() else float("nan"),
        f"fpr_at_{ALERT_SCORE}": float((s[~y] >= ALERT_SCORE).mean()) if (~y).any() else float("nan"),
        f"fpr_at_{ALERT_SCORE}_normal_frames":
            float((s[normal] >= ALERT_SCORE).mean()) if normal.any() else float("nan"),
        "ap50_failure": average_precision(detections[0], truth[0]),
        "ap50_defect": average_precision(detections[2], truth[2]) if has_defect_output else float("nan"),
        "defect_auroc": auroc(defect_s, defect_truth) if has_defect_output else float("nan"),
        f"defect_recall_at_{ALERT_SCORE}": float((defect_s[defect_truth] >= ALERT_SCORE).mean())
        if has_defect_output and defect_truth.any() else float("nan"),
        f"defect_fpr_at_{ALERT_SCORE}": float((defect_s[~defect_truth] >= ALERT_SCORE).mean())
        if has_defect_output and (~defect_truth).any() else float("nan"),
        "auroc_of_max_box_confidence": auroc(np.array(max_conf), y),
        "ms_per_image": 1000 * elapsed / max(1, len(items)),
    }


def evaluate(model: Path, data: Path, split: str = "val") -> dict[str, object]:
    """One split of print-failures (the figures of the model card's first table)."""
    metrics = score_items(Detector(model), main_items(data, split))
    metrics["ap50"] = metrics["ap50_failure"]  # the name of earlier reports
    return metrics


def evaluate_sets(detector: Detector, sets: Sequence[str], data: Path, extra: Path) -> dict[str, dict[str, object]]:
    return {name: score_items(detector, load_set(name, data, extra)) for name in sets}


def table(report: dict[str, dict[str, object]]) -> str:
    names = list(report)
    metrics = list(next(iter(report.values())))
    lines = [f"{'':32s}" + "".join(f"{name:>16s}" for name in names)]
    for metric in metrics:
        cells = []
        for name in names:
            value = report[name][metric]
            if isinstance(value, float):
                cells.append(f"{'n/a':>16s}" if math.isnan(value) else f"{value:16.4f}")
            else:
                cells.append(f"{value!s:>16s}")
        lines.append(f"{metric:32s}" + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    from training.extra import DEFAULT_EXTRA

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_detector_arguments(parser)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--extra", type=Path, default=DEFAULT_EXTRA)
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS), help=f"comma-separated, of: {', '.join(SETS)}")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = [name for name in sets if name not in SETS]
    if unknown or not sets:
        parser.error(f"unknown set(s) {', '.join(unknown) or '(none)'}; sets: {', '.join(SETS)}")
    detector = detector_from(args, parser)
    report = evaluate_sets(detector, sets, args.data, args.extra)
    if args.json:
        clean = {name: {k: _nan_to_none(v) if isinstance(v, float) else v for k, v in m.items()}
                 for name, m in report.items()}
        print(json.dumps({"model": str(detector.model_path), "second_opinion": detector.second_opinion and
                          str(detector.second_opinion), "second_opinion_from": detector.second_opinion_from,
                          "second_opinions": detector.second_opinions, "sets": clean}))
    else:
        print(f"model: {described(detector)}")
        print(table(report))


if __name__ == "__main__":
    main()
