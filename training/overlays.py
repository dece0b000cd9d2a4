"""Marks drawn on pictures (arrows, detection boxes, captions), painted out.

Some pictures of the extra set carry marks someone drew: red arrows on failures, green boxes
on normal frames, text on camera-setup photos. They are painted out with the blurred
surroundings (`mask_overlays`) so a mark is never a cue. The painted-out patch itself could
become one — in the training split only normal photos carry such patches — so `painted_mark`
paints out a made-up arrow or box on any training picture, of either class, the same way —
with the same 8-bit fill and its error (up to ~30 levels deep inside a mark), on purpose: the
patches must look like those of the evaluated pictures.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# How far around a mark is painted out: its anti-aliased edge and JPEG halo go with it.
MARK_GROWTH = 9


def paint_out(image: Image.Image, mark: np.ndarray) -> Image.Image:
    """``image`` with the pixels where ``mark`` is true filled from their blurred surroundings."""
    if not mark.any():
        return image
    keep = (~mark).astype(np.float32)
    radius = max(4.0, image.width / 40)
    # Normalised convolution: the blur of the kept pixels divided by the blur of the kept mask.
    kept = Image.fromarray((np.asarray(image, dtype=np.float32) * keep[..., None]).astype(np.uint8))
    weight = np.asarray(Image.fromarray((keep * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)),
                        dtype=np.float32)
    spread = np.asarray(kept.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    filled = spread * 255 / np.maximum(weight, 1.0)[..., None]
    out = np.where(mark[..., None], filled.clip(0, 255), np.asarray(image, dtype=np.float32))
    return Image.fromarray(out.astype(np.uint8))


def _grown(drawn: Image.Image) -> np.ndarray:
    return np.asarray(drawn.filter(ImageFilter.MaxFilter(MARK_GROWTH))) > 0


def mask_overlays(image: Image.Image) -> Image.Image:
    """Paint out strongly saturated red and green marks (drawn arrows, detection boxes, captions)
    with the blurred surroundings, so an overlay never becomes a cue for either class: arrows
    are on failures, boxes on normal frames and text on camera-setup photos."""
    pixels = np.asarray(image, dtype=np.int16)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    red = (r > 170) & (r - g > 110) & (r - b > 110)
    green = (g > 170) & (g - r > 90) & (g - b > 60)
    return paint_out(image, _grown(Image.fromarray(((red | green) * 255).astype(np.uint8))))


def painted_mark(rng: random.Random, image: Image.Image) -> Image.Image:
    """``image`` with a made-up arrow (or, one time in three, a box outline) painted out as
    `mask_overlays` paints out a drawn one."""
    w, h = image.size
    drawn = Image.new("L", (w, h), 0)
    pen = ImageDraw.Draw(drawn)
    width = max(2, round(min(w, h) * rng.uniform(0.006, 0.015)))
    if rng.random() < 1 / 3:
        bw, bh = rng.uniform(0.15, 0.6) * w, rng.uniform(0.15, 0.6) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        pen.rectangle((x0, y0, x0 + bw, y0 + bh), outline=255, width=width)
    else:
        tip = (rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h)
        angle = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.12, 0.35) * math.hypot(w, h)
        tail = (tip[0] + length * math.cos(angle), tip[1] + length * math.sin(angle))
        pen.line((tail, tip), fill=255, width=width)
        head = length * rng.uniform(0.15, 0.3)
        for side in (-1, 1):
            barb = angle + side * math.radians(rng.uniform(25, 40))
            pen.line((tip, (tip[0] + head * math.cos(barb), tip[1] + head * math.sin(barb))), fill=255, width=width)
    return paint_out(image, _grown(drawn))
