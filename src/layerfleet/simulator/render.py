"""Procedural webcam frames of a printer bed with a growing part, and "spaghetti".

The simulator sends these as its webcam pictures, and the detector's training uses them as
hard negatives (clean frames) and synthetic failures (frames with spaghetti), so a failure
the simulator injects is one the shipped model has learned to see.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
RGB = tuple[int, int, int]

FILAMENT_COLOURS: tuple[RGB, ...] = (
    (230, 230, 225), (25, 25, 28), (200, 40, 35), (240, 120, 20), (245, 210, 40), (40, 150, 70),
    (35, 90, 200), (120, 60, 170), (150, 150, 155), (250, 160, 190), (90, 200, 220), (140, 95, 60),
)
BED_COLOURS: tuple[RGB, ...] = ((40, 40, 45), (150, 120, 60), (70, 70, 80), (185, 150, 80), (30, 30, 30))
WALL_COLOURS: tuple[RGB, ...] = ((200, 200, 195), (60, 60, 65), (225, 220, 210), (35, 40, 50), (170, 180, 190))


@dataclass(frozen=True)
class Scene:
    """How one simulated printer looks through its camera; fixed per printer."""

    wall: RGB
    bed: RGB
    filament: RGB
    part_width: float  # fraction of the bed width
    part_depth: float
    part_height: float  # fraction of the frame height at 100 %
    cylinder: bool
    camera_tilt: float  # how far the bed's far edge is narrowed (perspective)
    brightness: float

    @classmethod
    def random(cls, rng: random.Random) -> Scene:
        return cls(
            wall=rng.choice(WALL_COLOURS),
            bed=rng.choice(BED_COLOURS),
            filament=rng.choice(FILAMENT_COLOURS),
            part_width=rng.uniform(0.12, 0.35),
            part_depth=rng.uniform(0.1, 0.3),
            part_height=rng.uniform(0.15, 0.4),
            cylinder=rng.random() < 0.4,
            camera_tilt=rng.uniform(0.1, 0.3),
            brightness=rng.uniform(0.75, 1.15),
        )


def _shade(colour: RGB, factor: float) -> RGB:
    r, g, b = colour
    return (min(255, int(r * factor)), min(255, int(g * factor)), min(255, int(b * factor)))


def _draw_background(draw: ImageDraw.ImageDraw, scene: Scene, width: int, height: int) -> None:
    for y in range(0, height, 4):
        draw.rectangle((0, y, width, y + 4), fill=_shade(scene.wall, 0.7 + 0.5 * y / height))


def _bed_polygon(scene: Scene, width: int, height: int) -> list[tuple[float, float]]:
    top, bottom = height * 0.52, height * 0.97
    inset = width * scene.camera_tilt
    return [(inset, top), (width - inset, top), (width * 0.98, bottom), (width * 0.02, bottom)]


def _draw_bed(draw: ImageDraw.ImageDraw, scene: Scene, width: int, height: int) -> None:
    polygon = _bed_polygon(scene, width, height)
    draw.polygon(polygon, fill=scene.bed)
    (x0, top), (x1, _), (_, bottom), (x3, _) = polygon
    for i in range(1, 8):  # texture lines of a PEI sheet
        t = i / 8
        draw.line(((x0 + (x3 - x0) * 0, top + (bottom - top) * t), (x1, top + (bottom - top) * t)),
                  fill=_shade(scene.bed, 1.08), width=1)
    draw.rectangle((0, bottom, width, height), fill=_shade(scene.bed, 0.5))


def part_box(scene: Scene, progress: float, width: int, height: int) -> Box:
    """Where the printed part stands in the frame at a print progress of 0–1."""
    centre_x, base_y = width / 2, height * 0.8
    half = scene.part_width * width / 2
    depth = scene.part_depth * height * 0.3
    grown = scene.part_height * height * max(0.0, min(1.0, progress))
    return (centre_x - half, base_y - depth - grown, centre_x + half, base_y)


def _draw_part(draw: ImageDraw.ImageDraw, scene: Scene, progress: float, width: int, height: int) -> Box:
    x0, top, x1, base = part_box(scene, progress, width, height)
    depth = scene.part_depth * height * 0.3
    if progress <= 0:
        return (x0, top, x1, base)
    side = scene.filament
    if scene.cylinder:
        draw.ellipse((x0, base - depth, x1, base), fill=_shade(side, 0.8))
        draw.rectangle((x0, top + depth / 2, x1, base - depth / 2), fill=_shade(side, 0.85))
        draw.ellipse((x0, top, x1, top + depth), fill=_shade(side, 1.1))
    else:
        draw.rectangle((x0, top + depth, x1, base), fill=_shade(side, 0.85))
        draw.polygon([(x0, top + depth), (x0 + depth * 0.6, top), (x1 + depth * 0.6, top), (x1, top + depth)],
                     fill=_shade(side, 1.15))
    for y in range(int(top + depth), int(base), 3):  # layer lines
        draw.line((x0, y, x1, y), fill=_shade(side, 0.75), width=1)
    return (x0, top, x1, base)


def _draw_toolhead(draw: ImageDraw.ImageDraw, x: float, y: float, width: int, height: int) -> None:
    draw.rectangle((0, y - height * 0.2, width, y - height * 0.17), fill=(110, 110, 115))  # X rail
    w, h = width * 0.09, height * 0.12
    draw.rectangle((x - w / 2, y - h - height * 0.03, x + w / 2, y - height * 0.03), fill=(35, 35, 38))
    draw.polygon([(x - w * 0.15, y - height * 0.03), (x + w * 0.15, y - height * 0.03), (x, y)], fill=(190, 160, 60))


def draw_spaghetti(image: Image.Image, rng: random.Random, region: Box, colour: RGB, amount: float = 1.0) -> Box:
    """Tangled strands of extruded filament inside ``region``; returns their bounding box."""
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = region
    strands = max(3, int(rng.uniform(12, 40) * amount))
    thickness = rng.choice((1, 2, 2, 3, 3, 4))
    lo_x, lo_y, hi_x, hi_y = x1, y1, x0, y0
    for _ in range(strands):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        heading = rng.uniform(0, 2 * math.pi)
        turn = rng.uniform(-0.6, 0.6)
        points = [(x, y)]
        for _ in range(rng.randint(8, 40)):
            turn += rng.uniform(-0.35, 0.35)
            turn = max(-0.9, min(0.9, turn))
            heading += turn
            step = rng.uniform(3, 9)
            x = min(x1, max(x0, x + math.cos(heading) * step))
            y = min(y1, max(y0, y + math.sin(heading) * step))
            points.append((x, y))
        shade = rng.uniform(0.55, 1.25)
        draw.line(points, fill=_shade(colour, shade * 0.6), width=thickness + 1, joint="curve")
        draw.line(points, fill=_shade(colour, shade), width=thickness, joint="curve")
        if thickness > 1:  # the shine on a round strand
            draw.line([(px - 0.5, py - 0.5) for px, py in points], fill=_shade(colour, shade * 1.35), width=1)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        lo_x, lo_y = min(lo_x, *xs), min(lo_y, *ys)
        hi_x, hi_y = max(hi_x, *xs), max(hi_y, *ys)
    pad = thickness + 1
    return (max(x0, lo_x - pad), max(y0, lo_y - pad), min(x1, hi_x + pad), min(y1, hi_y + pad))


def render_frame(
    scene: Scene,
    progress: float,
    *,
    spaghetti: float = 0.0,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
) -> tuple[Image.Image, list[Box]]:
    """A webcam frame at ``progress`` (0–1); ``spaghetti`` > 0 draws that much of a failure.
    Returns the frame and the boxes of the failure (empty for a clean frame)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    _draw_background(draw, scene, width, height)
    _draw_bed(draw, scene, width, height)
    x0, top, x1, base = _draw_part(draw, scene, progress, width, height)
    boxes: list[Box] = []
    if spaghetti > 0:
        spread = (x1 - x0) * (0.6 + spaghetti)
        centre = (x0 + x1) / 2
        region = (max(2.0, centre - spread), max(height * 0.45, top - height * 0.08 * spaghetti),
                  min(width - 2.0, centre + spread), min(height - 2.0, base + height * 0.05))
        boxes.append(draw_spaghetti(image, rng, region, scene.filament, amount=0.4 + spaghetti))
    _draw_toolhead(draw, width / 2 + rng.uniform(-0.15, 0.15) * width, top, width, height)
    if scene.brightness != 1.0:
        image = Image.eval(image, lambda v: min(255, int(v * scene.brightness)))
    image = image.filter(ImageFilter.GaussianBlur(radius=0.6))
    return image, boxes
