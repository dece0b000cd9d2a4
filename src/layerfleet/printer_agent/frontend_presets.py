"""The preheat presets a Klipper printer's web front end keeps in Moonraker's database.

Mainsail and Fluidd each store their own list there (Klipper itself has none). The agent sends
them as OctoPrint's temperature profiles (`settings.temperature.profiles`, each a name with
`extruder`, `bed` and, where set, `chamber` targets): the protocol speaks OctoPrint's words, so
the server holds a Klipper printer's presets as it holds an OctoPrint printer's.
"""

from __future__ import annotations

import math
from typing import Any

# Where each front end keeps its presets: (namespace, key) in Moonraker's database.
MAINSAIL = ("mainsail", "presets")
FLUIDD = ("fluidd", "uiSettings")

MAX_PRESETS = 50  # the server keeps no more (agents.lifecycle.MAX_TEMP_PROFILES)
MAX_NAME = 100
MAX_TARGET = 500.0  # °C; above any heater's range, so a garbled value is not sent as a target

# Klipper's heater names → OctoPrint's profile keys.
PROFILE_KEYS = {
    "extruder": "extruder",
    "heater_bed": "bed",
    "heater_generic chamber": "chamber",
    "temperature_fan chamber": "chamber",
}


def mainsail_profiles(value: Any) -> list[dict[str, Any]]:
    """Mainsail's `presets` item: `{"presets": {id: {name, gcode, values: {heater: {bool, value}}}}}`."""
    presets = value.get("presets") if isinstance(value, dict) else None
    if not isinstance(presets, dict):
        return []
    return _profiles(presets.values(), active_flag="bool")


def fluidd_profiles(value: Any) -> list[dict[str, Any]]:
    """Fluidd's `uiSettings` item: `{"dashboard": {"tempPresets": [{name, gcode, values: {heater:
    {active, value}}}]}}`, among its other settings."""
    dashboard = value.get("dashboard") if isinstance(value, dict) else None
    presets = dashboard.get("tempPresets") if isinstance(dashboard, dict) else None
    if not isinstance(presets, list):
        return []
    return _profiles(presets, active_flag="active")


def _profiles(presets: Any, *, active_flag: str) -> list[dict[str, Any]]:
    profiles: list[dict[str, Any]] = []
    for preset in presets:
        profile = _profile(preset, active_flag)
        if profile is not None:
            profiles.append(profile)
        if len(profiles) == MAX_PRESETS:
            break
    return profiles


def _profile(preset: Any, active_flag: str) -> dict[str, Any] | None:
    if not isinstance(preset, dict):
        return None
    name = preset.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    gcode = preset.get("gcode")
    if isinstance(gcode, str) and gcode.strip():
        # A preset that also runs G-code does more than set temperatures; sent as a profile, a
        # preheat from the server would do only half of it (the reference agent skips them too).
        return None
    values = preset.get("values")
    if not isinstance(values, dict):
        return None
    profile: dict[str, Any] = {"name": name.strip()[:MAX_NAME]}
    for heater, key in PROFILE_KEYS.items():
        target = _target(values.get(heater), active_flag)
        if target is not None:
            profile[key] = target
    # A preset that sets none of the heaters a profile names has nothing to preheat.
    return profile if len(profile) > 1 else None


def _target(setting: Any, active_flag: str) -> float | None:
    if not isinstance(setting, dict) or setting.get(active_flag, True) is False:
        return None  # the front end leaves an unticked heater as it is
    value = setting.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        target = float(value)
    except ValueError:
        return None
    if not math.isfinite(target) or not 0 <= target <= MAX_TARGET:
        return None
    return int(target) if target.is_integer() else target
