"""Train the failure detector from ImageNet weights to an exported ONNX model.

    python -m training.train --out training/runs/main --seed 12 --teacher-seeds 2 3 --distill-weight 0.25
        # the shipped pair from scratch (README): the teachers (seeds 2 and 3, side by side) into
        # training/runs/main/teachers, then the first network taught by them into training/runs/main,
        # the teachers' second network copied to training/runs/main/second-opinion
    python -m training.train --out training/runs/pair --seed 2 --second-opinion-seed 3   # a pair, untaught
    python -m training.train --out /tmp/x --limit 8 --steps 2   # a smoke run

Trains on print-failures and the train groups of print-failures-extra (`training.extra`; its
val groups join val, its holdout groups are left for `training.evaluate`), plus synthetic
samples each epoch (`TrainingSet`: simulator frames, composites, clutter).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import multiprocessing.connection
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch

from layerfleet.detection.imaging import letterbox
from training.averaging import WeightAverage
from training.data import MIXES, Sample, TrainingSet, collate, read_split, with_webcam_normals_repeated
from training.distillation import Teachers
from training.evaluate import auroc
from training.export import export_onnx
from training.extra import DEFAULT_EXTRA, read_extra
from training.model import FailureDetector, detection_loss

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "print-failures"


@torch.no_grad()
def validate(model: FailureDetector, samples: list[Sample], size: int) -> dict[str, float]:
    """Image-level check on val, through the same letterbox as the runtime; the modules' train
    or eval modes are as they were afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    scores, labels, defect_scores = [], [], []
    for start in range(0, len(samples), 16):
        batch = samples[start:start + 16]
        pixels = [torch.from_numpy(letterbox(s.image, size).pixels.astype(np.float32)).permute(2, 0, 1) for s in batch]
        labels.extend(bool(s.failure) for s in batch)
        _, _, image_score, _, defect_score = model(torch.stack(pixels).contiguous(memory_format=torch.channels_last))
        scores.extend(image_score.squeeze(1).tolist())
        defect_scores.extend(defect_score.squeeze(1).tolist())
    for module, training in modes:
        module.train(training)
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    known = [i for i, s in enumerate(samples) if s.defect is not None]
    return {
        "auroc": auroc(np.array(scores), np.array(labels, dtype=bool)),
        "defect_auroc": auroc(np.array([defect_scores[i] for i in known]),
                              np.array([bool(samples[i].defect) for i in known], dtype=bool)),
        "recall@0.5": float(np.mean([s >= 0.5 for s in positives])) if positives else float("nan"),
        "fpr@0.5": float(np.mean([s >= 0.5 for s in negatives])) if negatives else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--extra", type=Path, default=DEFAULT_EXTRA,
                        help="the print-failures-extra set (split by group)")
    parser.add_argument("--no-extra", action="store_true", help="train on print-failures only")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--export-size", type=int, default=256,
                        help="input size of the exported model (trained at --size with scale augmentation)")
    parser.add_argument("--synthetic", type=int, default=480,
                        help="synthetic samples (simulator, composites, clutter) added per epoch")
    parser.add_argument("--mix", choices=sorted(MIXES), default="shipped",
                        help="how the synthetic samples are made (training.data.SyntheticMix)")
    parser.add_argument("--composite-box-weight", type=float,
                        help="weight of composites' cells in the class and box losses (default: the mix's)")
    parser.add_argument("--webcam-normals", type=int, default=1, metavar="TIMES",
                        help="real normal webcam frames seen this many times an epoch (hard negatives)")
    parser.add_argument("--painted-marks", type=float, default=0.0, metavar="SHARE",
                        help="share of training pictures with a made-up arrow or box painted out "
                             "(training.overlays), so painted-out patches are no cue for either class")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                        help="validate and export an exponential moving average of the weights with this decay "
                             "(e.g. 0.998; 0 exports the last step's weights)")
    parser.add_argument("--keep-imagenet-bn", action="store_true",
                        help="the frozen layers' batch norms keep ImageNet's statistics all along (the shipped "
                             "recipe lets them follow the training data from the second epoch)")
    parser.add_argument("--distill-from", type=Path, nargs="+", metavar="MODEL",
                        help="ONNX teachers: one model, or a first model and its second opinion (run as the "
                             "server runs a pair); the failure score also learns their image score "
                             "(training.distillation)")
    parser.add_argument("--distill-weight", type=float, default=0.5, metavar="SHARE",
                        help="share of the failure score's loss learnt from the teachers (with --distill-from)")
    parser.add_argument("--val-every", type=int, metavar="EPOCHS",
                        help="validate every this many epochs, and after the last (0: after the last only; "
                             "default 1, and 0 in --teacher-seeds runs, where it saves ≈ 3 min a network). "
                             "The exported weights are the same either way: validation uses no randomness "
                             "and leaves the model as it found it; only best.pt follows it")
    parser.add_argument("--freeze", type=int, default=3, help="backbone blocks kept frozen (after the stem)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--limit", type=int, help="use only this many images of each split (smoke runs)")
    parser.add_argument("--steps", type=int, help="stop after this many optimiser steps (smoke runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--second-opinion-seed", type=int, metavar="SEED",
                        help="train the second opinion the same way with this seed, into OUT/second-opinion, "
                             "beside the first (each with half of --threads; the shipped pair: --seed 2 "
                             "--second-opinion-seed 3)")
    parser.add_argument("--teacher-seeds", type=int, nargs=2, metavar=("FIRST", "SECOND"),
                        help="first train the teachers, a pair with these seeds (as --second-opinion-seed), "
                             "into OUT/teachers, then this network taught by them (--distill-weight), and copy "
                             "the pair's second network to OUT/second-opinion: the shipped pair from scratch "
                             "in one command (--seed 12 --teacher-seeds 2 3 --distill-weight 0.25)")
    parser.set_defaults(tag="")  # what the console lines start with: which network of a pair
    args = parser.parse_args()
    if not 0.0 <= args.distill_weight <= 1.0:
        parser.error("--distill-weight is a share of the failure score's loss, from 0 to 1")
    if args.teacher_seeds and (args.distill_from or args.second_opinion_seed is not None):
        parser.error("--teacher-seeds trains the teachers and one network taught by them: "
                     "not with --distill-from or --second-opinion-seed")
    if args.val_every is not None and args.val_every < 0:
        parser.error("--val-every is a number of epochs, 0 or more")
    if args.val_every is None:
        args.val_every = 0 if args.teacher_seeds else 1
    if args.teacher_seeds:
        train_taught_pair(args)
    elif args.second_opinion_seed is None:
        train_one(args)
    else:
        train_pair(args)


def train_taught_pair(args: argparse.Namespace) -> None:
    """The shipped recipe from ImageNet weights: the teachers' pair side by side, then the first
    network taught by them, which ships with the teachers' second network as its second opinion."""
    started = time.time()
    teachers = args.out / "teachers"
    first_seed, second_seed = args.teacher_seeds
    train_pair(argparse.Namespace(**{**vars(args), "out": teachers, "seed": first_seed,
                                     "second_opinion_seed": second_seed, "teacher_seeds": None}))
    second_opinion = teachers / "second-opinion" / "model.onnx"
    train_one(argparse.Namespace(**{**vars(args), "distill_from": [teachers / "model.onnx", second_opinion],
                                    "teacher_seeds": None}))
    (args.out / "second-opinion").mkdir(exist_ok=True)
    shutil.copyfile(second_opinion, args.out / "second-opinion" / "model.onnx")
    line = (f"{time.strftime('%H:%M:%S')} the pair is {args.out / 'model.onnx'} with its second opinion "
            f"{args.out / 'second-opinion' / 'model.onnx'}; teachers and student in {time.time() - started:.0f}s")
    print(line, flush=True)
    with (args.out / "train.log").open("a") as log:
        log.write(line + "\n")


def train_pair(args: argparse.Namespace) -> None:
    """Both networks of the pair at once, each with half the threads. One training does not keep
    two cores busy (the data loader's augmentation and small batches leave gaps), so side by side
    they finish sooner than one after the other: 60 steps of each took 79 s, against 2 × 50 s.
    Not on every machine: on 2026-12-05's afternoon one took 102 s alone and two 208 s side by side."""
    threads = max(1, args.threads // 2)
    runs = [argparse.Namespace(**{**vars(args), "threads": threads, "tag": "first "}),
            argparse.Namespace(**{**vars(args), "threads": threads, "tag": "second ",
                                  "seed": args.second_opinion_seed, "out": args.out / "second-opinion"})]
    # Spawned, not forked: a forked PyTorch with threads already started can deadlock.
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=train_one, args=(run,)) for run in runs]
    # A stopped command stops its networks: killed (SIGTERM), the spawned trainings would
    # otherwise go on alone for the rest of their hour, holding the cores and ≈ 7 GB each.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        for process in processes:
            process.start()
        running = list(processes)
        while running:
            multiprocessing.connection.wait([process.sentinel for process in running])
            running = [process for process in running if process.is_alive()]
            if any(process.exitcode for process in processes):
                break  # half a pair is no use: stop the other network's hour now
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            if process.pid is not None:
                process.join()
    failed = [run.out for run, process in zip(runs, processes, strict=True) if process.exitcode != 0]
    if failed:
        raise SystemExit(f"training failed for {', '.join(map(str, failed))} (see its train.log)")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def train_one(args: argparse.Namespace) -> None:
    """One network from ImageNet weights to ``args.out/model.onnx``."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "train.log").open("a")

    def say(message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(args.tag + line, flush=True)
        log.write(line + "\n")
        log.flush()

    train = read_split(args.data, "train", args.limit)
    val = read_split(args.data, "val", args.limit)
    if not args.no_extra:
        train += read_extra(args.extra, "train", args.limit)
        val += read_extra(args.extra, "val", args.limit)
    synthetic = args.synthetic if args.limit is None else min(args.synthetic, 4)
    mix = MIXES[args.mix]
    if args.composite_box_weight is not None:
        mix = dataclasses.replace(mix, box_weight=args.composite_box_weight)
    real = len(train)
    train = with_webcam_normals_repeated(train, args.webcam_normals)
    dataset = TrainingSet(train, args.size, synthetic, args.seed, mix, painted_marks=args.painted_marks)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, collate_fn=collate, num_workers=args.workers,
        drop_last=len(dataset) > args.batch, persistent_workers=args.workers > 0,
    )
    model = FailureDetector(args.size)
    frozen = [model.backbone._conv_stem, model.backbone._bn0, *model.backbone._blocks[: args.freeze]]
    for module in frozen:
        module.requires_grad_(False)
    model = model.to(memory_format=torch.channels_last)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    optimiser = torch.optim.AdamW(
        [{"params": backbone, "lr": args.lr * 0.3}, {"params": head, "lr": args.lr}], weight_decay=1e-4
    )
    average = WeightAverage(model, args.ema) if args.ema > 0 else None
    # In this process: in the data loader's worker they were slower still (2.1 s a step against
    # 1.9 s, and 1.4 s untaught, 2026-12-05): the two cores are busy either way.
    teachers = Teachers(args.distill_from, args.threads) if args.distill_from else None
    steps_per_epoch = max(1, len(loader))
    total = args.steps or args.epochs * steps_per_epoch
    warmup = min(steps_per_epoch, max(1, total // 10))
    bases = [group["lr"] for group in optimiser.param_groups]
    say(f"synthetic mix {args.mix}: {mix}; painted marks {args.painted_marks}; weight average {args.ema or 'off'}; "
        f"frozen batch norms {'ImageNet' if args.keep_imagenet_bn else 'follow the data from epoch 1'}; "
        f"taught by {[str(p) for p in args.distill_from] if teachers else 'the labels alone'}"
        f"{f' ({args.distill_weight} of the failure score)' if teachers else ''}")
    say(f"train {real} images (+ {len(train) - real} repeated normal webcam frames) + {dataset.synthetic} "
        f"synthetic/epoch, val {len(val)}; {total} steps")
    say(f"synthetic per epoch: {json.dumps(dataset.synthetic_counts())}; "
        f"{len(dataset.cutouts)} cut-outs, {len(dataset.webcam_normals)} normal frames to paste on")

    step, best, started = 0, -1.0, time.time()
    model.train()
    for module in frozen:
        module.eval()  # in the first epoch the frozen layers keep their ImageNet batch-norm statistics
    for epoch in range(args.epochs):
        dataset.epoch = epoch
        for images, targets, flags in loader:
            progress = (step - warmup) / max(1, total - warmup)
            factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * progress))
            for group, base in zip(optimiser.param_groups, bases, strict=True):
                group["lr"] = base * factor
            teacher = teachers.image_scores(images) if teachers is not None else None
            loss, parts = detection_loss(model, images.contiguous(memory_format=torch.channels_last), targets, flags,
                                         teacher, args.distill_weight)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            if average is not None:
                average.update(model)
            step += 1
            if step % 20 == 0 or step == total:
                rounded = {k: round(v, 3) for k, v in parts.items()}
                say(f"epoch {epoch} step {step}/{total} loss {loss.item():.3f} {json.dumps(rounded)}")
            if step >= total:
                break
        exported = model if average is None else average.module
        last = step >= total or epoch == args.epochs - 1
        validated = last or (args.val_every > 0 and (epoch + 1) % args.val_every == 0)
        metrics = validate(exported, val, args.size) if validated else None
        if not args.keep_imagenet_bn:
            # The recipe of the shipped model: from the second epoch on, the frozen layers' batch
            # norms follow the training data too (their weights stay frozen). It came from
            # validation putting the whole model back in training mode; kept so that the one
            # command still makes that model.
            model.train()
        checkpoint = {"model": exported.state_dict(), "image_size": args.size, "epoch": epoch, "val": metrics}
        torch.save(checkpoint, args.out / "last.pt")
        if metrics is not None and (metrics["auroc"] >= best or math.isnan(metrics["auroc"])):
            best = metrics["auroc"]
            torch.save(checkpoint, args.out / "best.pt")
        figures = "" if metrics is None else f"; val {json.dumps({k: round(v, 4) for k, v in metrics.items()})}"
        say(f"epoch {epoch} done in {time.time() - started:.0f}s{figures}")
        if last:
            break
    # The final, annealed weights are exported: on val they gave better boxes (AP50) and recall
    # at 1 % false positives than the epoch with the best AUROC, whose lead was one negative.
    final = FailureDetector(args.export_size, pretrained=False)
    final.load_state_dict(torch.load(args.out / "last.pt", weights_only=False)["model"])
    export_onnx(final.eval(), args.out / "model.onnx")
    say(f"exported {args.out / 'model.onnx'}; total {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
