"""Evaluate an exported model on the val split, through the same runtime the server uses.

    python -m training.evaluate [--model PATH] [--json]

Reports AP50 of failure boxes, image-level AUROC (images with a failure vs images without),
recall at ≤ 1 % false-positive rate, and recall / false-positive rate at score 0.5.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from layerfleet.detection import Detector
from layerfleet.detection.runtime import iou, shipped_model_path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "print-failures"


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


def evaluate(model: Path, data: Path, split: str = "val") -> dict[str, float]:
    detector = Detector(model)
    paths = sorted((data / "images" / split).glob("*.jpg"))
    truth, detections, scores, max_conf, labels = [], [], [], [], []
    started = time.perf_counter()
    for start in range(0, len(paths), 8):
        chunk = paths[start:start + 8]
        frames = [detector.prepare(p.read_bytes()) for p in chunk]
        for path, frame, result in zip(chunk, frames, detector.run(frames), strict=True):
            gt = read_failure_boxes(data / "labels" / split / (path.stem + ".txt"), frame.original_width,
                                    frame.original_height)
            index = len(truth)
            truth.append(gt)
            labels.append(len(gt) > 0)
            scores.append(result.score)
            max_conf.append(max((b[4] for b in result.boxes), default=0.0))
            for xc, yc, w, h, conf in result.boxes:
                detections.append((conf, index, np.array([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2])))
    elapsed = time.perf_counter() - started
    s, y, m = np.array(scores), np.array(labels), np.array(max_conf)
    recall_1, threshold_1 = recall_at_fpr(s, y, 0.01)
    return {
        "images": len(paths),
        "failure_images": int(y.sum()),
        "negative_images": int((~y).sum()),
        "ap50": average_precision(detections, truth),
        "auroc": auroc(s, y),
        "recall_at_1pct_fpr": recall_1,
        "threshold_at_1pct_fpr": threshold_1,
        "recall_at_0.5": float((s[y] >= 0.5).mean()),
        "fpr_at_0.5": float((s[~y] >= 0.5).mean()),
        "auroc_of_max_box_confidence": auroc(m, y),
        "ms_per_image": 1000 * elapsed / max(1, len(paths)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="val")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    metrics = evaluate(args.model or shipped_model_path(), args.data, args.split)
    if args.json:
        print(json.dumps(metrics))
    else:
        for name, value in metrics.items():
            print(f"{name:32s} {value:.4f}" if isinstance(value, float) else f"{name:32s} {value}")


if __name__ == "__main__":
    main()
