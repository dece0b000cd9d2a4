"""The cost of batches that mix organizations' models (fine-tuning per farm, docs/model.md).

The watching pipeline scores a batch of frames of many printers; when organizations use their own
fine-tuned models, `detection.model_choice.ModelChoice` splits the batch by model and runs one
smaller batch per model. This measures a batch of 8 640×480 JPEGs (decode included) scored with
1, 2, 4 and 8 different models (copies of the shipped file: the same work per frame as a
fine-tuned model of the same size), and the memory each loaded model adds.

    python bench/mixed_batches.py [--repeats 40] [--threads 1] [--batch 8]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from layerfleet.detection import Detector
from layerfleet.detection.model_choice import ModelChoice
from layerfleet.detection.runtime import shipped_model_path
from layerfleet.simulator.render import Scene, render_frame


def frames(count: int) -> list[bytes]:
    out = []
    for seed in range(count):
        rng = random.Random(seed)
        image, _ = render_frame(Scene.random(rng), 0.5, spaghetti=0.5 if seed % 2 else 0.0, seed=seed)
        buffer = io.BytesIO()
        image.resize((640, 480)).save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    pictures = frames(args.batch)
    process = psutil.Process(os.getpid())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in range(args.batch):
            shutil.copy(shipped_model_path(), root / f"org{n}.onnx")
        # The first network alone, like the organizations' copies: what mixing sessions costs, not
        # what the shipped second opinion adds (bench/detect_speed.py).
        shipped = Detector(shipped_model_path(), threads=args.threads)
        choice = ModelChoice(None, root, threads=args.threads)  # type: ignore[arg-type]  # no database here
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; batch {args.batch}, "
              f"{args.threads} thread(s), {args.repeats} repeats; ms per frame (median of batches), decode included")
        # (models, batch, groups, models loaded, MB per model, ms per frame of each repeat)
        configurations: list[tuple[int, list[tuple[int, bytes]], dict[Path | None, list[int]], int, float,
                                   list[float]]] = []
        for models in (1, 2, 4, 8):
            if models > args.batch:
                break
            groups: dict[Path | None, list[int]] = {}
            for index in range(args.batch):
                model = index % models
                groups.setdefault(None if model == 0 else root / f"org{model}.onnx", []).append(index)
            batch = [(index % models, data) for index, data in enumerate(pictures)]
            loaded = len(choice._detectors)
            before = process.memory_info().rss
            choice.score_grouped(shipped, batch, groups)  # loads the new models (and warms them up)
            added = len(choice._detectors) - loaded
            per_model = (process.memory_info().rss - before) / max(1, added) / 1e6
            configurations.append((models, batch, groups, added, per_model, []))
        # Round-robin, so that other work on the machine weighs on every configuration alike.
        for _ in range(args.repeats):
            for _, batch, groups, _, _, times in configurations:
                started = time.perf_counter()
                choice.score_grouped(shipped, batch, groups)
                times.append((time.perf_counter() - started) * 1000 / args.batch)
        baseline = statistics.median(configurations[0][5])
        for models, _, _, added, per_model, times in configurations:
            median = statistics.median(times)
            memory = f"; +{per_model:.0f} MB per model loaded" if models > 1 and added else ""
            print(f"{models} model(s) in a batch of {args.batch}: {median:6.2f} ms/frame "
                  f"({median / baseline:.2f}×){memory}")

if __name__ == "__main__":
    main()
