"""Watching, end to end with real processes: `layerfleet serve` scoring with the shipped model,
and `layerfleet simulate` printers: one turns to spaghetti and must be paused with its pause
settings, one prints 200 frames cleanly, one is muted, one belongs to an account without
detection hours."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from test_cli_and_startup import Server, layerfleet

SCORING_INTERVAL = "0.2"
PICTURE_INTERVAL = "0.25"
PAUSE_SETTINGS = {"retract_on_pause": 4.0, "lift_z_on_pause": 7.5, "tools_off_on_pause": True,
                  "bed_off_on_pause": True}


class Simulator:
    """`layerfleet simulate` in the background, its log collected line by line."""

    def __init__(self, url: str, token: str, state: Path, name: str, *extra: str) -> None:
        env = {**os.environ, "LAYERFLEET_LOG_LEVEL": "info"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "layerfleet", "simulate", "--server", url, "--token", token, "--printers", "1",
             "--speed", "10", "--print-minutes", "20-20", "--picture-interval", PICTURE_INTERVAL,
             "--state", str(state), "--name", name, *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def find(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=20)
        self._reader.join(timeout=5)
        return "".join(self.lines)


def wait_for(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    data_dir = tmp_path_factory.mktemp("watching-e2e")
    os.environ["LAYERFLEET_DETECTION_INTERVAL_SECONDS"] = SCORING_INTERVAL
    try:
        with Server(data_dir) as running:
            yield running, data_dir
    finally:
        os.environ.pop("LAYERFLEET_DETECTION_INTERVAL_SECONDS", None)


def test_watching_with_real_processes(server: tuple[Server, Path], tmp_path: Path) -> None:
    running, data_dir = server
    token = layerfleet(data_dir, "token", "create", "admin@example.com").stdout.strip()
    created = layerfleet(data_dir, "createuser", "empty@example.com", "--password", "no-hours-1",
                         "--organization", "No hours farm", "--admin")
    assert created.returncode == 0, created.stderr
    drained = layerfleet(data_dir, "hours", "grant", "empty@example.com", "-100")
    assert "0.00 AI detection hours" in drained.stdout, drained.stdout + drained.stderr
    broke_token = layerfleet(data_dir, "token", "create", "empty@example.com").stdout.strip()

    api = httpx.Client(base_url=running.url, headers={"Authorization": f"Token {token}"}, timeout=10)
    broke_api = httpx.Client(base_url=running.url, headers={"Authorization": f"Token {broke_token}"}, timeout=10)
    simulators = [
        Simulator(running.url, token, tmp_path / "failing.json", "Failing", "--fail-rate", "1", "--seed", "11"),
        Simulator(running.url, token, tmp_path / "clean.json", "Clean", "--seed", "12"),
        Simulator(running.url, token, tmp_path / "muted.json", "Muted", "--seed", "13"),
        Simulator(running.url, broke_token, tmp_path / "broke.json", "Broke", "--seed", "14"),
    ]
    try:
        try:
            printers = wait_for(lambda: _by_name(api) if len(_by_name(api)) == 3 else None, 60, "three printers")
        except AssertionError:
            raise AssertionError("".join(simulators[0].lines[-30:])) from None
        failing, clean, muted = printers["Failing 1"], printers["Clean 1"], printers["Muted 1"]
        assert api.patch(f"/api/v1/printers/{failing['id']}/", json=PAUSE_SETTINGS).status_code == 200

        # The muted printer: scored for a while, then muted; scoring stops.
        muted_print = wait_for(lambda: _print_with_frames(api, muted["id"], 10), 90, "the muted printer's frames")
        assert api.post(f"/api/v1/printers/{muted['id']}/mute_current_print/").json()["succeeded"] is True
        time.sleep(1.0)  # a frame already claimed may still land
        frozen = len(_frames(api, muted_print))
        time.sleep(3.0)
        assert len(_frames(api, muted_print)) == frozen
        assert api.get(f"/api/v1/printers/{muted['id']}/").json()["not_watching_reason"] == \
            "Alerts are muted for current print"

        # The failing printer: paused by the detector within a few frames of the failure.
        alert = wait_for(lambda: _alerts(api, failing["id"], kind="FAILURE"), 150, "a FAILURE alert")[0]
        assert alert["paused"] is True
        injected = simulators[0].find(r"failure injected at ([0-9.]+)")
        assert injected, "the simulator did not inject its failure"
        pause_line = wait_for(lambda: simulators[0].find(r"command pause (\{.*\}) from system"), 15,
                              "the agent receiving the pause")
        assert pause_line[1] == '{"bed_off": true, "lift_z": 7.5, "retract": 4.0, "tools_off": true}'
        failed_print = api.get(f"/api/v1/printers/{failing['id']}/").json()["current_print"]
        assert failed_print["alerted_at"] and failed_print["paused_at"]
        frames = _frames(api, failed_print["id"])
        assert len(frames) >= 30
        after_failure = [f for f in frames if _epoch(f["time"]) >= float(injected[1])]
        frames_to_alert = [f for f in after_failure if _epoch(f["time"]) <= _epoch(alert["created_at"])]
        assert 1 <= len(frames_to_alert) <= 12, [(f["frame_number"], f["p"]) for f in after_failure]
        wait_for(lambda: _state(api, failing["id"]) == "Paused", 20, "the simulated printer to report Paused")

        # The clean printer: 200 scored frames, no alert.
        clean_print = wait_for(lambda: _print_with_frames(api, clean["id"], 200), 150, "200 clean frames")
        assert _alerts(api, clean["id"]) == []
        assert max(f["normalized_p"] for f in _frames(api, clean_print)) < 1 / 3

        # The account without detection hours: printing, not watched, and says why.
        broke = wait_for(lambda: _printing(broke_api), 60, "the printer without hours to print")
        assert broke["not_watching_reason"] == "You have run out of AI Detection Hours"
        assert _frames(broke_api, broke["current_print"]["id"]) == []
    finally:
        logs = [s.stop() for s in simulators]
        api.close()
        broke_api.close()
    assert all("Traceback" not in log for log in logs), logs


def _by_name(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in api.get("/api/v1/printers/").json()}


def _frames(api: httpx.Client, print_id: int) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = api.get(f"/api/v1/prints/{print_id}/prediction_json").json()
    return answer


def _print_with_frames(api: httpx.Client, printer_id: int, count: int) -> int | None:
    current = api.get(f"/api/v1/printers/{printer_id}/").json()["current_print"]
    if current and len(_frames(api, current["id"])) >= count:
        return int(current["id"])
    return None


def _alerts(api: httpx.Client, printer_id: int, kind: str | None = None) -> list[dict[str, Any]]:
    found = api.get("/api/v1/alerts/", params={"printer_id": printer_id}).json()
    return [a for a in found if kind is None or a["kind"] == kind]


def _state(api: httpx.Client, printer_id: int) -> str | None:
    status = api.get(f"/api/v1/printers/{printer_id}/").json().get("status") or {}
    text: str | None = status.get("state", {}).get("text")
    return text


def _printing(api: httpx.Client) -> dict[str, Any] | None:
    for printer in api.get("/api/v1/printers/").json():
        if printer["current_print"] and (printer.get("status") or {}).get("state", {}).get("text") == "Printing":
            return dict(printer)
    return None


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
