"""Whether a printer's print is being watched by the failure detector, and why not.

The four reasons and their order are those of the Printer object (seed 001).
"""

from __future__ import annotations

from layerfleet.fleet.models import Printer

REASON_DISABLED = "AI failure detection is disabled"
REASON_NO_DETECTION_HOURS = "You have run out of AI Detection Hours"
REASON_NOT_PRINTING = "Printer is not actively printing"
REASON_MUTED = "Alerts are muted for current print"


def is_paused(printer: Printer) -> bool:
    return bool(printer.state_flags.get("paused"))


def not_watching_reason(printer: Printer) -> str | None:
    if not printer.watching_enabled:
        return REASON_DISABLED
    if printer.owner.dh_balance <= 0:
        return REASON_NO_DETECTION_HOURS
    current = printer.current_print
    if current is None or is_paused(printer):
        return REASON_NOT_PRINTING
    if current.alert_muted_at is not None:
        return REASON_MUTED
    return None


def should_watch(printer: Printer) -> bool:
    return not_watching_reason(printer) is None
