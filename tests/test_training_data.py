"""The detector's training data (issue 19): the extra set split by group with its overlays
masked, composites whose box covers the paste, clutter hard negatives, both deterministic, and
image-level rows never taught as detection negatives."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from training.composites import CLUTTER_KINDS, clutter, composite, cutout_sources, feather_mask
from training.data import (
    DEFECT,
    FAILURE,
    SHIPPED,
    SYNTHETIC_ROTATION,
    WIDE,
    Sample,
    TrainingSet,
    sample_flags,
    with_webcam_normals_repeated,
)
from training.extra import PINNED, SPLITS, mask_overlays, read_extra, read_manifest, split_groups
from training.overlays import painted_mark

REPO = Path(__file__).resolve().parents[1]
EXTRA = REPO.parent / "shared" / "datasets" / "print-failures-extra"


def normal_frame(seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    pixels = (rng.normal(110, 25, (240, 320, 3))).clip(0, 255).astype(np.uint8)
    return Sample(Image.fromarray(pixels), np.zeros((0, 5), dtype=np.float32), failure=False, defect=False,
                  kind="webcam")


def labelled_source() -> Sample:
    image = Image.new("RGB", (200, 160), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    for i in range(12):  # bright strands inside the failure box
        draw.line([(40 + 5 * i, 30), (150 - 4 * i, 120)], fill=(250, 240, 60), width=2)
    draw.rectangle((10, 130, 60, 150), fill=(200, 60, 200))  # a defect box's contents
    boxes = np.array([[FAILURE, 35, 25, 160, 125], [DEFECT, 10, 130, 60, 150], [FAILURE, 0, 0, 5, 5]],
                     dtype=np.float32)
    return Sample(image, boxes)


def test_a_composites_box_covers_the_paste() -> None:
    base, source = normal_frame(), labelled_source()
    sources = cutout_sources([source], (FAILURE, DEFECT))
    assert [index for _, index in sources] == [0, 1]  # the 5-pixel box is too small to cut out
    for seed in range(20):
        sample, index = sources[seed % 2]
        made = composite(random.Random(seed), base, sample, index)
        assert made.boxes.shape == (1, 5)
        cls, x0, y0, x1, y1 = made.boxes[0].tolist()
        assert cls == sample.boxes[index, 0]
        assert made.extra["paste"] == (x0, y0, x1, y1)
        changed = np.abs(np.asarray(made.image, dtype=np.int16) - np.asarray(base.image, dtype=np.int16)).sum(-1) > 0
        ys, xs = np.nonzero(changed)
        assert len(xs) > 0.2 * (x1 - x0) * (y1 - y0)  # the paste is there…
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1  # …and all inside the box
        assert made.failure == (cls == FAILURE) and made.defect == (cls == DEFECT)
        assert 0 <= x0 < x1 <= base.image.width and 0 <= y0 < y1 <= base.image.height


def test_composites_and_clutter_are_deterministic_with_a_seed() -> None:
    base, source = normal_frame(), labelled_source()
    first = composite(random.Random(7), base, source, 0)
    again = composite(random.Random(7), base, source, 0)
    other = composite(random.Random(8), base, source, 0)
    assert first.image.tobytes() == again.image.tobytes() and np.array_equal(first.boxes, again.boxes)
    assert first.image.tobytes() != other.image.tobytes()
    a, b = clutter(random.Random(3), base), clutter(random.Random(3), base)
    assert a.image.tobytes() == b.image.tobytes() and a.extra == b.extra


def test_clutter_is_a_negative_drawn_on_the_frame() -> None:
    base = normal_frame()
    seen: Counter[str] = Counter()
    for seed in range(30):
        made = clutter(random.Random(seed), base)
        assert made.boxes.shape == (0, 5) and made.failure is False and made.defect is False
        assert made.image.tobytes() != base.image.tobytes()
        seen.update(made.extra["clutter"])  # type: ignore[arg-type]
    assert set(seen) == set(CLUTTER_KINDS)
    for kind in CLUTTER_KINDS:  # each kind alone changes the picture
        only = clutter(random.Random(1), base, kinds=[kind])
        assert only.extra["clutter"] == [kind] and only.image.tobytes() != base.image.tobytes(), kind
    with pytest.raises(ValueError, match="unknown clutter"):
        clutter(random.Random(1), base, kinds=["confetti"])


def test_the_feathered_mask_is_transparent_at_its_edge_and_opaque_inside() -> None:
    alpha = np.asarray(feather_mask(80, 60, 0.2))
    assert alpha[0].max() == alpha[-1].max() == alpha[:, 0].max() == alpha[:, -1].max() == 0
    assert alpha[30, 40] == 255
    assert 0 < alpha[30, 8] < 255  # fades in


def test_drawn_overlays_are_masked() -> None:
    image = Image.new("RGB", (200, 150), (120, 110, 100))
    draw = ImageDraw.Draw(image)
    draw.line([(20, 20), (90, 80)], fill=(235, 40, 30), width=5)  # a red arrow
    draw.rectangle((120, 30, 180, 90), outline=(40, 230, 40), width=3)  # a green detection box
    draw.ellipse((10, 110, 40, 140), fill=(60, 60, 200))  # a blue part: not an overlay
    masked = np.asarray(mask_overlays(image), dtype=np.int16)
    r, g, b = masked[..., 0], masked[..., 1], masked[..., 2]
    assert not ((r - g > 110) & (r - b > 110)).any() and not ((g - r > 90) & (g - b > 60)).any()
    assert np.array_equal(masked[125, 25], [60, 60, 200])  # the part is untouched
    assert abs(int(masked[50, 55, 0]) - 120) < 25  # the arrow's place looks like its surroundings
    plain = Image.new("RGB", (50, 50), (120, 110, 100))
    assert mask_overlays(plain) is plain


def test_sample_flags_never_make_image_level_rows_detection_negatives() -> None:
    image_level = Sample(normal_frame().image, np.zeros((0, 5), dtype=np.float32), failure=True, defect=None,
                         boxed=False)
    assert sample_flags(image_level, image_level.boxes).tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    boxed = Sample(normal_frame().image, np.array([[DEFECT, 1, 1, 50, 50]], dtype=np.float32), failure=False,
                   gantry_known=False)
    assert boxed.defect is True
    assert sample_flags(boxed, boxed.boxes).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    cropped_away = np.zeros((0, 5), dtype=np.float32)
    assert sample_flags(boxed, cropped_away).tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]  # by the surviving boxes


def test_image_level_samples_teach_the_image_heads_only() -> None:
    import torch
    from training.model import FailureDetector, detection_loss

    model = FailureDetector(64, pretrained=False).eval()
    images = torch.rand(2, 3, 64, 64) * 255
    targets = [torch.zeros((0, 5)), torch.zeros((0, 5))]
    image_level = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0, 1.0]])
    _, parts = detection_loss(model, images, targets, image_level)
    assert parts["focal"] == 0.0 and parts["image"] > 0 and parts["defect"] > 0
    boxed = image_level.clone()
    boxed[:, 3] = 1.0
    _, as_negatives = detection_loss(model, images, targets, boxed)
    assert as_negatives["focal"] > 0  # boxed and empty: every cell is a negative
    unknown = boxed.clone()
    unknown[:, 2] = 0.0  # defects not known
    unknown[:, 4] = 0.0  # gantries not labelled
    _, failure_cells_only = detection_loss(model, images, targets, unknown)
    assert 0 < failure_cells_only["focal"] < as_negatives["focal"]


def test_the_synthetic_rotation_holds_every_kind_in_a_handful() -> None:
    source = labelled_source()
    dataset = TrainingSet([normal_frame(), source], size=64, synthetic=4)
    assert dataset.synthetic_counts() == {"simulator": 2, "composite": 1, "clutter": 1}
    assert set(SYNTHETIC_ROTATION) == {"simulator", "composite", "clutter"}
    pixels, boxes, flags = dataset[len(dataset.samples) + 1]  # the composite
    assert pixels.shape == (3, 64, 64) and len(boxes) <= 1 and flags[3] == 1.0
    bare = TrainingSet([source], size=64, synthetic=3)  # no normal frame to paste on
    assert bare.synthetic_counts() == {"simulator": 3, "composite": 0, "clutter": 0}


def test_a_mix_s_box_weight_lowers_what_composites_teach_the_box_heads_only() -> None:
    import torch
    from training.model import FailureDetector, detection_loss

    frames = [normal_frame(seed) for seed in range(3)]
    source = labelled_source()
    shipped = TrainingSet([*frames, source], size=96, synthetic=6)
    assert shipped.mix == SHIPPED
    light = TrainingSet([*frames, source], size=96, synthetic=6, mix=replace(WIDE, box_weight=0.25))
    assert light.synthetic_counts() == {"simulator": 2, "composite": 3, "clutter": 1}
    first = len(shipped.samples)
    kinds = [light.synthetic_kind(i) for i in range(6)]
    for i, kind in enumerate(kinds):
        weight = light[first + i][2][3].item()
        assert weight == (0.25 if kind == "composite" else 1.0)
        assert shipped[first + i][2][3].item() == 1.0
    assert all(light[i][2][3].item() == 1.0 for i in range(first))  # real samples keep their weight

    model = FailureDetector(96, pretrained=False).eval()
    composite_index = first + kinds.index("composite")
    images, targets, flags = (torch.stack([light[composite_index][0]]), [light[composite_index][1]],
                              torch.stack([light[composite_index][2]]))
    assert len(targets[0]) >= 1  # the pasted box survived the crop
    _, light_parts = detection_loss(model, images, targets, flags)
    full = flags.clone()
    full[:, 3] = 1.0
    _, full_parts = detection_loss(model, images, targets, full)
    assert light_parts["focal"] == pytest.approx(0.25 * full_parts["focal"], rel=1e-4)
    assert light_parts["box"] == pytest.approx(0.25 * full_parts["box"], rel=1e-4) and full_parts["box"] > 0
    assert light_parts["image"] == pytest.approx(full_parts["image"])  # the image label teaches in full


def test_the_wide_mix_pastes_on_any_normal_picture_smaller_and_sometimes_twice() -> None:
    webcam = normal_frame(1)
    photo = Sample(normal_frame(2).image, np.zeros((0, 5), dtype=np.float32), failure=False, defect=False,
                   kind="photo")
    dataset = TrainingSet([webcam, photo, labelled_source()], size=96, synthetic=600, mix=WIDE)
    made = [dataset.made_up(random.Random(i), i) for i in range(600)]
    composites = [m for m in made if m.kind == "composite"]
    assert len(composites) == 300
    bases = Counter("webcam" if np.array_equal(np.asarray(c.image)[:5, :5], np.asarray(webcam.image)[:5, :5])
                    else "other" for c in composites)
    assert bases["other"] > 60 and bases["webcam"] > 60
    twice = sum(1 for c in composites if len(c.boxes) == 2)
    assert 50 < twice < 130  # 30 % of 300
    widths = [c.boxes[-1, 3] - c.boxes[-1, 1] for c in composites]
    assert min(widths) < 0.17 * webcam.image.width  # below the shipped mix's smallest


def test_real_normal_webcam_frames_can_be_seen_more_often_each_copy_augmented_anew() -> None:
    webcam = normal_frame(1)
    photo = Sample(normal_frame(2).image, np.zeros((0, 5), dtype=np.float32), failure=False, defect=False,
                   kind="photo")
    failure = labelled_source()
    samples = [webcam, photo, failure]
    assert with_webcam_normals_repeated(samples, 1) == samples
    tripled = with_webcam_normals_repeated(samples, 3)
    assert len(tripled) == 5 and tripled[:3] == samples
    assert tripled[3] is webcam and tripled[4] is webcam  # only the real normal webcam frame
    with pytest.raises(ValueError):
        with_webcam_normals_repeated(samples, 0)

    once = TrainingSet(samples, size=64, synthetic=6)
    thrice = TrainingSet(tripled, size=64, synthetic=6)
    assert len(thrice) == len(once) + 2
    # What synthetic samples are drawn on is as before: a copy is not one more base to paste on.
    assert thrice.negatives == once.negatives and thrice.webcam_normals == once.webcam_normals
    copies = [thrice[i][0] for i in (0, 3, 4)]
    assert not torch_equal(copies[0], copies[1]) and not torch_equal(copies[1], copies[2])


def test_a_made_up_mark_is_painted_out_as_a_drawn_one_is() -> None:
    image = normal_frame(3).image
    arrays = [np.asarray(painted_mark(random.Random(seed), image), dtype=np.int16) for seed in range(12)]
    original = np.asarray(image, dtype=np.int16)
    changed = [np.abs(a - original).max(axis=2) > 8 for a in arrays]
    # A patch of the picture, not the picture: a mark is a stroke or an outline.
    assert all(0.002 < c.mean() < 0.25 for c in changed), [round(float(c.mean()), 4) for c in changed]
    assert len({c.tobytes() for c in changed}) == len(changed)  # each seed its own mark
    # Filled from the surroundings as mask_overlays fills a drawn arrow's place, its 8-bit fill's
    # error included (what the evaluated pictures carry): near the picture's own colour.
    flat = Image.new("RGB", (160, 120), (120, 110, 100))
    filled = np.asarray(painted_mark(random.Random(1), flat), dtype=np.int16)
    assert (filled != [120, 110, 100]).any() and np.abs(filled - [120, 110, 100]).max() < 40


def test_painted_marks_go_on_either_class_and_none_draws_nothing() -> None:
    samples = [normal_frame(1), labelled_source()]
    plain = TrainingSet(samples, size=64, synthetic=3)
    off = TrainingSet(samples, size=64, synthetic=3, painted_marks=0.0)
    every = TrainingSet(samples, size=64, synthetic=3, painted_marks=1.0)
    for index in range(len(plain)):
        assert torch_equal(plain[index][0], off[index][0])  # the option off changes no sample
        assert not torch_equal(plain[index][0], every[index][0])  # on: every picture, of both classes


def torch_equal(a: object, b: object) -> bool:
    import torch

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return bool(torch.equal(a, b))


@pytest.fixture(scope="module")
def manifest() -> list[dict[str, str]]:
    assert (EXTRA / "manifest.csv").is_file(), "the extra data set must be beside the project"
    return read_manifest(EXTRA)


def test_the_extra_set_is_split_by_group(manifest: list[dict[str, str]]) -> None:
    assignment = split_groups(manifest)
    assert set(assignment.values()) == set(SPLITS)
    assert assignment == split_groups(manifest)  # deterministic
    for group, split in PINNED.items():
        assert assignment[group] == split
    per_split = Counter(assignment[row["group"]] for row in manifest)
    assert 0.15 <= per_split["holdout"] / len(manifest) <= 0.25
    assert 0.08 <= per_split["val"] / len(manifest) <= 0.16
    # A group is one key: no group can be in two splits. Every label is in the holdout groups.
    held = {row["label"].split(":")[0] for row in manifest if assignment[row["group"]] == "holdout"}
    assert held == {"failure", "defect", "normal"}


def test_extra_samples_carry_their_labels(manifest: list[dict[str, str]]) -> None:
    samples = read_extra(EXTRA, "holdout", limit=14)
    kinds = {(s.kind, s.boxed, s.failure, s.defect) for s in samples}
    assert ("webcam", False, True, None) in kinds  # image-level failures: defects unknown
    assert ("webcam", True, False, False) in kinds  # normal frames of the unseen printer
    defects = [s for s in samples if s.defect]
    assert defects and all((s.boxes[:, 0] == DEFECT).any() for s in defects if s.boxed)
    assert {s.group for s in samples} <= {g for g, split in split_groups(manifest).items() if split == "holdout"}
