"""Slicing STL parts into G-code with PrusaSlicer's command line (for the Eiger v3 API).

``inspect_stl`` checks and measures an upload; ``slice_stl`` runs PrusaSlicer on it with a
profile (``DEFAULT_PROFILE`` unless the organization has its own) and reads the estimates that
PrusaSlicer writes into the G-code.
"""

from layerfleet.slicer.prusaslicer import (
    DEFAULT_PROFILE,
    GcodeSummary,
    SliceCanceled,
    SlicerError,
    SliceResult,
    SlicerNotFound,
    SlicerTimeout,
    find_prusaslicer,
    parse_duration,
    parse_gcode_summary,
    slice_stl,
)
from layerfleet.slicer.stl import DEFAULT_MAX_BYTES, BadStl, StlInfo, inspect_stl

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_PROFILE",
    "BadStl",
    "GcodeSummary",
    "SliceCanceled",
    "SliceResult",
    "SlicerError",
    "SlicerNotFound",
    "SlicerTimeout",
    "StlInfo",
    "find_prusaslicer",
    "inspect_stl",
    "parse_duration",
    "parse_gcode_summary",
    "slice_stl",
]
