"""A real OctoPrint 1.11 with its virtual printer, for tests of the OctoPrint connector and agent.

`scripts/install-octoprint` installs OctoPrint into `.venv-octoprint`; `LAYERFLEET_TEST_OCTOPRINT`
may name another `octoprint` executable (a relative path is taken from the repository root).
Without one the tests are skipped, except in CI (env `CI` set), where they fail: the same
policy as PostgreSQL in conftest.py.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXECUTABLE = REPO_ROOT / ".venv-octoprint" / "bin" / "octoprint"

START_TIMEOUT = 90.0  # seconds; OctoPrint needs about 8 s on two cores, more under load
STOP_TIMEOUT = 15.0


def octoprint_executable() -> Path:
    """The `octoprint` to test with; skips the test (fails it in CI) when there is none."""
    executable = REPO_ROOT / os.environ.get("LAYERFLEET_TEST_OCTOPRINT", DEFAULT_EXECUTABLE)
    if not executable.is_file() or not os.access(executable, os.X_OK):
        message = f"OctoPrint is not installed at {executable} (run scripts/install-octoprint)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must test against a real OctoPrint")
        pytest.skip(message)
    return executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jpeg(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG", quality=80)
    return out.getvalue()


def sample_gcode(moves: int = 600, *, tool: int = 60, bed: int = 40, relative_extrusion: bool = False) -> bytes:
    """A print that heats up (M140/M104/M190/M109) and then makes ``moves`` 20 mm moves.

    The virtual printer spends a tenth of a move's real duration on it and heats at 10 °C/s;
    through OctoPrint that makes about 17 moves a second (measured with 1.11.8 on two cores),
    so the default lasts about 40 s: long enough to pause, resume and cancel in the middle,
    short enough for a test. The low temperatures keep the heat-up at a few seconds.
    """
    lines = [
        "; layerfleet test print",
        "M83 ; relative extrusion" if relative_extrusion else "M82 ; absolute extrusion",
        f"M140 S{bed}",
        f"M104 S{tool}",
        f"M190 S{bed}",
        f"M109 S{tool}",
        "G28",
        "G90",
        "G92 E0",
        "G1 Z0.2 F600",
    ]
    corners = [(40, 40), (60, 40), (60, 60), (40, 60)]
    extruded = 0.0
    for n in range(moves):
        if n and n % 40 == 0:
            lines.append(f"G1 Z{0.2 + 0.2 * (n // 40):.1f} F600")
        x, y = corners[n % 4]
        extruded += 0.8
        lines.append(f"G1 X{x} Y{y} E{0.8 if relative_extrusion else extruded:.3f} F1200")
    lines += ["M104 S0", "M140 S0", "G28 X0", "M84"]
    return ("\n".join(lines) + "\n").encode()


class StaticServer:
    """A tiny HTTP server in a thread: serves fixed bytes by path (webcam snapshots, G-code)."""

    def __init__(self, files: dict[str, tuple[str, bytes]]) -> None:
        self.files = files  # path -> (content type, body)
        self.requests: list[str] = []
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                served.requests.append(path)
                if path not in served.files:
                    self.send_error(404)
                    return
                content_type, body = served.files[path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class OctoPrintHost:
    """One OctoPrint server in ``basedir`` on a free local port; `start` / `stop` may repeat
    (a restart keeps the port, the user and the API key)."""

    def __init__(self, basedir: Path, *, snapshot_url: str | None = None, executable: Path | None = None) -> None:
        self.basedir = basedir
        self.executable = executable or octoprint_executable()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = secrets.token_hex(16)
        self.snapshot_url = snapshot_url
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = basedir / "serve.log"
        self._prepared = False

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> OctoPrintHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if not self._prepared:
            self._prepare_basedir()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.executable), "serve", "--iknowwhatimdoing", "--basedir", str(self.basedir),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            self._wait_until_serving()
            self.connect_printer()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _prepare_basedir(self) -> None:
        self.basedir.mkdir(parents=True, exist_ok=True)
        plugins: dict[str, Any] = {
            # Plugins that phone home, nag or scan the network have no place in a test.
            "_disabled": ["tracking", "errortracking", "softwareupdate", "announcements", "discovery",
                          "health_check", "achievements", "pluginmanager"],
            "virtual_printer": {"enabled": True},
        }
        if self.snapshot_url:
            # Without `_config_version` OctoPrint's first-start migration blanks the URL.
            plugins["classicwebcam"] = {"_config_version": 1, "snapshot": self.snapshot_url}
        config = {
            "server": {"firstRun": False, "onlineCheck": {"enabled": False}, "pluginBlacklist": {"enabled": False}},
            "plugins": plugins,
            "serial": {"log": True},  # logs/serial.log: what the printer was sent, for `sent_since`
        }
        # YAML is a superset of JSON, so no YAML library is needed to write OctoPrint's config.
        (self.basedir / "config.yaml").write_text(json.dumps(config, indent=1))
        subprocess.run(
            [str(self.executable), "--basedir", str(self.basedir), "user", "add", "admin",
             "--password", secrets.token_hex(12), "--admin"],
            check=True, capture_output=True, timeout=120,
        )
        users = self.basedir / "users.yaml"
        text = users.read_text()
        if "apikey: null" not in text:
            raise RuntimeError(f"unexpected users.yaml from `octoprint user add`:\n{text}")
        users.write_text(text.replace("apikey: null", f"apikey: {self.api_key}", 1))
        self._prepared = True

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"OctoPrint exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/api/version", headers=self.headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"OctoPrint did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- REST -----------------------------------------------------------------------------

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.url}{path}", headers=self.headers, timeout=15, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"OctoPrint {method} {path}: {response.status_code} {response.text}")
        return response

    def connect_printer(self) -> None:
        self.request("POST", "/api/connection", json={"command": "connect", "port": "VIRTUAL", "baudrate": 115200})
        self.wait_for(lambda: self.printer_state() == "Operational", "the virtual printer to connect")

    def upload(self, name: str, content: bytes, *, print_now: bool = False) -> None:
        data = {"select": "true", "print": "true"} if print_now else {}
        self.request("POST", "/api/files/local", files={"file": (name, content, "application/octet-stream")},
                     data=data)

    def start_print(self, name: str, content: bytes | None = None) -> None:
        """Upload (when given ``content``) and print ``name``; returns once OctoPrint prints it."""
        if content is not None:
            self.upload(name, content)
        self.request("POST", f"/api/files/local/{name}", json={"command": "select", "print": True})
        self.wait_for(lambda: self.job_state() in ("Printing", "Starting"), f"OctoPrint to print {name}")

    def job(self) -> dict[str, Any]:
        return dict(self.request("GET", "/api/job").json())

    def job_state(self) -> str:
        return str(self.job()["state"])

    def printer(self) -> dict[str, Any]:
        return dict(self.request("GET", "/api/printer").json())

    def printer_state(self) -> str:
        response = httpx.get(f"{self.url}/api/printer", headers=self.headers, timeout=15)
        if response.status_code == 409:  # "Printer is not operational"
            return "Offline"
        return str(response.json()["state"]["text"])

    def cancel_print(self) -> None:
        """Cancel whatever runs, and wait for the printer to be idle again."""
        if self.job_state() in ("Starting", "Printing", "Pausing", "Paused", "Resuming"):
            # 409 when the print ended meanwhile: fine, it is over.
            httpx.post(f"{self.url}/api/job", headers=self.headers, json={"command": "cancel"}, timeout=15)
        self.wait_for(lambda: self.job_state() in ("Operational", "Offline"), "the print to be cancelled")

    @property
    def serial_log_path(self) -> Path:
        return self.basedir / "logs" / "serial.log"

    def serial_log_mark(self) -> int:
        """Where the serial log ends now; `sent_since` reads from there."""
        try:
            return self.serial_log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def sent_since(self, mark: int) -> list[str]:
        """The commands OctoPrint sent the printer since ``mark``, without line numbers and checksums."""
        with self.serial_log_path.open("rb") as log:
            log.seek(mark)
            text = log.read().decode(errors="replace")
        commands = []
        for line in text.splitlines():
            if " - Send: " not in line:
                continue
            command = line.split(" - Send: ", 1)[1].split("*", 1)[0].strip()
            if command.startswith("N") and " " in command:
                command = command.split(" ", 1)[1]
            commands.append(command)
        return commands

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)

