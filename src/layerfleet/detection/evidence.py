"""The one number per frame the decision rules step on, from what the detector found.

Its own module so that the server's watching, the analysis of uploaded timelapses and the
training side's temporal evaluation weigh a frame the same way (the evaluation once took the box
sum alone and so measured rules the server does not run)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerfleet.detection.runtime import FrameResult

Box = tuple[float, float, float, float, float]  # xc, yc, w, h, confidence (pixels)
SCORE_TO_P = 2.0  # a certain failure (score 1) weighs like the reference network's typical spaghetti


def evidence(result: FrameResult, kept: Sequence[Box]) -> float:
    """The frame's ``p`` for the decision rules.

    The reference network's p (the sum of its box confidences) runs to 2–4 on plain spaghetti;
    our boxes are fewer and less confident (p ≈ 1), while our image head is the calibrated
    signal (val AUROC 0.98). So p is the larger of the box sum and the image score on the
    reference's scale, the latter shrunk by the share of box confidence that ignore masks
    removed: evidence under a mask does not count, whichever head saw it. ``kept`` are the boxes
    outside the masks (all of ``result.boxes`` when there are none).
    """
    box_sum = sum(box[4] for box in kept)
    from_score = SCORE_TO_P * result.score
    found = sum(box[4] for box in result.boxes)
    if found > 0:
        from_score *= box_sum / found
    return float(max(box_sum, from_score))
