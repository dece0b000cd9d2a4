"""From one picture's score to what a PrintWatch client acts on.

Each device keeps the scores of its current print. They are smoothed over the client's own
window, ``buffer_length`` pictures (16 by default: about 160 s at one picture per 10 s), and
pictures not taken yet count as 0, so a new print needs a run of bad pictures, not one, to reach a
level. That matters because the clients act on ``levels`` by themselves: the OctoPrint plugin
pauses as soon as ``levels[1]`` is true (and its user enabled pausing).

``smas`` is ``[[short, ewma, long]]``, as the clients read it (``smas[0]``):

- ``short``: mean of the last ``buffer_length`` scores; ``levels`` compare it with ``thresholds``;
- ``ewma``: exponentially weighted mean with a span of ``buffer_length``: it follows a change sooner;
- ``long``: mean of the last 4 × ``buffer_length`` scores, the span the clients' charts show.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HISTORY_WINDOWS = 4  # the clients keep 4 × buffer_length scores; so does the device


class Action(enum.StrEnum):
    """What the service tells a client to do to its print (the clients also know "resume")."""

    PAUSE = "pause"
    CANCEL = "cancel"


@dataclass(frozen=True)
class Smoothed:
    short: float
    ewma: float
    long: float


def remember(history: Sequence[float], score: float, buffer_length: int) -> list[float]:
    """The history with ``score`` added, cut to what any window needs (oldest first)."""
    return [*history, round(score, 4)][-HISTORY_WINDOWS * buffer_length:]


def _padded_mean(history: Sequence[float], window: int) -> float:
    return sum(history[-window:]) / window


def smooth(history: Sequence[float], buffer_length: int) -> Smoothed:
    alpha = 2 / (buffer_length + 1)
    ewma = 0.0  # starts from "no failure", as the padded means do
    for score in history:
        ewma = alpha * score + (1 - alpha) * ewma
    return Smoothed(
        short=_padded_mean(history, buffer_length),
        ewma=ewma,
        long=_padded_mean(history, HISTORY_WINDOWS * buffer_length),
    )


def levels(smoothed: Smoothed, thresholds: tuple[float, float]) -> tuple[bool, bool]:
    """[notify, action]: whether the smoothed score has reached each threshold."""
    notify, action = thresholds
    return smoothed.short >= notify, smoothed.short >= action


def defect_share(history: Sequence[float], buffer_length: int, conf: float) -> float:
    """The share of the window's pictures that showed a defect at confidence ``conf``."""
    return sum(1 for score in history[-buffer_length:] if score >= conf) / buffer_length


def action_for(settings: Mapping[str, Any] | None) -> Action | None:
    """What the client's user asked for on a failure, as its heartbeat told us; a client that
    never sent its settings is asked to pause, the action that loses nothing."""
    if settings is None:
        return Action.PAUSE
    if settings.get("cancel_print") is True:
        return Action.CANCEL
    if settings.get("pause_print") is True:
        return Action.PAUSE
    return None


def decide_action(
    *,
    reached: tuple[bool, bool],
    share: float,
    buffer_percent: float,
    already_acted: bool,
    settings: Mapping[str, Any] | None,
) -> Action | None:
    """Act once per print, when the smoothed score has reached the action threshold and at
    least ``buffer_percent`` % of the window's pictures showed a defect. Once only, so that a print
    its user resumed (a false alarm) is not stopped again by the same evidence."""
    if already_acted or not reached[1] or share * 100 < buffer_percent:
        return None
    return action_for(settings)
