"""Mainsail's and Fluidd's preheat presets, read as OctoPrint's temperature profiles."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from layerfleet.printer_agent.frontend_presets import MAX_PRESETS, fluidd_profiles, mainsail_profiles

# As Mainsail 2.x stores them (namespace "mainsail", key "presets").
MAINSAIL_VALUE = {
    "presets": {
        "6b1c": {"name": "PLA", "gcode": "", "values": {
            "extruder": {"bool": True, "type": "heater", "value": 215},
            "heater_bed": {"bool": True, "type": "heater", "value": 60},
        }},
        "9d0e": {"name": "ABS", "gcode": "", "values": {
            "extruder": {"bool": True, "type": "heater", "value": 245},
            "heater_bed": {"bool": True, "type": "heater", "value": 100},
            "heater_generic chamber": {"bool": True, "type": "heater", "value": 45},
        }},
        "a1f2": {"name": "Bed only", "gcode": "", "values": {
            "extruder": {"bool": False, "type": "heater", "value": 200},
            "heater_bed": {"bool": True, "type": "heater", "value": "70.5"},
        }},
        "b3c4": {"name": "Purge", "gcode": "G28\nPURGE_LINE", "values": {
            "extruder": {"bool": True, "type": "heater", "value": 230},
        }},
    },
    "cooldownGcode": "TURN_OFF_HEATERS",
}

# As Fluidd stores them (namespace "fluidd", key "uiSettings", among its other settings).
FLUIDD_VALUE = {
    "general": {"instanceName": "voron"},
    "dashboard": {"tempPresets": [
        {"id": "x1", "name": "PETG", "gcode": "", "values": {
            "extruder": {"value": 240, "type": "heater", "active": True},
            "heater_bed": {"value": 80, "type": "heater", "active": True},
            "temperature_fan exhaust": {"value": 40, "type": "fan", "active": True},
        }},
        {"id": "x2", "name": "Off", "gcode": "", "values": {
            "extruder": {"value": 0, "type": "heater", "active": False},
        }},
    ]},
}


def test_mainsail_presets_become_octoprint_profiles() -> None:
    assert mainsail_profiles(MAINSAIL_VALUE) == [
        {"name": "PLA", "extruder": 215, "bed": 60},
        {"name": "ABS", "extruder": 245, "bed": 100, "chamber": 45},
        {"name": "Bed only", "bed": 70.5},  # an unticked heater is left as it is, not set to 0
    ]  # "Purge" runs G-code a preheat from the server would not run: not sent


def test_fluidd_presets_become_octoprint_profiles() -> None:
    # Fans and other heaters have no place in a profile; a preset that sets nothing is dropped.
    assert fluidd_profiles(FLUIDD_VALUE) == [{"name": "PETG", "extruder": 240, "bed": 80}]


def test_garbled_targets_are_not_sent() -> None:
    value = {"presets": {str(i): {"name": f"p{i}", "values": {"extruder": {"bool": True, "value": v}}}
                         for i, v in enumerate(["hot", float("nan"), -5, 9000, True, None, [215], "210"])}}
    assert mainsail_profiles(value) == [{"name": "p7", "extruder": 210}]


def test_no_more_presets_than_the_server_keeps() -> None:
    value = {"presets": {str(i): {"name": f"p{i}", "values": {"extruder": {"bool": True, "value": 200}}}
                         for i in range(MAX_PRESETS + 10)}}
    assert len(mainsail_profiles(value)) == MAX_PRESETS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["presets", "dashboard", "tempPresets", "name", "gcode", "values",
                                      "extruder", "heater_bed", "value", "bool", "active", "x"]),
                      children, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_any_stored_value_reads_as_valid_profiles_or_none(value: Any) -> None:
    # Anything a front end (or a user with the database API) stored is read without an error.
    for read in (mainsail_profiles, fluidd_profiles):
        for profile in read(value):
            assert isinstance(profile["name"], str) and profile["name"]
            targets = {k: v for k, v in profile.items() if k != "name"}
            assert targets and set(targets) <= {"extruder", "bed", "chamber"}
            assert all(isinstance(t, int | float) and 0 <= t <= 500 for t in targets.values())
