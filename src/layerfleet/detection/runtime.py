"""The failure detector at run time: ONNX Runtime on the CPU (CUDA when present), frames
from many printers scored in one batch.

Per frame it gives the failure boxes ``[xc, yc, w, h]`` in the original image's pixels with
their confidences, ``p`` (the sum of those confidences: the per-frame value of the reference
server's decision rules) and ``score`` in [0, 1], the frame's probability of showing a
failure (0.5 is the recommended alert threshold).

A model with the quality-defect output (issue 19: ONNX outputs ``defect_scores`` and
``defect_score`` beside the three failure outputs) also gives ``defect_score``, the frame's
probability of showing a print-quality defect (warping, stringing, extrusion or surface
problems), and the defect boxes; with an older model both stay empty (``None`` / ``[]``).

A **second opinion** (a second network of the same recipe, trained with another seed) scores the
frames the first finds suspicious — a score of at least ``LAYERFLEET_SECOND_OPINION_FROM``, 0.1 by
default — and their scores are averaged in logit space; the boxes stay the first's. Two seeds err
on different pictures, so the pair is surer than either, while most frames of a normal print stay
below the gate and cost one network (docs/model.md, "A second opinion"). The shipped model comes
with its second opinion; ``Detector(path)`` of any other model scores with that model alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from layerfleet import metrics
from layerfleet.detection.imaging import BadImage, Letterboxed, prepare
from layerfleet.errors import Unavailable

if TYPE_CHECKING:
    import onnxruntime as ort

MODEL_ENV = "LAYERFLEET_MODEL_PATH"
THREADS_ENV = "LAYERFLEET_DETECTION_THREADS"
SHIPPED_MODEL = "failure-detector.onnx"
SECOND_OPINION_ENV = "LAYERFLEET_SECOND_OPINION_PATH"
SECOND_OPINION_FROM_ENV = "LAYERFLEET_SECOND_OPINION_FROM"
SECOND_OPINION_MODEL = "failure-detector-second-opinion.onnx"
SECOND_OPINION_FROM = 0.1
BOX_THRESHOLD = 0.08  # as the reference keeps boxes
NMS_IOU = 0.45
FAILURE_CLASS = 0
ALERT_SCORE = 0.5
DEFECT_ALERT_SCORE = 0.5
DEFECT_OUTPUTS = ("defect_scores", "defect_score")


class ModelMissing(Unavailable):
    """The detector's model file is missing or unreadable."""


@dataclass(frozen=True)
class FrameResult:
    score: float
    p: float
    boxes: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # xc, yc, w, h, conf
    width: int = 0  # of the original image, which the boxes are in
    height: int = 0
    # None: the model has no defect output (not "no defect").
    defect_score: float | None = None
    defect_boxes: list[tuple[float, float, float, float, float]] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "score": round(self.score, 4),
            "p": round(self.p, 4),
            "boxes": rounded_boxes(self.boxes),
            "defect_score": None if self.defect_score is None else round(self.defect_score, 4),
            "defect_boxes": rounded_boxes(self.defect_boxes),
        }


def rounded_boxes(boxes: Sequence[tuple[float, float, float, float, float]]) -> list[list[float]]:
    return [[round(v, 1) for v in box[:4]] + [round(box[4], 4)] for box in boxes]


def shipped_model_path() -> Path:
    configured = os.environ.get(MODEL_ENV)
    if configured:
        return Path(configured)
    return Path(str(resources.files("layerfleet.detection").joinpath("models", SHIPPED_MODEL)))


def second_opinion_path() -> Path | None:
    """The shipped model's second opinion: ``LAYERFLEET_SECOND_OPINION_PATH`` (``none`` turns it
    off), else the packaged one — unless ``LAYERFLEET_MODEL_PATH`` names another first model, whose
    errors the packaged second opinion was not chosen to offset."""
    configured = os.environ.get(SECOND_OPINION_ENV)
    if configured is not None:
        return None if configured.strip().lower() in ("", "none", "off") else Path(configured)
    if os.environ.get(MODEL_ENV):
        return None
    packaged = Path(str(resources.files("layerfleet.detection").joinpath("models", SECOND_OPINION_MODEL)))
    return packaged if packaged.is_file() else None


def configured_second_opinion_from() -> float:
    configured = os.environ.get(SECOND_OPINION_FROM_ENV, "").strip()
    try:
        value = float(configured) if configured else SECOND_OPINION_FROM
    except ValueError:
        value = math.nan  # refused below, with the same message as a number out of range
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{SECOND_OPINION_FROM_ENV} must be a number from 0 to 1, not {configured!r}")
    return value


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))


def mean_in_logit_space(scores: Sequence[float]) -> float:
    """The average of probabilities as their log-odds average: one sure network is not diluted
    to 0.5 by one unsure one, as a plain mean would."""
    return 1 / (1 + math.exp(-sum(_logit(p) for p in scores) / len(scores)))


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one x0, y0, x1, y1 box with each of ``others``."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    overlap: np.ndarray = inter / (area + areas - inter + 1e-9)
    return overlap


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_IOU) -> list[int]:
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        first = int(order[0])
        keep.append(first)
        rest = order[1:]
        order = rest[iou(boxes[first], boxes[rest]) <= threshold]
    return keep


def _decode_boxes(frame: Letterboxed, boxes: np.ndarray, confidence: np.ndarray
                  ) -> list[tuple[float, float, float, float, float]]:
    """Cells above the box threshold, NMS, back in the original image's pixels as xc, yc, w, h, conf."""
    selected = confidence > BOX_THRESHOLD
    kept_boxes, kept_conf = boxes[selected], confidence[selected]
    found: list[tuple[float, float, float, float, float]] = []
    if kept_conf.size:
        order = nms(kept_boxes, kept_conf)
        original = frame.to_original(kept_boxes[order])
        for (x0, y0, x1, y1), conf in zip(original.tolist(), kept_conf[order].tolist(), strict=True):
            found.append(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, conf))
    return found


class Detector:
    """Thread-safe: ONNX Runtime sessions may be run from several threads at once.

    ``Detector()`` is the shipped model with its second opinion (`second_opinion_path`);
    ``Detector(path)`` is that model alone unless ``second_opinion`` names one. ``second_opinion_from``
    is the first network's score from which the second is asked (0: every frame)."""

    def __init__(self, model_path: Path | None = None, *, threads: int | None = None,
                 second_opinion: Path | None = None, second_opinion_from: float | None = None) -> None:
        if model_path is None and second_opinion is None:
            second_opinion = second_opinion_path()
        path = model_path or shipped_model_path()
        self.session = _session(path, threads)
        self.model_path = path
        shape = self.session.get_inputs()[0].shape
        self.input_size = int(shape[-1]) if isinstance(shape[-1], int) else 320
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_defects = all(name in outputs for name in DEFECT_OUTPUTS)
        # By name: a model without the defect output keeps its three outputs in their order.
        self._outputs = ["scores", "boxes", "image_score", *DEFECT_OUTPUTS] if self.has_defects else None
        self.second_opinion: Path | None = second_opinion
        self.second_opinion_from = (configured_second_opinion_from() if second_opinion_from is None
                                    else second_opinion_from)
        self._second = _session(second_opinion, threads, SECOND_OPINION_ENV) if second_opinion is not None else None
        self._second_input = self._second.get_inputs()[0].name if self._second is not None else ""
        if self._second is not None:
            second_outputs = [o.name for o in self._second.get_outputs()]
            second_shape = self._second.get_inputs()[0].shape
            if second_shape[-1] != shape[-1] or self.has_defects != all(n in second_outputs for n in DEFECT_OUTPUTS):
                # Frames are letterboxed once for both networks, and a defect score averaged
                # with nothing would not be an average.
                raise ModelMissing(f"the second opinion {second_opinion} does not match {path}: input "
                                   f"{second_shape[-1]} vs {shape[-1]}, or one has the defect output and the other not")
        self.second_opinions = 0  # frames this detector's second network scored (measurements)

    def prepare(self, data: bytes) -> Letterboxed:
        """Decode one frame (raises :class:`BadImage`); the costly part outside the model."""
        return prepare(data, self.input_size)

    def run(self, frames: Sequence[Letterboxed]) -> list[FrameResult]:
        if not frames:
            return []
        batch = np.stack([f.pixels for f in frames]).astype(np.float32).transpose(0, 3, 1, 2)
        results = self._results(frames, self.session.run(self._outputs, {self.input_name: np.ascontiguousarray(batch)}))
        asked, second = self._second_opinion(batch, [result.score for result in results], self._outputs)
        if not asked:
            return results
        self.second_opinions += len(asked)
        metrics.SECOND_OPINIONS.inc(len(asked))
        for row, i in enumerate(asked):
            first = results[i]
            defect_score = first.defect_score
            if defect_score is not None:
                defect_score = mean_in_logit_space([defect_score, float(second[4][row, 0])])
            results[i] = replace(first, score=mean_in_logit_space([first.score, float(second[2][row, 0])]),
                                 defect_score=defect_score)
        return results

    def image_scores(self, batch: np.ndarray) -> np.ndarray:
        """(N,) failure scores of an (N, 3, S, S) float32 batch already letterboxed to the input
        size, as `run` scores its frames (the same gate and average), without their boxes: what
        `training.distillation` teaches from."""
        scores: np.ndarray = np.asarray(self.session.run(["image_score"], {self.input_name: batch})[0],
                                        dtype=np.float32)[:, 0]
        asked, second = self._second_opinion(batch, scores.tolist(), ["image_score"])
        for row, i in enumerate(asked):
            scores[i] = mean_in_logit_space([float(scores[i]), float(second[0][row, 0])])
        return scores

    def _second_opinion(self, batch: np.ndarray, first_scores: Sequence[float], outputs: list[str] | None
                        ) -> tuple[list[int], Sequence[np.ndarray]]:
        """The rows whose first score reaches the gate and the second network's ``outputs`` for
        them (none without a second network): the one place the pair's gate is applied."""
        asked = [i for i, score in enumerate(first_scores) if score >= self.second_opinion_from]
        if self._second is None or not asked:
            return [], []
        return asked, self._second.run(outputs, {self._second_input: np.ascontiguousarray(batch[asked])})

    def _results(self, frames: Sequence[Letterboxed], outputs: Sequence[np.ndarray]) -> list[FrameResult]:
        scores, boxes, image_score = outputs[:3]
        results = []
        for i, frame in enumerate(frames):
            found = _decode_boxes(frame, boxes[i], scores[i][:, FAILURE_CLASS])
            defect_score, defect_boxes = None, []
            if self.has_defects:
                defect_score = float(outputs[4][i, 0])
                # One defect class: a cell's defect probability is the most likely of its types.
                defect_boxes = _decode_boxes(frame, boxes[i], outputs[3][i].max(axis=-1))
            results.append(FrameResult(score=float(image_score[i, 0]), p=float(sum(b[4] for b in found)), boxes=found,
                                       width=frame.original_width, height=frame.original_height,
                                       defect_score=defect_score, defect_boxes=defect_boxes))
        return results

    def detect(self, images: Sequence[bytes]) -> list[FrameResult | BadImage]:
        """Score many frames in one batch; a bad frame yields its error, the others go on."""
        prepared: list[Letterboxed | BadImage] = []
        for data in images:
            try:
                prepared.append(self.prepare(data))
            except BadImage as exc:
                prepared.append(exc)
        good = [p for p in prepared if isinstance(p, Letterboxed)]
        results = iter(self.run(good))
        return [p if isinstance(p, BadImage) else next(results) for p in prepared]

    def detect_one(self, data: bytes) -> FrameResult:
        return self.run([self.prepare(data)])[0]


def _session(path: Path, threads: int | None, setting: str = MODEL_ENV) -> ort.InferenceSession:
    import onnxruntime as ort

    if not path.is_file():
        raise ModelMissing(f"no detection model at {path} (set {setting} to a model file)")
    options = ort.SessionOptions()
    threads = threads or int(os.environ.get(THREADS_ENV, "0") or 0)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Frames arrive a few at a time between idle gaps: threads spinning for more work after each
    # run burnt about as much CPU as the model itself (28 vs 13 ms per frame, single frames).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), options, providers=providers)
