"""What an operator feels: the live decision rules run over whole prints, frame after frame.

    python -m training.temporal [--model PATH [--second-opinion PATH]] [--json]

Per-frame figures (training/evaluate.py) say how often one picture is misjudged; a farm lives
with sequences, where the reference rules (layerfleet.detection.decisions: EWM, rolling means,
the printer's baseline, 30 safe frames) smooth single mistakes away or let a steady one through.
This scores frame sequences one per 10 s, as the server does, with the shipped runtime, and
counts per print the first warning (`should_alert`) and the first pause (`should_pause`):

- **normal prints** — false warnings and false pauses per 100 print-hours:
  simulated prints (simulator.render: a part growing on a bed, one scene per printer, prints of
  one printer in a row so its baseline carries over), and the print-failures-extra set's real
  webcam sequences (EmptyDeck, printers P1 and P2, also each apart: P1 is in the training split,
  P2 never is; frames before 0.85 × the annotated failure onset only). That set keeps ~8 frames
  per timelapse, so each frame stands for ``--hold`` consecutive scored frames (default 15: 2.5
  minutes) — stated beside the figures.
- **failing prints** — simulated prints that turn to spaghetti at a random frame: the share
  paused before they end, and the time from the onset to the pause (p50 / p90 / max).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layerfleet.detection import Detector
from layerfleet.detection.decisions import PrinterBaseline, PrintScores, advance, should_alert, should_pause
from layerfleet.detection.evidence import evidence
from layerfleet.simulator.render import Scene, render_frame
from training.evaluate import add_detector_arguments, detector_from

SECONDS_PER_FRAME = 10.0
SENSITIVITY = 1.0  # the printers' default (detective_sensitivity)
EXTRA_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "print-failures-extra"
BATCH = 8


@dataclass
class PrintOutcome:
    frames: int
    warned_at: int | None = None  # frame index of the first warning
    paused_at: int | None = None
    onset: int | None = None  # failing prints: the first frame with spaghetti

    @property
    def hours(self) -> float:
        return self.frames * SECONDS_PER_FRAME / 3600


@dataclass
class Watcher:
    """One printer's decision state across its prints, as watching.frames keeps it."""

    baseline: PrinterBaseline = field(default_factory=PrinterBaseline)

    def watch(self, ps: list[float], onset: int | None = None) -> PrintOutcome:
        outcome = PrintOutcome(frames=len(ps), onset=onset)
        scores = PrintScores()
        for index, p in enumerate(ps):
            scores, self.baseline = advance(scores, self.baseline, p)
            if outcome.paused_at is None and should_pause(scores, self.baseline, SENSITIVITY):
                outcome.paused_at = index
            if outcome.warned_at is None and (should_alert(scores, self.baseline, SENSITIVITY)
                                              or outcome.paused_at is not None):
                outcome.warned_at = index
            if outcome.paused_at is not None:
                break  # a paused print is over for the detector (the operator decides)
        return outcome


def score_all(detector: Detector, jpegs: list[bytes]) -> list[float]:
    ps: list[float] = []
    for start in range(0, len(jpegs), BATCH):
        frames = [detector.prepare(data) for data in jpegs[start:start + BATCH]]
        ps.extend(evidence(result, result.boxes) for result in detector.run(frames))  # as the server weighs them
    return ps


def _jpeg(image: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)  # type: ignore[attr-defined]
    return out.getvalue()


def simulated_print(scene: Scene, frames: int, seed: int, onset: int | None) -> list[bytes]:
    """One print's frames; from ``onset`` on, spaghetti grows to full over 30 frames (5 min)."""
    jpegs = []
    for index in range(frames):
        spaghetti = 0.0 if onset is None or index < onset else min(1.0, (index - onset + 1) / 30)
        image, _ = render_frame(scene, (index + 1) / frames, spaghetti=spaghetti, seed=seed * 100_003 + index)
        jpegs.append(_jpeg(image))
    return jpegs


def simulated(detector: Detector, printers: int, prints_per_printer: int, hours: float, failing: int,
              seed: int) -> tuple[list[PrintOutcome], list[PrintOutcome]]:
    rng = random.Random(seed)
    frames = int(hours * 3600 / SECONDS_PER_FRAME)
    normal: list[PrintOutcome] = []
    failed: list[PrintOutcome] = []
    for _ in range(printers):
        scene = Scene.random(rng)
        watcher = Watcher()
        for _ in range(prints_per_printer):
            print_seed = rng.randrange(1 << 30)
            normal.append(watcher.watch(score_all(detector, simulated_print(scene, frames, print_seed, None))))
        for _ in range(failing):
            onset = rng.randrange(frames // 5, frames * 4 // 5)
            print_seed = rng.randrange(1 << 30)
            ps = score_all(detector, simulated_print(scene, frames, print_seed, onset))
            failed.append(watcher.watch(ps, onset=onset))
    return normal, failed


def webcam_sequences(data: Path) -> dict[str, dict[str, list[tuple[int, Path]]]]:
    """printer → sequence → [(frame number, image)] for the extra set's normal webcam frames."""
    found: dict[str, dict[str, list[tuple[int, Path]]]] = defaultdict(lambda: defaultdict(list))
    with (data / "manifest.csv").open(newline="") as manifest:
        for row in csv.DictReader(manifest):
            if row["kind"] != "webcam" or row["label"] != "normal" or not row["group"].startswith("emptydeck:"):
                continue
            match = re.search(r"data/(P\d)/([^/]+)/masks/frame_(\d+)_frame\.jpg", row["source_path"])
            if match:
                printer, sequence, number = match[1], match[2], int(match[3])
                found[printer][sequence].append((number, data / row["file"]))
    return {printer: {name: sorted(frames) for name, frames in sequences.items()}
            for printer, sequences in found.items()}


def webcam(detector: Detector, by_printer: dict[str, dict[str, list[tuple[int, Path]]]], hold: int
           ) -> dict[str, list[PrintOutcome]]:
    """printer → its sequences' outcomes (one decision state per printer, as on a farm);
    ``by_printer`` is `webcam_sequences`' answer."""
    outcomes: dict[str, list[PrintOutcome]] = {}
    for printer, sequences in sorted(by_printer.items()):
        watcher = Watcher()
        for frames in sequences.values():
            ps = score_all(detector, [path.read_bytes() for _, path in frames])
            outcomes.setdefault(printer, []).append(watcher.watch([p for p in ps for _ in range(hold)]))
    return outcomes


def per_100_hours(outcomes: list[PrintOutcome], attribute: str) -> float:
    hours = sum(o.hours for o in outcomes)
    count = sum(getattr(o, attribute) is not None for o in outcomes)
    return 100 * count / hours if hours else float("nan")


def normal_figures(outcomes: list[PrintOutcome]) -> dict[str, float]:
    return {
        "prints": len(outcomes),
        "print_hours": round(sum(o.hours for o in outcomes), 1),
        "false_warnings_per_100h": per_100_hours(outcomes, "warned_at"),
        "false_pauses_per_100h": per_100_hours(outcomes, "paused_at"),
    }


def failing_figures(outcomes: list[PrintOutcome]) -> dict[str, float]:
    delays = np.array([(o.paused_at - o.onset) * SECONDS_PER_FRAME for o in outcomes
                       if o.paused_at is not None and o.onset is not None and o.paused_at >= o.onset])
    early = sum(o.paused_at is not None and o.onset is not None and o.paused_at < o.onset for o in outcomes)
    return {
        "prints": len(outcomes),
        "paused_share": float(len(delays) / len(outcomes)) if outcomes else float("nan"),
        "paused_before_onset": int(early),
        "onset_to_pause_p50_s": float(np.percentile(delays, 50)) if len(delays) else float("nan"),
        "onset_to_pause_p90_s": float(np.percentile(delays, 90)) if len(delays) else float("nan"),
        "onset_to_pause_max_s": float(delays.max()) if len(delays) else float("nan"),
    }


def temporal_figures(detector: Detector, extra: Path, *, printers: int = 6, prints: int = 2, failing: int = 2,
                     hours: float = 2.0, hold: int = 15, seed: int = 1) -> dict[str, object]:
    """Every figure of the module's docstring, for one detector (``main``'s defaults)."""
    started = time.perf_counter()
    normal, failed = simulated(detector, printers, prints, hours, failing, seed)
    figures: dict[str, object] = {
        "model": str(detector.model_path.name),
        "second_opinion": detector.second_opinion and detector.second_opinion.name,
        "simulated_normal": normal_figures(normal),
        "simulated_failing": failing_figures(failed),
    }
    if (extra / "manifest.csv").is_file():
        # Printers apart too: the extra set's split trains on P1 and holds P2 back (training.extra).
        asked_before = detector.second_opinions
        sequences = webcam_sequences(extra)
        by_printer = webcam(detector, sequences, hold)
        every = [outcome for outcomes in by_printer.values() for outcome in outcomes]
        frames = sum(len(sequence) for of_printer in sequences.values() for sequence in of_printer.values())
        # What a second opinion costs on normal prints: the share of their frames it was asked on.
        asked = (detector.second_opinions - asked_before) / max(1, frames) if detector.second_opinion else None
        figures["webcam_normal"] = {**normal_figures(every), "hold": hold, "second_opinion_share": asked}
        for printer, outcomes in by_printer.items():
            figures[f"webcam_normal_{printer}"] = {**normal_figures(outcomes), "hold": hold}
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_detector_arguments(parser)
    parser.add_argument("--extra", type=Path, default=EXTRA_DATA, help="the print-failures-extra data set")
    parser.add_argument("--printers", type=int, default=6, help="simulated printers (one scene each)")
    parser.add_argument("--prints", type=int, default=2, help="normal prints per simulated printer")
    parser.add_argument("--failing", type=int, default=2, help="failing prints per simulated printer")
    parser.add_argument("--hours", type=float, default=2.0, help="length of a simulated print")
    parser.add_argument("--hold", type=int, default=15, help="scored frames each webcam frame stands for")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = temporal_figures(detector_from(args, parser), args.extra, printers=args.printers,
                               prints=args.prints, failing=args.failing, hours=args.hours, hold=args.hold,
                               seed=args.seed)
    if args.json:
        print(json.dumps(figures))
        return
    for name, value in figures.items():
        if isinstance(value, dict):
            print(name)
            for key, number in value.items():
                print(f"  {key:28s} {number:.3f}" if isinstance(number, float) else f"  {key:28s} {number}")
        else:
            print(f"{name:30s} {value}")


if __name__ == "__main__":
    main()
