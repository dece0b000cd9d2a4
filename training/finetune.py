"""Fine-tune the shipped detector on one farm's evidence, export it, and measure it beside the
shipped model on (a) our val set and (b) the farm's held-back answers.

    python -m training.finetune --base MODEL.onnx --evidence evidence.json --val-data DIR --out DIR

The PyTorch checkpoint of the shipped model is not part of the package (only its ONNX export
is), so the weights are read back from the ONNX file: the export folded each batch norm into
the convolution before it, so every convolution of ``training.model.FailureDetector`` takes the
folded weights and bias, in the order the network calls them, and its batch norms become the
identity (their scale and shift stay trainable; their statistics stay frozen). The rebuilt
network is checked against ONNX Runtime before any training.

``evidence.json``: ``{"train": [{"path": "/abs/frame.jpg", "label": 1}, …], "heldout": [...]}``
(label 1: a failure, 0: not). The farm's frames carry no boxes: a negative teaches every cell
and the image score "no failure"; a positive teaches the image score and the most confident
cell "failure". Frames of our own training set (``--replay-data``, with boxes) are mixed in so
that the model does not forget what it knew. Writes ``model.onnx`` and ``figures.json`` to
``--out`` and prints one JSON line of figures last.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.data import Sample, augment, finish, has_failure, read_split, sample_flags
from training.evaluate import auroc, evaluate
from training.export import export_onnx
from training.model import FAILURE, FailureDetector, detection_loss

# Outputs the base model lacks start here: a probability of 0.001.
NOT_SEEN_LOGIT = -6.9


def _call_order(model: FailureDetector, size: int) -> list[torch.nn.Module]:
    """Convolutions and batch norms in the order a forward pass calls them (as the export traced them)."""
    order: list[torch.nn.Module] = []
    hooks = [module.register_forward_hook(lambda m, _i, _o: order.append(m))
             for module in model.modules() if isinstance(module, torch.nn.Conv2d | torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return order


def load_onnx_weights(model: FailureDetector, onnx_path: Path) -> None:
    """Give ``model`` the weights of an exported FailureDetector (see the module's docstring)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    order = _call_order(model, model.image_size)
    pairs: list[tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d | None]] = []
    for index, module in enumerate(order):
        if isinstance(module, torch.nn.Conv2d):
            following = order[index + 1] if index + 1 < len(order) else None
            pairs.append((module, following if isinstance(following, torch.nn.BatchNorm2d) else None))
    if len(pairs) != len(convs):
        raise SystemExit(f"{onnx_path} has {len(convs)} convolutions, training/model.py {len(pairs)}: "
                         "the base model was not exported from this network")
    with torch.no_grad():
        for (conv, norm), node in zip(pairs, convs, strict=True):
            weight = torch.from_numpy(weights[node.input[1]].copy())
            bias = torch.from_numpy(weights[node.input[2]].copy()) if len(node.input) > 2 else None
            if weight.shape[1:] != conv.weight.shape[1:] or weight.shape[0] > conv.weight.shape[0]:
                raise SystemExit(f"{onnx_path}: a convolution of shape {tuple(weight.shape)} where training/model.py "
                                 f"has {tuple(conv.weight.shape)}")
            if weight.shape[0] < conv.weight.shape[0]:
                # A head with outputs the base model lacks (a newer class, e.g. quality defects):
                # they start at "not seen" (zero weights, a low bias), never at random guesses
                # that would raise warnings; the base model's outputs keep their weights.
                if norm is not None or conv.bias is None or bias is None:
                    raise SystemExit(f"{onnx_path}: a convolution with fewer channels than training/model.py's")
                rows = weight.shape[0]
                conv.weight[:rows].copy_(weight)
                conv.weight[rows:].zero_()
                conv.bias[:rows].copy_(bias)
                conv.bias[rows:].fill_(NOT_SEEN_LOGIT)
                continue
            conv.weight.copy_(weight)
            if norm is not None:
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
                norm.weight.fill_(1.0)
                norm.bias.copy_(bias if bias is not None else torch.zeros_like(norm.bias))
            elif bias is not None:
                assert conv.bias is not None
                conv.bias.copy_(bias)
            elif conv.bias is not None:
                conv.bias.zero_()
        # The image head's first output is the failure score in every version of the network.
        head_weight = torch.from_numpy(weights["image_head.weight"].copy())
        head_bias = torch.from_numpy(weights["image_head.bias"].copy())
        rows = head_weight.shape[0]
        model.image_head.weight[:rows].copy_(head_weight)
        model.image_head.bias[:rows].copy_(head_bias)
        model.image_head.weight[rows:].zero_()
        model.image_head.bias[rows:].fill_(NOT_SEEN_LOGIT)


def check_against_onnx(model: FailureDetector, onnx_path: Path) -> float:
    """Largest difference of the image score between the rebuilt network and ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[-1]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 3, size, size)).astype(np.float32)
    expected = session.run(None, {session.get_inputs()[0].name: pixels})[2]
    reference = FailureDetector(int(size), pretrained=False)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        got = reference.eval()(torch.from_numpy(pixels))[2].numpy()
    return float(np.abs(got - expected).max())


def onnx_input_size(path: Path) -> int:
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) or 256


def _frames(items: list[dict[str, Any]]) -> list[tuple[Image.Image, int]]:
    return [(Image.open(item["path"]).convert("RGB"), int(item["label"])) for item in items]


def _batch(rng: random.Random, frames: list[tuple[Image.Image, int]], count: int, size: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = [], []
    for image, label in (rng.choice(frames) for _ in range(count)):
        image, _ = augment(rng, image, np.zeros((0, 5), dtype=np.float32))
        array, _ = finish(rng, image, np.zeros((0, 5), dtype=np.float32), size)
        pixels.append(torch.from_numpy(array).permute(2, 0, 1))
        labels.append(label)
    return torch.stack(pixels), torch.tensor(labels, dtype=torch.float32)


def _replay_batch(rng: random.Random, samples: list[Sample], count: int, size: int
                  ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    pixels, targets, flags = [], [], []
    for sample in (rng.choice(samples) for _ in range(count)):
        image, boxes = augment(rng, sample.image, sample.boxes)
        array, boxes = finish(rng, image, boxes, size)
        pixels.append(torch.from_numpy(array).permute(2, 0, 1))
        targets.append(torch.from_numpy(boxes))
        flags.append(sample_flags(sample, boxes))
    return torch.stack(pixels), targets, torch.stack(flags)


def evidence_loss(model: FailureDetector, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-level labels only: BCE on the image score; a negative's cells all toward "no
    failure" (focal, as in training), a positive's most confident cell toward "failure"."""
    cls_logits, _, image_logit = model.forward_raw(images)
    image = F.binary_cross_entropy_with_logits(image_logit[:, 0], labels)
    failure = cls_logits[..., FAILURE]
    negative = labels < 0.5
    cells = failure.new_zeros(())
    if negative.any():
        logits = failure[negative]
        prob = torch.sigmoid(logits)
        cells = cells + (0.75 * prob ** 2 * F.binary_cross_entropy_with_logits(
            logits, torch.zeros_like(logits), reduction="none")).sum(dim=1).mean()
    if (~negative).any():
        strongest = failure[~negative].amax(dim=1)
        cells = cells + F.binary_cross_entropy_with_logits(strongest, torch.ones_like(strongest))
    return image + cells


def heldout_auroc(model: Path, items: list[dict[str, Any]]) -> dict[str, float]:
    from layerfleet.detection import Detector

    detector = Detector(model)
    scores = [detector.detect_one(Path(item["path"]).read_bytes()).score for item in items]
    labels = np.array([bool(item["label"]) for item in items])
    return {"auroc": auroc(np.array(scores), labels), "images": len(items),
            "failure_images": int(labels.sum()), "negative_images": int((~labels).sum())}


def finetune(base: Path, evidence: dict[str, list[dict[str, Any]]], out: Path, *, steps: int, batch: int,
             size: int | None, replay: list[Sample], lr: float, freeze: int, seed: int,
             say: Any = print) -> Path:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    size = size or onnx_input_size(base)
    model = FailureDetector(size, pretrained=False)
    load_onnx_weights(model, base)
    difference = check_against_onnx(model, base)
    if difference > 1e-3:
        raise SystemExit(f"the network rebuilt from {base} differs from it by {difference:.4f} in the image score")
    say(f"weights of {base} loaded (image score within {difference:.1e} of ONNX Runtime)")
    frames = _frames(evidence["train"])
    frozen = [model.backbone._conv_stem, *model.backbone._blocks[:freeze]]
    for module in frozen:
        module.requires_grad_(False)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    optimiser = torch.optim.AdamW([{"params": backbone, "lr": lr * 0.3}, {"params": head, "lr": lr}],
                                  weight_decay=1e-4)
    bases = [group["lr"] for group in optimiser.param_groups]
    # Batch norms keep the folded statistics: batch statistics of a few farm frames would undo them.
    model.eval()
    started = time.time()
    for step in range(steps):
        factor = 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        for group, base_lr in zip(optimiser.param_groups, bases, strict=True):
            group["lr"] = base_lr * factor
        images, labels = _batch(rng, frames, batch, size)
        loss = evidence_loss(model, images, labels)
        if replay:
            replay_images, targets, flags = _replay_batch(rng, replay, max(1, batch // 2), size)
            replay_loss, _ = detection_loss(model, replay_images, targets, flags)
            loss = loss + replay_loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        if (step + 1) % 10 == 0 or step + 1 == steps:
            say(f"step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - started:.0f}s)")
    return export_onnx(model.eval(), out / "model.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the shipped model (ONNX)")
    parser.add_argument("--evidence", type=Path, required=True)
    parser.add_argument("--val-data", type=Path, required=True, help="data set with images/val and labels/val")
    parser.add_argument("--replay-data", type=Path, help="data set whose train split is mixed in (with boxes)")
    parser.add_argument("--replay-limit", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, help="input size to train and export at (default: the base model's)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--freeze", type=int, default=6, help="backbone blocks kept frozen (after the stem)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    evidence = json.loads(args.evidence.read_text())
    if not (args.val_data / "images" / "val").is_dir():
        raise SystemExit(f"no val set at {args.val_data} (images/val)")
    replay: list[Sample] = []
    if args.replay_data is not None and (args.replay_data / "images" / "train").is_dir():
        replay = read_split(args.replay_data, "train", args.replay_limit)
    started = time.time()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    say(f"evidence: {len(evidence['train'])} frames to train on, {len(evidence['heldout'])} held back; "
        f"replay {len(replay)} frames ({sum(has_failure(s.boxes) for s in replay)} failures)")
    candidate = finetune(args.base, evidence, args.out, steps=args.steps, batch=args.batch, size=args.size,
                         replay=replay, lr=args.lr, freeze=args.freeze, seed=args.seed, say=say)
    figures = {
        "val": {"candidate": evaluate(candidate, args.val_data), "shipped": evaluate(args.base, args.val_data)},
        "heldout": {"candidate": heldout_auroc(candidate, evidence["heldout"]),
                    "shipped": heldout_auroc(args.base, evidence["heldout"])},
        "train": {"positives": sum(1 for i in evidence["train"] if i["label"]),
                  "negatives": sum(1 for i in evidence["train"] if not i["label"]),
                  "replay": len(replay), "steps": args.steps, "batch": args.batch,
                  "size": args.size or onnx_input_size(args.base)},
        "seconds": round(time.time() - started, 1),
    }
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
