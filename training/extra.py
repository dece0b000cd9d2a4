"""The print-failures-extra set (`../shared/datasets/print-failures-extra/README.md`): its
manifest, a split by the manifest's ``group``, and the drawn overlays masked out.

The extra set has no split of its own. Groups (one printer's camera, one source photo, one
folder) go whole to ``train``, ``val`` or ``holdout``; ``holdout`` is never trained on or used to
pick a checkpoint, so `training.evaluate` can report on groups the model never saw. The second
EmptyDeck printer and the Obico spaghetti examples (the only real webcam failures) are pinned to
``holdout``: together they are the "unseen printer" case the detector must get right.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import DEFECT, FAILURE, Sample, read_yolo_boxes
from training.overlays import mask_overlays

DEFAULT_EXTRA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "print-failures-extra"
SPLITS = ("train", "val", "holdout")
SPLIT_SEED = 20261203
SHARES = {"holdout": 0.2, "val": 0.12}  # of each stratum's images; the rest trains
PINNED = {"emptydeck:P1": "train", "emptydeck:P2": "holdout", "obico:spaghetti-examples": "holdout"}
# Manifest notes of images with something drawn on them (arrows, detection boxes, text).
OVERLAY_MARKS = ("arrow drawn", "box drawn", "text or arrows drawn")


def read_manifest(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _stratum(rows: list[dict[str, str]]) -> str:
    labels = {row["label"].split(":")[0] for row in rows}
    return "failure" if "failure" in labels else "defect" if "defect" in labels else "normal"


def split_groups(rows: list[dict[str, str]], seed: int = SPLIT_SEED) -> dict[str, str]:
    """Group → split. Groups are stratified by their label (failure / defect / normal),
    shuffled with ``seed`` and filled into holdout and val up to their shares of each stratum's
    images; pinned groups go where `PINNED` says and count towards their stratum."""
    by_group: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_group[row["group"]].append(row)
    strata: dict[str, list[str]] = defaultdict(list)
    for group in sorted(by_group):
        strata[_stratum(by_group[group])].append(group)
    assignment: dict[str, str] = {}
    for stratum, groups in sorted(strata.items()):
        total = sum(len(by_group[g]) for g in groups)
        filled = {split: sum(len(by_group[g]) for g in groups if PINNED.get(g) == split) for split in SPLITS}
        free = [g for g in groups if g not in PINNED]
        random.Random(f"{seed}:{stratum}").shuffle(free)
        for group in groups:
            if group in PINNED:
                assignment[group] = PINNED[group]
        for group in free:
            size = len(by_group[group])
            split = next((s for s in ("holdout", "val") if filled[s] + size <= SHARES[s] * total), "train")
            assignment[group] = split
            filled[split] += size
    return assignment


def _limited(rows: list[dict[str, str]], limit: int) -> list[dict[str, str]]:
    """A small subset that still holds every kind of row (smoke runs and CI)."""
    kinds: dict[tuple[str, str, bool], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        kinds[(row["kind"], row["label"].split(":")[0], row["n_boxes"] == "")].append(row)
    chosen: list[dict[str, str]] = []
    for _kind, members in sorted(kinds.items()):
        chosen.extend(members[: max(1, limit // len(kinds))])
    return chosen


def read_extra(root: Path, split: str, limit: int | None = None, seed: int = SPLIT_SEED) -> list[Sample]:
    """The extra set's images of one split. Rows with a label file are detection samples
    (classes 0 = failure, 2 = defect); image-level rows carry their image label only and are
    never detection negatives (``boxed`` is False)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    rows = read_manifest(root)
    assignment = split_groups(rows, seed)
    rows = [row for row in rows if assignment[row["group"]] == split]
    if limit is not None:
        rows = _limited(rows, limit)
    samples = []
    for row in rows:
        image = Image.open(root / row["file"]).convert("RGB")
        if any(mark in row["note"] for mark in OVERLAY_MARKS):
            image = mask_overlays(image)
        label = root / "labels" / (Path(row["file"]).stem + ".txt")
        kind = row["label"].split(":")[0]
        if row["n_boxes"] != "" and label.exists():
            boxes = read_yolo_boxes(label, *image.size)
            failure = bool((boxes[:, 0] == FAILURE).any())
            defect = bool((boxes[:, 0] == DEFECT).any()) or kind == "defect"
            samples.append(Sample(image, boxes, failure=failure, defect=defect, boxed=True,
                                  group=row["group"], kind=row["kind"], defect_type=row["defect_type"],
                                  gantry_known=False))
        else:
            # A failure photo's defects were never looked for: unknown, not absent.
            samples.append(Sample(image, np.zeros((0, 5), dtype=np.float32), failure=kind == "failure",
                                  defect=True if kind == "defect" else None, boxed=False, group=row["group"],
                                  kind=row["kind"], defect_type=row["defect_type"], gantry_known=False))
    return samples
