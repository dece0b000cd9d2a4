"""The multi-process deployment of docs/deploy.md, run for real: two `layerfleet serve` processes
behind nginx (deploy/nginx/layerfleet.conf, only its ports changed), one `layerfleet worker`
that scores every webcam frame (LAYERFLEET_SCORING_ON_WORKERS, as in
deploy/layerfleet.env.example), Redis, PostgreSQL and one shared data directory, with simulated
printers linked through the proxy. Killing a server with SIGKILL must cost nothing: its agents
reconnect through the proxy within 30 s, commands still reach every printer, and no print, event
or watched frame is lost.

LAYERFLEET_TEST_DEPLOY_PRINTERS sets how many printers (CI: a few dozen; a few hundred by hand)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from conftest import POSTGRES_SERVER, local_port_answers
from layerfleet.database import create_engine
from layerfleet.detection.models import PredictionFrame
from layerfleet.fleet.models import PrinterEvent
from layerfleet.prints.models import Print
from redis_helpers import forget_namespace

REPOSITORY = Path(__file__).resolve().parents[1]
NGINX_SITE = REPOSITORY / "deploy" / "nginx" / "layerfleet.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PRINTERS = int(os.environ.get("LAYERFLEET_TEST_DEPLOY_PRINTERS", "24"))
RECONNECT_WITHIN = 30.0
PICTURE_INTERVAL = 5.0


def _missing() -> str | None:
    if not Path(NGINX).exists():
        return "nginx is not installed (scripts/setup-real-parts installs it)"
    if not local_port_answers(5432):
        return "PostgreSQL does not answer at 127.0.0.1:5432"
    if not local_port_answers(6379):
        return "Redis does not answer at 127.0.0.1:6379"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def nginx_config(site: str, *, listen: int, servers: tuple[int, int], prefix: Path) -> str:
    """The shipped site file, listening on ``listen`` and pointing at ``servers``, inside the
    least `nginx.conf` that runs unprivileged in ``prefix``."""
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    site = site.replace("127.0.0.1:8001", f"127.0.0.1:{servers[0]}").replace("127.0.0.1:8002",
                                                                           f"127.0.0.1:{servers[1]}")
    temp = "\n".join(f"    {name}_temp_path {prefix / name};" for name in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"pid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} warn;\nworker_processes 1;\n"
            f"events {{ worker_connections 4096; }}\nhttp {{\n    access_log off;\n{temp}\n{site}\n}}\n")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Deployment:
    """The processes of one deployment, each logging to a file of its own."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.processes: list[Process] = []

    def start(self, name: str, *command: str) -> Process:
        log = self.directory / f"{name}.log"
        popen = subprocess.Popen(command, env=self.env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                 cwd=self.directory, start_new_session=True)
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def layerfleet(self, name: str, *args: str) -> Process:
        return self.start(name, sys.executable, "-m", "layerfleet", *args)

    def run(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "layerfleet", *args], env=self.env, capture_output=True,
                              text=True, timeout=120, cwd=self.directory)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.processes)


@contextmanager
def deployment(directory: Path, env: dict[str, str]) -> Iterator[Deployment]:
    running = Deployment(directory, env)
    try:
        yield running
    finally:
        running.stop()


@asynccontextmanager
async def own_database() -> AsyncIterator[str]:
    name = f"layerfleet_deploy_{secrets.token_hex(4)}"
    admin = create_engine(f"{POSTGRES_SERVER}/postgres", pooled=False).execution_options(isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def _wait_until(check: Any, within: float, what: str, deployment: Deployment) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what} not within {within:.0f} s (last: {last})\n{deployment.logs()}")


def _flags(printer: dict[str, Any]) -> dict[str, Any]:
    status = printer.get("status") or {}
    flags: dict[str, Any] = ((status.get("state") or {}).get("flags")) or {}
    return flags


def _connected_in(log: str) -> set[int]:
    return {int(found) for found in re.findall(r"agent of printer (\d+) connected", log)}


async def test_killing_a_server_behind_the_proxy_loses_nothing(tmp_path: Path) -> None:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the deployment test needs its real parts in CI: {missing}")
        pytest.skip(missing)
    async with own_database() as database_url:
        namespace = f"deploy-{secrets.token_hex(4)}"
        ports = (_free_port(), _free_port())
        proxy_port = _free_port()
        proxy = f"http://127.0.0.1:{proxy_port}"
        data_dir = tmp_path / "data"
        env = {**os.environ, "LAYERFLEET_DATA_DIR": str(data_dir), "LAYERFLEET_DATABASE_URL": database_url,
               "LAYERFLEET_REDIS_URL": "redis://127.0.0.1:6379/0", "LAYERFLEET_REDIS_NAMESPACE": namespace,
               "LAYERFLEET_SECRET_KEY": secrets.token_urlsafe(32), "LAYERFLEET_TRUSTED_PROXIES": "127.0.0.1",
               "LAYERFLEET_BASE_URL": proxy, "LAYERFLEET_JOB_WORKERS": "0", "LAYERFLEET_SCORING_ON_WORKERS": "true",
               "LAYERFLEET_UNLIMITED_DETECTION_HOURS":
               "true", "LAYERFLEET_DETECTION_INTERVAL_SECONDS": str(PICTURE_INTERVAL), "LAYERFLEET_LOG_LEVEL": "info"}
        (tmp_path / "nginx").mkdir()
        config = tmp_path / "nginx" / "nginx.conf"
        config.write_text(nginx_config(NGINX_SITE.read_text(), listen=proxy_port, servers=ports,
                                       prefix=tmp_path / "nginx"))
        engine = create_engine(database_url, pooled=False)
        try:
            with deployment(tmp_path, env) as farm:
                farm.run("migrate")
                farm.run("createuser", "ops@example.com", "--password", "deploy-pass-1", "--admin")
                token_file = tmp_path / "token"
                token_file.write_text(farm.run("token", "create", "ops@example.com").strip())
                servers = [farm.layerfleet(f"server-{port}", "serve", "--no-migrate", "--port", str(port))
                           for port in ports]
                farm.layerfleet("worker", "worker")
                farm.start("nginx", NGINX, "-p", str(tmp_path / "nginx"), "-c", str(config), "-g", "daemon off;")
                farm.layerfleet("simulate", "simulate", "--server", proxy, "--token-file", str(token_file),
                                "--printers", str(PRINTERS), "--picture-interval", str(PICTURE_INTERVAL),
                                "--print-minutes", "60-90", "--preheated", "--seed", "7",
                                "--state", str(tmp_path / "simulated.json"))
                headers = {"Authorization": f"Bearer {token_file.read_text()}"}
                async with httpx.AsyncClient(base_url=proxy, headers=headers, timeout=30) as client:
                    await _run_scenario(client, farm, servers, engine)
        finally:
            await engine.dispose()
            await forget_namespace("redis://127.0.0.1:6379/0", namespace)


async def _printers(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = await client.get("/api/v1/printers/")
    if answer.status_code != 200:
        return []
    printers: list[dict[str, Any]] = answer.json()
    return printers


async def _scored_frames(engine: Any) -> dict[int, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(PredictionFrame.print_id, func.count()).group_by(PredictionFrame.print_id))
        return {print_id: count for print_id, count in rows}


async def _run_scenario(client: httpx.AsyncClient, farm: Deployment, servers: list[Process], engine: Any) -> None:
    async def all_printing() -> list[dict[str, Any]] | None:
        printers = await _printers(client)
        printing = [p for p in printers if _flags(p).get("printing") and p.get("current_print")]
        return printers if len(printers) == PRINTERS and len(printing) == PRINTERS else None

    printers = await _wait_until(all_printing, 180, f"{PRINTERS} printers linked and printing", farm)
    prints_before = {p["id"]: p["current_print"]["id"] for p in printers}

    # Both servers hold agents (the proxy spreads them), so killing one strands some.
    await _wait_until(lambda: _async_value(len(_connected_in(servers[0].output()) |
                                               _connected_in(servers[1].output())) == PRINTERS),
                      30, "every agent connected to a server", farm)
    victim, survivor = servers
    stranded = _connected_in(victim.output())
    assert stranded and stranded != set(prints_before), "the proxy sent every agent to one server"

    async def all_watched() -> dict[int, int] | None:
        frames = await _scored_frames(engine)
        return frames if all(frames.get(print_id, 0) > 0 for print_id in prints_before.values()) else None

    frames_before = await _wait_until(all_watched, 60, "a scored frame for every print", farm)

    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait()
    killed_at = time.monotonic()

    # Its agents find the survivor through the proxy.
    await _wait_until(lambda: _async_value(stranded <= _connected_in(survivor.output())), RECONNECT_WITHIN,
                      f"the {len(stranded)} stranded agents reconnected", farm)
    reconnected_in = time.monotonic() - killed_at

    # Commands reach every printer: pause them all, then resume them all.
    for printer_id in prints_before:
        answer = await client.post(f"/api/v1/printers/{printer_id}/pause_print")
        assert answer.status_code == 200, answer.text

    async def every(flag: str, value: bool) -> bool:
        printers = await _printers(client)
        return len(printers) == PRINTERS and all(bool(_flags(p).get(flag)) is value for p in printers)

    await _wait_until(lambda: every("paused", True), 30, "every printer paused", farm)
    for printer_id in prints_before:
        answer = await client.post(f"/api/v1/printers/{printer_id}/resume_print")
        assert answer.status_code == 200, answer.text
    await _wait_until(lambda: every("paused", False), 30, "every printer resumed", farm)

    # No print lost or doubled: each printer is still on the print it was on before the kill.
    printers = await _printers(client)
    assert {p["id"]: (p["current_print"] or {}).get("id") for p in printers} == prints_before
    async with engine.connect() as connection:
        prints = (await connection.execute(select(func.count()).select_from(Print))).scalar_one()
        assert prints == PRINTERS
        # No event lost or doubled: one pause and one resume recorded per print.
        events = await connection.execute(
            select(PrinterEvent.print_id, PrinterEvent.event_type, func.count())
            .group_by(PrinterEvent.print_id, PrinterEvent.event_type))
        recorded = {(print_id, kind): count for print_id, kind, count in events}
    for print_id in prints_before.values():
        assert recorded.get((print_id, "PRINT_PAUSED")) == 1, recorded
        assert recorded.get((print_id, "PRINT_RESUMED")) == 1, recorded

    # Watching goes on for every print, the stranded printers' included.
    new_frames: dict[int, int] = {}

    async def watched_again() -> bool:
        frames = await _scored_frames(engine)
        new_frames.update({print_id: frames.get(print_id, 0) - frames_before[print_id]
                           for print_id in prints_before.values()})
        return all(count > 1 for count in new_frames.values())

    try:
        await _wait_until(watched_again, 60, "new scored frames for every print", farm)
    except AssertionError as failed:
        raise AssertionError(f"new frames per print: {new_frames}; stranded printers: {sorted(stranded)}; "
                             f"prints: {prints_before}") from failed
    print(f"\n{PRINTERS} printers, {len(stranded)} on the killed server; reconnected through the proxy in "
          f"{reconnected_in:.1f} s")


async def _async_value(value: bool) -> bool:
    return value
