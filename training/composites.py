"""Synthetic training samples made from real pictures.

- Composites: a failure or defect cut out of a labelled box, pasted with a feathered alpha
  edge and its colours pulled towards the spot it lands on, onto a real normal webcam frame.
  The pasted rectangle becomes the sample's box (with the source box's class), so the
  network sees real failures in the cameras, light and clutter of real printers.
- Clutter: hard negatives drawn procedurally onto normal frames — cables, binder clips, purge
  lines, bed logos and reflections, the reference server's documented causes of false alarms.

Everything is drawn from the ``random.Random`` passed in: the same seed gives the same sample.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from layerfleet.simulator.render import FILAMENT_COLOURS
from training.data import Sample

MIN_CUTOUT = 12  # pixels a side: smaller boxes carry too little of the failure to paste
CLUTTER_KINDS = ("cable", "clip", "purge_line", "bed_logo", "reflection")


def cutout_sources(samples: list[Sample], classes: tuple[int, ...]) -> list[tuple[Sample, int]]:
    """(sample, box index) of every labelled box of ``classes`` big enough to cut out."""
    found = []
    for sample in samples:
        if not sample.boxed:
            continue
        for index, (cls, x0, y0, x1, y1) in enumerate(sample.boxes.tolist()):
            if int(cls) in classes and x1 - x0 >= MIN_CUTOUT and y1 - y0 >= MIN_CUTOUT:
                found.append((sample, index))
    return found


def feather_mask(width: int, height: int, feather: float) -> Image.Image:
    """An alpha mask: opaque in the middle, fading to 0 over ``feather`` of the shorter side
    towards every edge, and 0 on the edge itself (the paste stays inside its box)."""
    border = max(1, int(min(width, height) * feather))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((border, border, width - 1 - border, height - 1 - border), fill=255)
    blurred = mask.filter(ImageFilter.GaussianBlur(border / 2))
    # The blur leaks a little beyond the inner rectangle; the outermost ring stays transparent.
    alpha = np.asarray(blurred, dtype=np.uint8).copy()
    alpha[[0, -1], :] = 0
    alpha[:, [0, -1]] = 0
    return Image.fromarray(alpha)


def _match_colours(patch: np.ndarray, target: np.ndarray, strength: float) -> np.ndarray:
    """Move the patch's per-channel mean and spread part of the way to the target region's."""
    p_mean, p_std = patch.reshape(-1, 3).mean(0), patch.reshape(-1, 3).std(0) + 1e-3
    t_mean, t_std = target.reshape(-1, 3).mean(0), target.reshape(-1, 3).std(0) + 1e-3
    mean = p_mean + strength * (t_mean - p_mean)
    std = p_std * (1 + strength * (t_std / p_std - 1))
    matched: np.ndarray = ((patch - p_mean) / p_std * std + mean).clip(0, 255)
    return matched


def composite(rng: random.Random, base: Sample, source: Sample, box_index: int, min_scale: float = 0.18) -> Sample:
    """``source``'s box ``box_index`` pasted onto ``base`` (a normal frame); the result's new
    box is exactly the pasted rectangle, with the source box's class. It is ``min_scale`` to a
    half of the frame's width."""
    cls, x0, y0, x1, y1 = source.boxes[box_index].tolist()
    margin = 0.08
    w, h = x1 - x0, y1 - y0
    crop = (max(0, int(x0 - margin * w)), max(0, int(y0 - margin * h)),
            min(source.image.width, math.ceil(x1 + margin * w)),
            min(source.image.height, math.ceil(y1 + margin * h)))
    patch = source.image.crop(crop)
    image = base.image.copy()
    bw, bh = image.size
    # Aspect kept, never beyond the frame.
    scale = rng.uniform(min_scale, 0.5) * bw / patch.width
    scale = min(scale, 0.9 * bw / patch.width, 0.9 * bh / patch.height)
    pw, ph = max(MIN_CUTOUT, int(patch.width * scale)), max(MIN_CUTOUT, int(patch.height * scale))
    patch = patch.resize((pw, ph), Image.Resampling.BILINEAR)
    # Failures lie on or above the bed: mostly the lower two thirds of a webcam frame.
    px = rng.randrange(0, bw - pw + 1)
    py = rng.randrange(int((bh - ph) * 0.25), bh - ph + 1)
    region = np.asarray(image.crop((px, py, px + pw, py + ph)), dtype=np.float32)
    pixels = _match_colours(np.asarray(patch, dtype=np.float32), region, rng.uniform(0.2, 0.6))
    alpha = np.asarray(feather_mask(pw, ph, rng.uniform(0.08, 0.22)), dtype=np.float32)[..., None] / 255
    blended = pixels * alpha + region * (1 - alpha)
    image.paste(Image.fromarray(blended.clip(0, 255).astype(np.uint8)), (px, py))
    boxes = np.concatenate([base.boxes, np.array([[cls, px, py, px + pw, py + ph]], dtype=np.float32)])
    failure = bool(base.failure) or int(cls) == 0
    defect = True if int(cls) == 2 else base.defect
    return Sample(image, boxes, failure=failure, defect=defect, boxed=base.boxed, group=base.group,
                  kind="composite", gantry_known=base.gantry_known, extra={"paste": (px, py, px + pw, py + ph)})


def _bezier(points: list[tuple[float, float]], steps: int = 40) -> list[tuple[float, float]]:
    (ax, ay), (bx, by), (cx, cy), (dx, dy) = points
    out = []
    for i in range(steps + 1):
        t = i / steps
        u = 1 - t
        out.append((u ** 3 * ax + 3 * u * u * t * bx + 3 * u * t * t * cx + t ** 3 * dx,
                    u ** 3 * ay + 3 * u * u * t * by + 3 * u * t * t * cy + t ** 3 * dy))
    return out


def _cable(rng: random.Random, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    """A cable or a loom of a few, sagging across part of the frame, with a highlight."""
    colour = rng.choice([(20, 20, 22), (45, 45, 50), (200, 40, 35), (230, 230, 230), (30, 60, 160)])
    start = (rng.uniform(-0.1, 1.1) * w, rng.uniform(0, 0.6) * h)
    end = (rng.uniform(-0.1, 1.1) * w, rng.uniform(0.3, 1.1) * h)
    controls = [(rng.uniform(0, w), rng.uniform(0, h)) for _ in range(2)]
    width = max(2, int(rng.uniform(0.006, 0.025) * w))
    for strand in range(rng.choice([1, 1, 2, 3])):
        offset = strand * width * 1.1
        path = _bezier([(start[0] + offset, start[1]), controls[0], controls[1], (end[0] + offset, end[1])])
        draw.line(path, fill=colour, width=width, joint="curve")
        shine = tuple(min(255, c + 70) for c in colour)
        draw.line([(x - width / 4, y - width / 4) for x, y in path], fill=shine, width=max(1, width // 4))


def _clip(rng: random.Random, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    """A binder clip holding the bed: a dark trapezoid with two wire handles."""
    size = rng.uniform(0.04, 0.1) * w
    x, y = rng.uniform(0, w - size), rng.uniform(0.45, 0.95) * h
    body = rng.choice([(15, 15, 18), (40, 40, 45), (180, 30, 30), (30, 30, 140)])
    draw.polygon([(x, y), (x + size, y), (x + size * 0.85, y + size * 0.6), (x + size * 0.15, y + size * 0.6)],
                 fill=body)
    metal = (190, 190, 195)
    for side in (0.25, 0.75):
        draw.line([(x + size * side, y), (x + size * (side + rng.uniform(-0.2, 0.2)), y - size * 0.8)],
                  fill=metal, width=max(1, int(size / 12)))


def _purge_line(rng: random.Random, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    """The prime line a start G-code lays along the bed's front or left edge."""
    colour = rng.choice(FILAMENT_COLOURS)
    y = rng.uniform(0.7, 0.97) * h
    x0, x1 = sorted((rng.uniform(0.02, 0.5) * w, rng.uniform(0.5, 0.98) * w))
    width = max(2, int(rng.uniform(0.004, 0.012) * w))
    wobble = [(x0 + (x1 - x0) * i / 12, y + rng.uniform(-1.5, 1.5)) for i in range(13)]
    draw.line(wobble, fill=colour, width=width)
    if rng.random() < 0.5:  # the second, parallel pass
        draw.line([(x, yy - width * 1.6) for x, yy in wobble], fill=colour, width=width)


def _bed_logo(rng: random.Random, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    """A printed logo or grid on the bed sheet: pale letters, rings and lines."""
    tone = rng.choice([(210, 205, 190), (235, 235, 235), (160, 150, 120), (60, 60, 65)])
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.55, 0.9) * h
    size = rng.uniform(0.05, 0.15) * w
    for _ in range(rng.randint(1, 3)):
        r = size * rng.uniform(0.3, 1.0)
        draw.ellipse((cx - r, cy - r * 0.5, cx + r, cy + r * 0.5), outline=tone, width=max(1, int(size / 15)))
    text = "".join(rng.choice("ABCDEFGHKMPRSTXZ") for _ in range(rng.randint(2, 6)))
    draw.text((cx - size, cy + size * 0.3), text, fill=tone)
    for i in range(rng.randint(0, 6)):  # grid lines of a textured sheet
        y = cy - size + i * size / 3
        draw.line([(cx - 2 * size, y), (cx + 2 * size, y)], fill=tone, width=1)


def _reflection(rng: random.Random, image: Image.Image) -> Image.Image:
    """A soft bright highlight: light on a glass or PEI bed, or on a glossy part."""
    w, h = image.size
    layer = Image.new("L", image.size, 0)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.3, 0.95) * h
    rx, ry = rng.uniform(0.03, 0.2) * w, rng.uniform(0.01, 0.08) * h
    ImageDraw.Draw(layer).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=int(rng.uniform(120, 255)))
    alpha = np.asarray(layer.filter(ImageFilter.GaussianBlur(max(rx, ry) / 3)), dtype=np.float32)[..., None] / 255
    pixels = np.asarray(image, dtype=np.float32)
    return Image.fromarray((pixels * (1 - alpha) + 255 * alpha).astype(np.uint8))


def clutter(rng: random.Random, base: Sample, kinds: Sequence[str] | None = None) -> Sample:
    """``base`` (a normal frame) with one to three kinds of clutter drawn on it (or exactly
    ``kinds``); a negative."""
    image = base.image.copy()
    w, h = image.size
    chosen = list(kinds) if kinds is not None else rng.sample(CLUTTER_KINDS, rng.randint(1, 3))
    unknown = set(chosen) - set(CLUTTER_KINDS)
    if unknown:
        raise ValueError(f"unknown clutter {sorted(unknown)}; kinds: {', '.join(CLUTTER_KINDS)}")
    draw = ImageDraw.Draw(image)
    for kind in chosen:
        if kind == "cable":
            _cable(rng, draw, w, h)
        elif kind == "clip":
            _clip(rng, draw, w, h)
        elif kind == "purge_line":
            _purge_line(rng, draw, w, h)
        elif kind == "bed_logo":
            _bed_logo(rng, draw, w, h)
    if "reflection" in chosen:
        image = _reflection(rng, image)
    return Sample(image, base.boxes.copy(), failure=base.failure, defect=base.defect, boxed=base.boxed,
                  group=base.group, kind="clutter", gantry_known=base.gantry_known, extra={"clutter": chosen})
