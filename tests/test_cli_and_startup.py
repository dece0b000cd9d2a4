"""The `layerfleet` command line as a user runs it: a fresh data directory, real processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


def layerfleet(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LAYERFLEET_DATA_DIR": str(data_dir)}
    env.pop("LAYERFLEET_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "layerfleet", *args], env=env, capture_output=True, text=True,
                          timeout=120, input=stdin)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path, *args: str) -> None:
        self.port = free_port()
        env = {**os.environ, "LAYERFLEET_DATA_DIR": str(data_dir)}
        env.pop("LAYERFLEET_DATABASE_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "layerfleet", "serve", "--port", str(self.port), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.output = ""

    def __enter__(self) -> Server:
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        for line in self.process.stdout:
            self.output += line
            if "Uvicorn running" in line or "Application startup complete" in line:
                # Read on for as long as it runs: a full pipe would block the server's next log line.
                threading.Thread(target=self._read_on, daemon=True).start()
                return self
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"server did not start:\n{self.output}")

    def _read_on(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output += line

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the server did not stop within 20 s of SIGTERM; its last output:\n"
                                 f"{self.output[-4000:]}") from None


@contextmanager
def sign_in(url: str, email: str, password: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url) as client:
        response = client.post("/accounts/login/", data={"email": email, "password": password})
        assert response.status_code == 303, response.text
        yield client


def live_printers(client: httpx.Client, count: int, within: float = 60.0) -> list[dict[str, object]]:
    """The printers once ``count`` of them report a status (the demo's simulator has linked them)."""
    deadline = time.monotonic() + within
    while True:
        printers: list[dict[str, object]] = client.get("/api/v1/printers/").json()
        if len(printers) == count and all(p.get("status") for p in printers):
            return printers
        assert len(printers) <= count, printers
        if time.monotonic() > deadline:
            raise AssertionError(f"the demo printers did not come alive: {printers}")
        time.sleep(0.5)


def test_first_start_seeds_an_admin_and_demo_printers_and_keeps_them(tmp_path: Path) -> None:
    with Server(tmp_path, "--demo") as server:
        email = re.search(r"email:\s+(\S+)", server.output)
        password = re.search(r"password:\s+(\S+)", server.output)
        assert email and password, server.output
        with sign_in(server.url, email[1], password[1]) as client:
            printers = live_printers(client, 3)
            assert all(p["settings"]["agent_name"] == "layerfleet_agent" for p in printers)
            me = client.get("/api/v1/users/me/").json()
            assert me["email"] == email[1] and me["role"] == "owner"
            home = client.get("/")
            assert home.status_code == 200 and printers[0]["name"] in home.text
        docs = httpx.get(f"{server.url}/docs")
        assert docs.status_code == 200 and "/static/swagger-ui/swagger-ui-bundle.js" in docs.text
        assert "cdn" not in docs.text.lower()
        assert httpx.get(f"{server.url}/static/swagger-ui/swagger-ui-bundle.js").status_code == 200
        assert (tmp_path / "layerfleet.db").exists()
        assert (tmp_path / "initial-admin.txt").stat().st_mode & 0o077 == 0
        names = [p["name"] for p in printers]
    # A restart keeps everything and creates nothing new.
    with Server(tmp_path, "--demo") as server:
        assert "First start" not in server.output
        with sign_in(server.url, email[1], password[1]) as client:
            assert [p["name"] for p in live_printers(client, 3)] == names
    # The simulator stops with the server (uvicorn re-raises SIGTERM, so the server cannot
    # always stop it itself).
    deadline = time.monotonic() + 10
    while _simulators_of(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _simulators_of(tmp_path) == []


def _simulators_of(data_dir: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"simulate" in command and str(data_dir / "simulated-printers.json").encode() in command:
            found.append(int(proc.name))
    return found


def test_createuser_and_token_create(tmp_path: Path) -> None:
    created = layerfleet(tmp_path, "createuser", "Ops@Example.com", "--password", "s3cret-pass", "--admin")
    assert created.returncode == 0, created.stderr
    assert "Ops@example.com" in created.stdout
    second = layerfleet(tmp_path, "createuser", "viewer@example.com", "--role", "viewer")
    assert second.returncode == 0, second.stderr
    generated = re.search(r"password: (\S+)", second.stdout)
    assert generated, second.stdout
    duplicate = layerfleet(tmp_path, "createuser", "ops@example.com", "--password", "another-pass")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    short = layerfleet(tmp_path, "createuser", "x@example.com", "--password", "short")
    assert short.returncode == 1 and "at least 8" in short.stderr

    token = layerfleet(tmp_path, "token", "create", "ops@example.com")
    assert token.returncode == 0, token.stderr
    key = token.stdout.strip()
    assert key.startswith("lf_") and len(key) > 30
    missing = layerfleet(tmp_path, "token", "create", "nobody@example.com")
    assert missing.returncode == 1 and "no user" in missing.stderr

    with Server(tmp_path) as server:
        me = httpx.get(f"{server.url}/api/v1/users/me/", headers={"Authorization": f"Bearer {key}"})
        assert me.status_code == 200
        assert me.json()["email"] == "Ops@example.com"
        assert me.json()["role"] == "owner"  # the first member of the new organization
        with sign_in(server.url, "viewer@example.com", generated[1]) as client:
            viewer = client.get("/api/v1/users/me/").json()
            assert viewer["role"] == "viewer" and viewer["organization"] == me.json()["organization"]


def test_migrate_command(tmp_path: Path) -> None:
    result = layerfleet(tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "layerfleet.db").exists()


@pytest.mark.parametrize(
    "args", [["--help"], ["serve", "--help"], ["createuser", "--help"], ["token", "create", "--help"]]
)
def test_help(tmp_path: Path, args: list[str]) -> None:
    result = layerfleet(tmp_path, *args)
    assert result.returncode == 0 and "usage: layerfleet" in result.stdout
