"""Training data: the print-failures set (YOLO labels), with strong augmentation, hard
negatives, and synthetic spaghetti on real negatives and on simulator frames. The extra set is
read by `training.extra`, composites and clutter are made by `training.composites`."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from layerfleet.detection.imaging import letterbox
from layerfleet.simulator.render import FILAMENT_COLOURS, Scene, draw_spaghetti, render_frame
from training.overlays import painted_mark

Boxes = np.ndarray  # (k, 5): class, x0, y0, x1, y1 in pixels of the image they belong to
FAILURE, GANTRY, DEFECT = 0, 1, 2
# Synthetic samples per five: the simulator's frames (what the demo's failures look like),
# composites of real failures and defects, and clutter hard negatives.
SYNTHETIC_ROTATION = ("simulator", "composite", "clutter", "simulator", "composite")


@dataclass(frozen=True)
class SyntheticMix:
    """How the synthetic samples are made. ``SHIPPED`` made the shipped model; ``WIDE`` is the
    second run's mix (docs/model.md, "The shipping rule and the runs judged by it"), kept to be tried again with a
    lower ``box_weight``: its composites raised recall on unseen cameras but taught the box head
    to fire on real normal frames."""

    rotation: tuple[str, ...] = SYNTHETIC_ROTATION
    any_base: float = 0.0  # share of composites and clutter drawn on any normal picture, not a webcam frame
    min_scale: float = 0.18  # a cut-out's smallest width on the frame, as a share of the frame's
    second_blob: float = 0.0  # share of composites that get a second cut-out
    # Weight of a composite's cells (classes and boxes) in the loss; its image label keeps 1.
    box_weight: float = 1.0


SHIPPED = SyntheticMix()
WIDE = SyntheticMix(rotation=("simulator", "composite", "clutter", "composite", "simulator", "composite"),
                    any_base=0.5, min_scale=0.1, second_blob=0.3)
MIXES = {"shipped": SHIPPED, "wide": WIDE}


@dataclass
class Sample:
    image: Image.Image
    boxes: Boxes
    # Image labels; None: not known (a failure photo was never checked for quality defects).
    failure: bool | None = None
    defect: bool | None = None
    # The boxes are complete, so cells outside them are negatives; False for image-level rows.
    boxed: bool = True
    group: str = ""
    kind: str = ""
    defect_type: str = ""
    # Gantries are boxed in print-failures only: elsewhere an unboxed gantry is not a negative.
    gantry_known: bool = True
    # How much the sample's cells teach the class and box heads (0 when not boxed).
    box_weight: float = 1.0
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.failure is None:
            self.failure = has_failure(self.boxes)
        if self.defect is None and self.boxed and (self.boxes[:, 0] == DEFECT).any():
            self.defect = True


def read_yolo_boxes(label: Path, width: int, height: int) -> Boxes:
    rows = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.exists() else []
    return np.array(
        [[int(c), (float(x) - float(bw) / 2) * width, (float(y) - float(bh) / 2) * height,
          (float(x) + float(bw) / 2) * width, (float(y) + float(bh) / 2) * height] for c, x, y, bw, bh in rows],
        dtype=np.float32,
    ).reshape(-1, 5)


def read_split(root: Path, split: str, limit: int | None = None) -> list[Sample]:
    """Load one split of the data set into memory (it is small: about 1,200 images)."""
    samples = []
    folder = root / "images" / split
    if not folder.is_dir():
        # A mistyped --data must not quietly train a model on synthetic pictures alone.
        raise SystemExit(f"no {split} images at {folder}: is --data the print-failures data set?")
    images = sorted(folder.glob("*.jpg"))
    if limit is not None:
        # Keep failures and negatives both in a small subset.
        images = images[: max(1, limit // 2)] + images[-max(1, limit - limit // 2):]
    for path in images:
        image = Image.open(path).convert("RGB")
        boxes = read_yolo_boxes(root / "labels" / split / (path.stem + ".txt"), *image.size)
        failing = has_failure(boxes)
        # Photos of good prints show no defect; failure photos were labelled for failures only.
        samples.append(Sample(image, boxes, failure=failing, defect=None if failing else False, group=path.stem))
    return samples


def has_failure(boxes: Boxes) -> bool:
    return bool((boxes[:, 0] == 0).any())


def synthetic_sample(rng: random.Random, negatives: list[Sample]) -> Sample:
    """A clean simulator frame (hard negative), a simulator failure, or spaghetti drawn on a
    real picture without a failure."""
    kind = rng.random()
    if kind < 0.55 or not negatives:
        scene = Scene.random(rng)
        failing = rng.random() < 0.6
        image, boxes = render_frame(scene, rng.uniform(0.0, 1.0), spaghetti=rng.uniform(0.2, 1.0) if failing else 0.0,
                                    seed=rng.randrange(1 << 30))
        rows = [[0, *box] for box in boxes]
        return Sample(image, np.array(rows, dtype=np.float32).reshape(-1, 5))
    base = rng.choice(negatives)
    image = base.image.copy()
    w, h = image.size
    bw, bh = rng.uniform(0.15, 0.6) * w, rng.uniform(0.15, 0.6) * h
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    box = draw_spaghetti(image, rng, (x0, y0, x0 + bw, y0 + bh), rng.choice(FILAMENT_COLOURS),
                         amount=rng.uniform(0.5, 1.5))
    rows = [*base.boxes.tolist(), [0, *box]]
    return Sample(image, np.array(rows, dtype=np.float32).reshape(-1, 5))


def _random_crop(rng: random.Random, image: Image.Image, boxes: Boxes) -> tuple[Image.Image, Boxes]:
    """Zoom in (crop) or out (place on a larger canvas); boxes follow and are clipped; a box
    that keeps less than 35 % of its area is dropped."""
    w, h = image.size
    if rng.random() < 0.25:  # zoom out
        factor = rng.uniform(1.0, 1.8)
        canvas = Image.new("RGB", (int(w * factor), int(h * factor)), tuple(rng.randrange(256) for _ in range(3)))
        ox, oy = rng.randrange(canvas.width - w + 1), rng.randrange(canvas.height - h + 1)
        canvas.paste(image, (ox, oy))
        boxes = boxes.copy()
        boxes[:, [1, 3]] += ox
        boxes[:, [2, 4]] += oy
        return canvas, boxes
    scale = rng.uniform(0.45, 1.0)
    aspect = rng.uniform(0.75, 1.33)
    cw = min(w, int(w * scale * aspect ** 0.5))
    ch = min(h, int(h * scale / aspect ** 0.5))
    x0, y0 = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
    image = image.crop((x0, y0, x0 + cw, y0 + ch))
    if len(boxes):
        clipped = boxes.copy()
        clipped[:, [1, 3]] = (clipped[:, [1, 3]] - x0).clip(0, cw)
        clipped[:, [2, 4]] = (clipped[:, [2, 4]] - y0).clip(0, ch)
        area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
        kept = (clipped[:, 3] - clipped[:, 1]) * (clipped[:, 4] - clipped[:, 2])
        boxes = clipped[kept >= 0.35 * np.maximum(area, 1e-6)]
    return image, boxes


def augment(rng: random.Random, image: Image.Image, boxes: Boxes) -> tuple[Image.Image, Boxes]:
    if rng.random() < 0.8:
        image, boxes = _random_crop(rng, image, boxes)
    w, h = image.size
    boxes = boxes.copy()
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
        boxes[:, [1, 3]] = w - boxes[:, [3, 1]]
    if rng.random() < 0.1:  # upside-down webcams exist
        image = ImageOps.flip(image)
        boxes[:, [2, 4]] = h - boxes[:, [4, 2]]
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.55, 1.45))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.3, 1.6))
    if rng.random() < 0.3:  # colour cast of cheap webcams and LED strips
        r, g, b = image.split()
        shift = [rng.uniform(0.8, 1.2) for _ in range(3)]
        bands = [band.point(lambda v, s=s: min(255, int(v * s))) for band, s in zip((r, g, b), shift, strict=True)]
        image = Image.merge("RGB", bands)
    if rng.random() < 0.1:
        image = ImageOps.grayscale(image).convert("RGB")
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6)))
    return image, boxes


def finish(rng: random.Random, image: Image.Image, boxes: Boxes, size: int) -> tuple[np.ndarray, Boxes]:
    """Letterbox to the network's input as the runtime does, then sensor noise and JPEG."""
    if rng.random() < 0.5:  # the runtime often sees JPEGs decoded at 1/2 or 1/4 scale
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=rng.randint(25, 95))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    boxed = letterbox(image, size)
    pixels = boxed.pixels.astype(np.float32)
    if rng.random() < 0.3:
        pixels += np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(2, 10), pixels.shape)
    out = boxes.copy()
    out[:, 1:] = out[:, 1:] * boxed.scale
    out[:, [1, 3]] += boxed.pad_x
    out[:, [2, 4]] += boxed.pad_y
    widths, heights = out[:, 3] - out[:, 1], out[:, 4] - out[:, 2]
    return pixels.clip(0, 255), out[(widths >= 2) & (heights >= 2)]


def is_normal(sample: Sample) -> bool:
    """A frame with nothing wrong in it, known from complete labels."""
    return sample.boxed and not sample.failure and sample.defect is False


def with_webcam_normals_repeated(samples: list[Sample], times: int) -> list[Sample]:
    """``samples`` with their real normal webcam frames ``times`` times over, the copies at the
    end (each copy is augmented anew, its rng seeded by its index). A false alarm on a real
    webcam is what an operator feels, and the data hold few such frames against many failure
    photos: these are the hard negatives to see more often."""
    if times < 1:
        raise ValueError("times must be at least 1")
    normals = [s for s in samples if is_normal(s) and s.kind == "webcam"]
    return samples + normals * (times - 1)


def sample_flags(sample: Sample, boxes: Boxes) -> torch.Tensor:
    """[failure, defect, defect known, boxed, gantry known] of a sample after augmentation:
    boxed samples are labelled by the boxes that survived the crop, image-level ones by their
    image label. "boxed" is the weight of the sample's cells: 0 for image-level rows."""
    if sample.boxed:
        failure = bool((boxes[:, 0] == FAILURE).any())
        defect = bool((boxes[:, 0] == DEFECT).any())
        known = sample.defect is not None
    else:
        failure, defect, known = bool(sample.failure), bool(sample.defect), sample.defect is not None
    boxed = sample.box_weight if sample.boxed else 0.0
    return torch.tensor([failure, defect, known, boxed, sample.gantry_known], dtype=torch.float32)


class TrainingSet(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Real samples, then ``synthetic`` made-up ones per epoch: simulator frames and spaghetti
    on real negatives (`synthetic_sample`), composites of real failure and defect cut-outs on
    normal webcam frames, and clutter hard negatives (`training.composites`)."""

    def __init__(self, samples: list[Sample], size: int, synthetic: int, seed: int = 0,
                 mix: SyntheticMix = SHIPPED, painted_marks: float = 0.0) -> None:
        from training.composites import cutout_sources

        self.samples = samples
        # Once each, though a sample may be in ``samples`` more than once (repeated hard negatives):
        # what synthetic samples are drawn on stays as it was.
        self.negatives = [s for s in {id(s): s for s in samples}.values() if is_normal(s)]
        # Composites and clutter want real webcam frames; photos stand in when none are loaded.
        self.webcam_normals = [s for s in self.negatives if s.kind == "webcam"] or self.negatives
        self.cutouts = cutout_sources(samples, (FAILURE, DEFECT))
        self.size = size
        self.synthetic = synthetic
        self.seed = seed
        self.mix = mix
        # The share of pictures with a made-up mark painted out (training.overlays), whatever
        # their class: painted-out patches must not be a cue. 0 draws nothing from the rng, so
        # every sample is what it was without the option.
        self.painted_marks = painted_marks
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples) + self.synthetic

    def synthetic_kind(self, index: int) -> str:
        """Which kind the ``index``-th synthetic sample is: a fixed rotation, so that even a
        handful of synthetic samples (CI) holds every kind; kinds that lack material (no
        cut-outs, no normal frames) fall back to the simulator."""
        kind = self.mix.rotation[index % len(self.mix.rotation)]
        if kind == "composite" and not (self.cutouts and self.webcam_normals):
            return "simulator"
        if kind == "clutter" and not self.webcam_normals:
            return "simulator"
        return kind

    def synthetic_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.mix.rotation, 0)
        for index in range(self.synthetic):
            counts[self.synthetic_kind(index)] += 1
        return counts

    def made_up(self, rng: random.Random, index: int) -> Sample:
        from training.composites import clutter, composite

        kind = self.synthetic_kind(index)
        mix = self.mix
        # Drawn only when the mix asks, so the shipped mix makes the very samples it always made.
        on_any = mix.any_base > 0 and rng.random() < mix.any_base and bool(self.negatives)
        if kind == "composite":
            source, box = rng.choice(self.cutouts)
            made = composite(rng, rng.choice(self.negatives if on_any else self.webcam_normals), source, box,
                             min_scale=mix.min_scale)
            if mix.second_blob > 0 and rng.random() < mix.second_blob:  # spaghetti spreads
                made = composite(rng, made, *rng.choice(self.cutouts), min_scale=mix.min_scale)
            made.box_weight = mix.box_weight
            return made
        if kind == "clutter":
            return clutter(rng, rng.choice(self.negatives if on_any else self.webcam_normals))
        made = synthetic_sample(rng, self.negatives)
        made.defect = False  # simulator frames and drawn spaghetti have no quality defect
        return made

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = random.Random(hash((self.seed, self.epoch, index)))
        real = index < len(self.samples)
        sample = self.samples[index] if real else self.made_up(rng, index - len(self.samples))
        image = sample.image
        if self.painted_marks > 0 and rng.random() < self.painted_marks:
            image = painted_mark(rng, image)
        image, boxes = augment(rng, image, sample.boxes)
        pixels, boxes = finish(rng, image, boxes, self.size)
        flags = sample_flags(sample, boxes)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), torch.from_numpy(boxes), flags


def collate(batch: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
            ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    images = torch.stack([item[0] for item in batch])
    return images, [item[1] for item in batch], torch.stack([item[2] for item in batch])
