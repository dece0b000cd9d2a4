"""From per-frame detections to decisions: the reference server's rules, exactly.

Per print the state is the frame's ``p`` (sum of box confidences), its exponentially weighted
mean, and a short rolling mean over the print; per printer a long rolling mean over its whole
life is the baseline noise of that camera. A print is failing when the smoothed ``p`` stands
far enough above the printer's baseline, and more so than its own recent history explains.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

EWM_SPAN = 12
EWM_ALPHA = 2 / (EWM_SPAN + 1)
ROLLING_WIN_SHORT = 310
ROLLING_WIN_LONG = 7200
THRESHOLD_LOW = 0.38
THRESHOLD_HIGH = 0.78
INIT_SAFE_FRAME_NUM = 30
ROLLING_MEAN_SHORT_MULTIPLE = 3.8
ESCALATING_FACTOR = 1.75
VISUALIZATION_THRESH = 0.2
MIN_SECONDS_BETWEEN_FRAMES = 10.0


@dataclass(frozen=True)
class PrintScores:
    """The detection state of one print (reset when a print starts)."""

    frame: int = 0  # frames scored in this print
    p: float = 0.0
    ewm: float = 0.0
    short_mean: float = 0.0


@dataclass(frozen=True)
class PrinterBaseline:
    """The printer's long-run mean of p; never reset, carried across prints."""

    lifetime_frames: int = 0
    long_mean: float = 0.0


def advance(scores: PrintScores, baseline: PrinterBaseline, p: float) -> tuple[PrintScores, PrinterBaseline]:
    """The state after one more frame with ``p``."""
    # The first frame of a print seeds the EWM with 0 (as the reference's state starts at 0).
    ewm = EWM_ALPHA * p + (1 - EWM_ALPHA) * scores.ewm
    short_mean = scores.short_mean + (p - scores.short_mean) / min(ROLLING_WIN_SHORT, scores.frame + 1)
    long_mean = baseline.long_mean + (p - baseline.long_mean) / min(ROLLING_WIN_LONG, baseline.lifetime_frames + 1)
    return (
        replace(scores, frame=scores.frame + 1, p=p, ewm=ewm, short_mean=short_mean),
        PrinterBaseline(lifetime_frames=baseline.lifetime_frames + 1, long_mean=long_mean),
    )


def is_failing(scores: PrintScores, baseline: PrinterBaseline, sensitivity: float, escalating_factor: float) -> bool:
    if scores.frame < INIT_SAFE_FRAME_NUM:
        return False
    adjusted = (scores.ewm - baseline.long_mean) * sensitivity / escalating_factor
    if adjusted < THRESHOLD_LOW:
        return False
    if adjusted > THRESHOLD_HIGH:
        return True
    return adjusted > (scores.short_mean - baseline.long_mean) * ROLLING_MEAN_SHORT_MULTIPLE


def should_pause(scores: PrintScores, baseline: PrinterBaseline, sensitivity: float) -> bool:
    return is_failing(scores, baseline, sensitivity, ESCALATING_FACTOR)


def should_alert(scores: PrintScores, baseline: PrinterBaseline, sensitivity: float) -> bool:
    """A warning: failing at the plain level but not (yet) at the escalated one."""
    return not should_pause(scores, baseline, sensitivity) and is_failing(scores, baseline, sensitivity, 1.0)


def normalized_p(scores: PrintScores, baseline: PrinterBaseline, sensitivity: float) -> float:
    """The 0–1 gauge: [0, ⅓) below the warning level, [⅓, ⅔) up to the failure level, then
    to 1 at 1.5 × the failure level."""
    warning = min(THRESHOLD_HIGH, max(THRESHOLD_LOW, (scores.short_mean - baseline.long_mean)
                                      * ROLLING_MEAN_SHORT_MULTIPLE))
    failure = warning * ESCALATING_FACTOR
    x = (scores.ewm - baseline.long_mean) * sensitivity
    if x <= 0:
        return 0.0
    if x < warning:
        return x / warning / 3
    if x < failure:
        return 1 / 3 + (x - warning) / (failure - warning) / 3
    return min(1.0, 2 / 3 + (x - failure) / (failure * 0.5) / 3)


def gauge_zone(normalized_p: float) -> str:
    """The gauge's zone: "green" below the warning level, "yellow" up to the failure level,
    "red" beyond (thirds of :func:`normalized_p`, as the reference's gauge colours them)."""
    if normalized_p < 1 / 3:
        return "green"
    if normalized_p < 2 / 3:
        return "yellow"
    return "red"
