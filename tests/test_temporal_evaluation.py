"""training/temporal.py: the live decision rules over whole prints — what it counts, and that it
runs end to end on the shipped model (one short simulated print of each kind)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from training.temporal import SECONDS_PER_FRAME, PrintOutcome, Watcher, failing_figures, normal_figures, score_all

from layerfleet.detection.runtime import FrameResult

REPO = Path(__file__).resolve().parents[1]


def test_a_steady_clean_print_is_never_warned_nor_paused() -> None:
    outcome = Watcher().watch([0.0] * 720)
    assert outcome.warned_at is None and outcome.paused_at is None
    assert normal_figures([outcome]) == {"prints": 1, "print_hours": 2.0, "false_warnings_per_100h": 0.0,
                                         "false_pauses_per_100h": 0.0}


def test_a_failure_is_paused_after_its_onset_and_the_delay_is_measured() -> None:
    onset = 100
    outcome = Watcher().watch([0.0] * onset + [2.0] * 200, onset=onset)
    assert outcome.paused_at is not None and outcome.warned_at is not None
    assert onset <= outcome.warned_at <= outcome.paused_at < onset + 20
    figures = failing_figures([outcome])
    assert figures["paused_share"] == 1.0
    assert figures["onset_to_pause_p50_s"] == (outcome.paused_at - onset) * SECONDS_PER_FRAME


def test_the_first_30_frames_of_a_print_are_safe_and_the_baseline_carries_over() -> None:
    watcher = Watcher()
    assert watcher.watch([2.0] * 29).paused_at is None  # within the reference's safe frames
    # A camera that always sees p≈0.6 (a logo on the bed) becomes that printer's baseline.
    noisy = Watcher()
    for _ in range(3):
        noisy.watch([0.6] * 720)
    assert noisy.watch([0.6] * 720).paused_at is None


class _Found:
    """A detector whose frames are given: (image score, box confidences)."""

    def __init__(self, frames: list[tuple[float, list[float]]]) -> None:
        self.frames = frames

    def prepare(self, data: bytes) -> int:
        return int(data)

    def run(self, frames: list[int]) -> list[FrameResult]:
        results = []
        for index in frames:
            score, confidences = self.frames[index]
            boxes = [(10.0, 10.0, 5.0, 5.0, c) for c in confidences]
            results.append(FrameResult(score=score, p=sum(confidences), boxes=boxes))
        return results


def test_each_frame_weighs_as_the_server_weighs_it() -> None:
    # The server steps its rules on the larger of the box sum and 2 × the image score
    # (detection.evidence); the box sum alone would miss a failure the image head is sure of.
    detector = _Found([(0.9, [0.1]), (0.0, [0.6, 0.3]), (0.02, [])])
    ps = score_all(detector, [b"0", b"1", b"2"])  # type: ignore[arg-type]
    assert ps == pytest.approx([1.8, 0.9, 0.04])


def test_false_alarms_are_counted_per_100_print_hours() -> None:
    quiet = PrintOutcome(frames=360)  # one hour
    alarmed = PrintOutcome(frames=360, warned_at=50, paused_at=60)
    assert normal_figures([quiet, alarmed])["false_pauses_per_100h"] == 50.0


def test_runs_end_to_end_on_the_shipped_model(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training.temporal", "--printers", "1", "--prints", "1", "--failing", "1",
         "--hours", "0.25", "--extra", str(tmp_path), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["simulated_normal"]["prints"] == 1 and figures["simulated_normal"]["print_hours"] == 0.2
    assert figures["simulated_failing"]["prints"] == 1
