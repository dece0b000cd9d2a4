"""The reference server's decision rules, checked against hand-worked numbers."""

from __future__ import annotations

import pytest

from layerfleet.detection import decisions
from layerfleet.detection.decisions import PrinterBaseline, PrintScores


def run(ps: list[float], baseline: PrinterBaseline | None = None) -> tuple[PrintScores, PrinterBaseline]:
    scores, base = PrintScores(), baseline or PrinterBaseline()
    for p in ps:
        scores, base = decisions.advance(scores, base, p)
    return scores, base


def test_state_follows_the_reference_formulas() -> None:
    scores, baseline = run([1.0, 0.0, 0.5])
    alpha = 2 / 13
    ewm = 0.0
    for p in (1.0, 0.0, 0.5):
        ewm = alpha * p + (1 - alpha) * ewm
    assert scores.ewm == pytest.approx(ewm)
    assert scores.short_mean == pytest.approx(0.5)  # a plain mean while under 310 frames
    assert baseline.long_mean == pytest.approx(0.5)
    assert (scores.frame, scores.p, baseline.lifetime_frames) == (3, 0.5, 3)


def test_a_new_print_keeps_the_printers_long_mean_only() -> None:
    _, baseline = run([0.2] * 50)
    scores, after = decisions.advance(PrintScores(), baseline, 1.0)
    assert scores.frame == 1 and scores.short_mean == pytest.approx(1.0)
    assert after.long_mean == pytest.approx(0.2 + (1.0 - 0.2) / 51)


def test_rolling_windows_cap_the_divisor() -> None:
    scores = PrintScores(frame=5000, short_mean=0.0)
    baseline = PrinterBaseline(lifetime_frames=100_000, long_mean=0.0)
    scores, baseline = decisions.advance(scores, baseline, 1.0)
    assert scores.short_mean == pytest.approx(1 / 310)
    assert baseline.long_mean == pytest.approx(1 / 7200)


def test_nothing_is_failing_in_the_first_30_frames() -> None:
    scores, baseline = run([5.0] * 29, PrinterBaseline(lifetime_frames=100_000, long_mean=0.0))
    assert not decisions.should_pause(scores, baseline, 1.2)
    scores, baseline = decisions.advance(scores, baseline, 5.0)
    assert scores.frame == 30 and decisions.should_pause(scores, baseline, 1.2)


def test_warning_then_pause_as_spaghetti_grows() -> None:
    clean = PrinterBaseline(lifetime_frames=5000, long_mean=0.05)
    scores, baseline = run([0.05] * 100, clean)
    states = []
    for _ in range(20):
        scores, baseline = decisions.advance(scores, baseline, 0.9)
        states.append("pause" if decisions.should_pause(scores, baseline, 1.0)
                      else "alert" if decisions.should_alert(scores, baseline, 1.0) else "-")
    first_alert, first_pause = states.index("alert"), states.index("pause")
    assert 2 <= first_alert < first_pause <= 12, states
    assert "-" not in states[first_alert:], states


def test_a_noisy_camera_raises_its_own_bar() -> None:
    noisy = PrinterBaseline(lifetime_frames=5000, long_mean=0.8)
    scores, baseline = run([0.9] * 60, noisy)
    assert not decisions.should_alert(scores, baseline, 1.0) and not decisions.should_pause(scores, baseline, 1.0)


def test_sensitivity_scales_the_decision() -> None:
    baseline = PrinterBaseline(lifetime_frames=5000, long_mean=0.0)
    scores = PrintScores(frame=100, p=0.7, ewm=0.7, short_mean=0.05)
    # (0.7 - 0) * s / 1.75: 0.32 at s=0.8 (below the low threshold), 0.48 at s=1.2 (above short rule 0.19)
    assert not decisions.should_pause(scores, baseline, 0.8)
    assert decisions.should_pause(scores, baseline, 1.2)


@pytest.mark.parametrize(("ewm", "expected"), [
    (0.0, 0.0), (0.19, 1 / 6), (0.38, 1 / 3), (0.38 * 1.375, 0.5), (0.665, 2 / 3), (0.665 * 1.25, 5 / 6),
    (0.665 * 1.5, 1.0), (5.0, 1.0), (-1.0, 0.0),
])
def test_normalized_p_zones(ewm: float, expected: float) -> None:
    # short == long: warning level clamps to 0.38, failure level is 0.665
    scores = PrintScores(frame=100, ewm=ewm, short_mean=0.0)
    assert decisions.normalized_p(scores, PrinterBaseline(10, 0.0), 1.0) == pytest.approx(expected, abs=1e-9)


def test_normalized_p_thresholds_move_with_the_short_mean() -> None:
    baseline = PrinterBaseline(10, 0.0)
    # (0.15 - 0) * 3.8 = 0.57: warning at 0.57, failure at 0.9975
    assert decisions.normalized_p(PrintScores(frame=100, ewm=0.57, short_mean=0.15), baseline, 1.0) \
        == pytest.approx(1 / 3)
    assert decisions.normalized_p(PrintScores(frame=100, ewm=0.57, short_mean=0.15), baseline, 1.2) > 1 / 3
