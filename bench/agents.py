"""Load on the printer-agent websocket gateway: K simulated agents against a real server process.

Each simulated agent holds one websocket to ``/ws/dev/`` and speaks the Obico agent protocol
(shared/protocols/obico-agent.md): a status with settings at connect, then a printing status
every ``--status-interval`` seconds (random phase), and every second a few agents send a burst
of statuses back to back, as a real agent does after an event. A paused agent reports
PrintPaused at once and PrintResumed ``--resume-after`` seconds later. Measured:

* server CPU time per 1,000 status messages, over a steady window with no API traffic
  (utime + stime of the server process from /proc, so the load generator is not counted; with
  PostgreSQL, its backends serving the bench database are shown on a row of their own);
* server RSS before the agents connect, once they all are connected, and at its peak;
* p50 / p99 / max time from just before ``POST /api/v1/printers/{id}/pause_print/`` is sent to
  the moment the targeted agent's socket hands over the ``commands`` frame (one perf_counter
  clock, in this process), while the status load goes on.

Modes: ``single`` is one server process (SQLite by default, ``--database postgresql`` for
PostgreSQL); ``redis`` is two server processes sharing one PostgreSQL database and Redis, the
agents connected to process A and every pause sent to process B, so each command crosses Redis.

To tell the server's delays from the machine's, the report also gives this process's CPU and
event-loop lag, and the CPU other programs and the hypervisor (steal) took during the window.

    python bench/agents.py [--agents 500] [--duration 60] [--pauses 200] [--mode single|redis|both]
                           [--database sqlite|postgresql] [--keep-logs DIR]

Exits 1 when a pause is refused or not delivered, an agent cannot connect or loses its
connection, a server process dies, or a server logs an error while the load runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from layerfleet.accounts import service as accounts
from layerfleet.database import create_engine, create_sessionmaker, migrate
from layerfleet.fleet import service as fleet

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_agents"
# A database index of its own: the bench's printer ids (1…K) must not meet the claims of a
# development server using the default namespace in database 0. Pub/sub channels are global,
# but they are named by random process ids, so they cannot collide.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LAG_PROBE_SECONDS = 0.02
IDLE_SECONDS = 3.0
NAN = float("nan")
# A pause right after a resume could reach the server before the resumed status does.
SETTLE_AFTER_RESUME = 1.0


@dataclass(frozen=True)
class Options:
    agents: int
    duration: float
    pauses: int
    pause_interval: float
    status_interval: float
    burst_agents: int
    burst_size: int
    warmup: float
    connect_concurrency: int
    delivery_timeout: float
    resume_after: float
    postgres_url: str
    redis_url: str
    server_log_level: str
    keep_logs: Path | None


# ---------------------------------------------------------------- server processes


def _cpu_seconds(pid: int) -> float:
    # /proc/PID/stat: the command name may hold spaces, so count fields after its closing ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _memory_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(key)


def _machine_seconds() -> tuple[float, float]:
    """CPU seconds all cores spent working, and seconds the hypervisor took from them (steal)."""
    # First line of /proc/stat: user nice system idle iowait irq softirq steal …, in ticks.
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Timeout)\w*: ")


def _log_size(log_path: Path) -> int:
    try:
        return log_path.stat().st_size
    except OSError:
        return 0


def _logged_errors(log_path: Path, upto: int) -> dict[str, int]:
    """Errors the server logged in its first ``upto`` bytes of log, by exception."""
    found: dict[str, int] = {}
    try:
        with log_path.open("rb") as log:
            lines = log.read(upto).decode(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        if EXCEPTION_LINE.match(line):
            key = line.split(" (Background on this error", 1)[0][:120]
            found[key] = found.get(key, 0) + 1
        elif line.startswith("ERROR:") or " ERROR " in line:
            found.setdefault("(error lines)", 0)
            found["(error lines)"] += 1
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerProcess:
    """``layerfleet serve`` in a process of its own, so its CPU and memory are its own."""

    def __init__(self, name: str, data_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = _free_port()
        self.data_dir = data_dir
        self.log_path = data_dir / f"server-{name}.log"
        # The caller's own LAYERFLEET_* settings (a Redis URL, say) must not leak into the scenario.
        inherited = {key: value for key, value in os.environ.items() if not key.startswith("LAYERFLEET_")}
        self.env = {**inherited, **env, "LAYERFLEET_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        self.process: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, start_seconds: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "layerfleet", "serve", "--port", str(self.port),
                env=self.env, stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            )
        deadline = time.monotonic() + start_seconds
        async with httpx.AsyncClient() as client:
            while True:
                if not self.alive():
                    raise RuntimeError(f"server {self.name} exited while starting:\n{_tail(self.log_path)}")
                try:
                    # Uvicorn answers only once the app's start-up (the command bus too) is done.
                    await client.get(f"{self.base_url}/api/v1/", timeout=2)
                    return
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"server {self.name} did not start:\n{_tail(self.log_path)}") from None
                    await asyncio.sleep(0.2)

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.pid)

    def rss_mib(self) -> float:
        return _memory_mib(self.pid, "VmRSS")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# ---------------------------------------------------------------- database


@dataclass(frozen=True)
class Seeded:
    api_key: str
    printers: list[tuple[int, str]]  # (printer id, agent token)


async def recreate_postgres(url: str) -> None:
    target = make_url(url)
    connection = await asyncpg.connect(_admin_dsn(url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{target.database}"')
    finally:
        await connection.close()


async def fresh_database(database: str, postgres_url: str, root: Path) -> str:
    """The URL of an empty database for one run: PostgreSQL's bench database dropped and made
    again, or a new SQLite file under ``root``."""
    if database == "postgresql":
        await recreate_postgres(postgres_url)
        return postgres_url
    return f"sqlite+aiosqlite:///{root / 'layerfleet.db'}"


def _admin_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)


async def postgres_backends_cpu(url: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving the bench database, when PostgreSQL runs here.

    The database's work is part of what a status costs; with SQLite it happens inside the server.
    """
    connection = await asyncpg.connect(_admin_dsn(url))
    try:
        rows = await connection.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", make_url(url).database)
    finally:
        await connection.close()
    found: dict[int, float] = {}
    for row in rows:
        with contextlib.suppress(OSError):  # ended meanwhile, or PostgreSQL on another machine
            found[row["pid"]] = _cpu_seconds(row["pid"])
    return found


async def seed(url: str, agents: int) -> Seeded:
    """An owner with an API token and ``agents`` printers, made through the domain services.

    Through the database, not the linking endpoint, which throttles (rightly) long before 1,000.
    """
    await asyncio.to_thread(migrate, url)
    engine = create_engine(url, pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            # Detection hours make the server watch the prints, as on a real farm.
            owner = await accounts.create_user(session, "bench@example.com", None, dh_balance=100.0)
            api_key = (await accounts.create_api_token(session, owner, "bench")).key
            printers = []
            for index in range(agents):
                printer = await fleet.create_printer(session, owner, f"bench printer {index + 1}")
                printers.append((printer.id, printer.auth_token))
            await session.commit()
    finally:
        await engine.dispose()
    return Seeded(api_key, printers)


# ---------------------------------------------------------------- simulated agents


class Counters:
    def __init__(self) -> None:
        self.statuses_sent = 0
        self.frames_received = 0
        self.unexpected_commands = 0
        self.lost_connections = 0
        # How lost connections were closed: "code reason" → count, to tell the server's reasons apart.
        self.close_codes: dict[str, int] = {}


@dataclass(eq=False)
class Agent:
    printer_id: int
    token: str
    counters: Counters
    resume_after: float
    print_started: int = field(default_factory=lambda: int(time.time()) - random.randint(60, 4 * 3600))
    socket: ClientConnection | None = None
    paused: bool = False
    resumed_at: float = 0.0
    # Set by the pause sampler just before its API call; resolved with the arrival time.
    waiter: asyncio.Future[float] | None = None
    stopping: bool = False

    def status(self) -> dict[str, Any]:
        """An OctoPrint-shaped status of about 1 KB, like OctoPrint-Obico 2.6 sends while printing."""
        now = time.time()
        elapsed = max(0.0, now - self.print_started)
        estimated = 4 * 3600.0
        completion = min(99.0, 100 * elapsed / estimated)
        flags = {
            "operational": True, "printing": not self.paused, "paused": self.paused, "pausing": False,
            "cancelling": False, "resuming": False, "finishing": False, "closedOrError": False,
            "error": False, "ready": False, "sdReady": True,
        }
        name = f"part-{self.printer_id}.gcode"
        return {
            "state": {"text": "Paused" if self.paused else "Printing", "flags": flags, "error": ""},
            "job": {
                "file": {"name": name, "path": name, "display": name, "size": 4_812_345, "origin": "local",
                         "date": self.print_started - 600},
                "estimatedPrintTime": estimated, "lastPrintTime": None,
                "filament": {"tool0": {"length": 12_345.6, "volume": 29.7}},
                "user": "farm",
            },
            "progress": {"completion": completion, "filepos": int(48_123 * completion), "printTime": int(elapsed),
                         "printTimeLeft": int(max(0.0, estimated - elapsed)), "printTimeLeftOrigin": "estimate"},
            "currentZ": round(0.2 + completion * 0.4, 2),
            "temperatures": {
                "tool0": {"actual": round(214.6 + random.random(), 1), "target": 215.0, "offset": 0},
                "bed": {"actual": round(59.6 + random.random(), 1), "target": 60.0, "offset": 0},
                "chamber": {"actual": None, "target": None, "offset": 0},
            },
            "_ts": int(now),
            "currentLayerHeight": 0.2,
            "display_status": {"is_busy": not self.paused},
        }

    async def send(self, event: str | None = None, *, with_settings: bool = False) -> None:
        if self.socket is None or self.stopping:
            return
        frame: dict[str, Any] = {"status": self.status(), "current_print_ts": self.print_started}
        if event is not None:
            frame["event"] = {"event_type": event, "data": {"name": f"part-{self.printer_id}.gcode"}}
        if with_settings:
            frame["settings"] = AGENT_SETTINGS
        try:
            await self.socket.send(json.dumps(frame))
        except ConnectionClosed:
            self._lost()
            return
        self.counters.statuses_sent += 1

    def _lost(self) -> None:
        if not self.stopping:
            self.counters.lost_connections += 1
            self.stopping = True
            how = "unknown"
            if self.socket is not None:
                how = f"{self.socket.close_code} {self.socket.close_reason or ''}".strip()
            self.counters.close_codes[how] = self.counters.close_codes.get(how, 0) + 1

    async def connect(self, url: str) -> None:
        # As OctoPrint-Obico: lowercase "bearer", no pings from the agent, no compression.
        self.socket = await connect(
            url, additional_headers={"Authorization": f"bearer {self.token}"},
            ping_interval=None, compression=None, proxy=None, open_timeout=60,
        )
        await self.send(with_settings=True)

    async def read(self) -> None:
        assert self.socket is not None
        try:
            async for raw in self.socket:
                arrived = time.perf_counter()
                self.counters.frames_received += 1
                message = json.loads(raw)
                commands = message.get("commands") if isinstance(message, dict) else None
                if commands:
                    self._on_commands(commands, arrived)
        except ConnectionClosed:
            pass
        self._lost()

    def _on_commands(self, commands: list[dict[str, Any]], arrived: float) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done() or not any(c.get("cmd") == "pause" for c in commands):
            self.counters.unexpected_commands += 1
            return
        waiter.set_result(arrived)
        self.paused = True
        _spawn(self._pause_and_resume())

    async def _pause_and_resume(self) -> None:
        # What a printer does: reports the pause at once, is resumed by its operator later.
        await self.send("PrintPaused")
        await asyncio.sleep(self.resume_after)
        self.paused = False
        await self.send("PrintResumed")
        self.resumed_at = time.monotonic()

    async def report_periodically(self, interval: float) -> None:
        due = time.monotonic() + random.uniform(0, interval)
        while not self.stopping:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.send()
            due += interval

    async def close(self) -> None:
        self.stopping = True
        if self.socket is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.socket.close(), 10)


AGENT_SETTINGS: dict[str, Any] = {
    "temperature": {"profiles": [{"name": "PLA", "extruder": 215, "bed": 60},
                                 {"name": "PETG", "extruder": 240, "bed": 80}]},
    "agent": {"name": "octoprint_obico", "version": "2.6.1"},
    "octoprint_version": "1.11.8",
    "webcams": [{"name": "classic", "is_primary_camera": True, "flipH": False, "flipV": False, "rotation": 0,
                 "streamRatio": "16:9"}],
}

_background: set[asyncio.Task[Any]] = set()


def _spawn(work: Awaitable[Any]) -> asyncio.Task[Any]:
    task: asyncio.Task[Any] = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def bursts(agents: list[Agent], per_second: int, size: int) -> None:
    while True:
        await asyncio.sleep(1.0)
        for agent in random.sample(agents, min(per_second, len(agents))):
            _spawn(_burst(agent, size))


async def _burst(agent: Agent, size: int) -> None:
    for _ in range(size):
        await agent.send()


class LoopLag:
    """How late this process's event loop wakes up: if it is late, latencies are ours, not the server's."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + LAG_PROBE_SECONDS
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self.samples.append(max(0.0, loop.time() - planned))


# ---------------------------------------------------------------- one scenario


@dataclass
class ProcessResult:
    scenario: str
    role: str
    cpu_seconds: float = 0.0
    window_seconds: float = 0.0
    statuses: int = 0
    idle_cpu_percent: float = 0.0
    rss_idle: float = 0.0
    rss_connected: float = 0.0
    rss_peak: float = 0.0
    pause_cpu_percent: float = 0.0

    @property
    def cpu_ms_per_1000(self) -> float:
        return 1e6 * self.cpu_seconds / self.statuses if self.statuses else float("nan")

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_seconds / self.window_seconds if self.window_seconds else float("nan")


@dataclass
class ScenarioResult:
    name: str
    agents: int
    processes: list[ProcessResult] = field(default_factory=list)
    connect_seconds: float = 0.0
    status_rate: float = 0.0
    delivery_ms: list[float] = field(default_factory=list)
    api_ms: list[float] = field(default_factory=list)
    refused: int = 0
    lost: int = 0
    loadgen_cpu_percent: float = 0.0
    # Cores' worth of CPU used by other programs on the machine, and taken by the hypervisor
    # (steal), during the steady window: both make latencies worse without being the server's fault.
    other_cores: float = 0.0
    steal_cores: float = 0.0
    loop_lag_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


def _loadgen_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _connect_all(agents: list[Agent], url: str, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(agent: Agent) -> None:
        async with gate:
            await agent.connect(url)

    await asyncio.gather(*(one(agent) for agent in agents))


async def _pause_one(
    client: httpx.AsyncClient, api_url: str, agent: Agent, wait_seconds: float, result: ScenarioResult
) -> None:
    waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    agent.waiter = waiter
    started = time.perf_counter()
    try:
        response = await client.post(f"{api_url}/api/v1/printers/{agent.printer_id}/pause_print/")
        answered = time.perf_counter()
        succeeded = response.status_code == 200 and response.json().get("succeeded") is True
        problem = f"{response.status_code} {response.text[:200]}"
    except httpx.HTTPError as exc:
        succeeded, answered, problem = False, time.perf_counter(), repr(exc)
    if not succeeded:
        result.refused += 1
        if len(result.errors) < 10:
            result.errors.append(f"pause of printer {agent.printer_id} refused: {problem}")
        agent.waiter = None
        return
    result.api_ms.append(1000 * (answered - started))
    try:
        arrived = await asyncio.wait_for(asyncio.shield(waiter), wait_seconds)
    except TimeoutError:
        result.lost += 1
        agent.waiter = None
        return
    result.delivery_ms.append(1000 * (arrived - started))


async def _sample_pauses(
    agents: list[Agent], api: ServerProcess, api_key: str, options: Options, result: ScenarioResult
) -> None:
    headers = {"Authorization": f"Token {api_key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        # One call first, so that opening the keep-alive connection is not timed.
        await client.get(f"{api.base_url}/api/v1/printers/{agents[0].printer_id}/")
        due = time.monotonic()
        # A server that has fallen over answers each call only after its timeouts; do not wait for all of them.
        deadline = due + 3 * options.pauses * options.pause_interval + 60
        for _ in range(options.pauses):
            if time.monotonic() > deadline:
                result.errors.append("the pauses took three times longer than planned; the rest were skipped")
                return
            # Jittered spacing, so pauses do not beat against the agents' status schedule.
            due += random.uniform(0.5, 1.5) * options.pause_interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            ready = [a for a in agents if not a.paused and a.waiter is None and not a.stopping
                     and now - a.resumed_at > SETTLE_AFTER_RESUME]
            if not ready:
                result.errors.append("no agent was ready to be paused")
                return
            await _pause_one(client, api.base_url, random.choice(ready), options.delivery_timeout, result)


async def run_scenario(name: str, database: str, two_processes: bool, options: Options) -> ScenarioResult:
    result = ScenarioResult(name, options.agents)
    counters = Counters()
    with tempfile.TemporaryDirectory(prefix="layerfleet-bench-") as tmp:
        root = Path(tmp)
        url = await fresh_database(database, options.postgres_url, root)
        print(f"[{name}] seeding {options.agents} printers …", flush=True)
        seeded = await seed(url, options.agents)

        env = {"LAYERFLEET_DATABASE_URL": url, "LAYERFLEET_LOG_LEVEL": options.server_log_level}
        if two_processes:
            env["LAYERFLEET_REDIS_URL"] = options.redis_url
        servers = [ServerProcess("A", root / "a", env)]
        if two_processes:
            servers.append(ServerProcess("B", root / "b", env))
        gateway, api = servers[0], servers[-1]
        agents = [Agent(pid, token, counters, options.resume_after) for pid, token in seeded.printers]
        tasks: list[asyncio.Task[Any]] = []
        try:
            for server in servers:  # one after the other: both migrate at start
                await server.start()
            outcomes = [ProcessResult(name, "agents + API" if server is api else "agents", rss_idle=server.rss_mib())
                        for server in servers]
            if two_processes:
                outcomes[1].role = "API"
            # What a server costs with nobody connected, to read the per-message figure against.
            idle_before = [server.cpu_seconds() for server in servers]
            await asyncio.sleep(IDLE_SECONDS)
            for server, outcome, before in zip(servers, outcomes, idle_before, strict=True):
                outcome.idle_cpu_percent = 100 * (server.cpu_seconds() - before) / IDLE_SECONDS

            print(f"[{name}] connecting {options.agents} agents to {gateway.base_url} …", flush=True)
            started = time.monotonic()
            await _connect_all(agents, gateway.base_url.replace("http", "ws") + "/ws/dev/", options.connect_concurrency)
            result.connect_seconds = time.monotonic() - started
            tasks += [asyncio.create_task(agent.read()) for agent in agents]
            tasks += [asyncio.create_task(agent.report_periodically(options.status_interval)) for agent in agents]
            tasks.append(asyncio.create_task(bursts(agents, options.burst_agents, options.burst_size)))
            await asyncio.sleep(options.warmup)

            print(f"[{name}] steady window of {options.duration:.0f} s …", flush=True)
            for server, outcome in zip(servers, outcomes, strict=True):
                outcome.rss_connected = server.rss_mib()
            cpu_before = [server.cpu_seconds() for server in servers]
            sent_before, loadgen_before, window_start = counters.statuses_sent, _loadgen_cpu(), time.monotonic()
            busy_before, steal_before = _machine_seconds()
            backends_before = await postgres_backends_cpu(url) if database == "postgresql" else {}
            await asyncio.sleep(options.duration)
            window = time.monotonic() - window_start
            statuses = counters.statuses_sent - sent_before
            result.status_rate = statuses / window
            loadgen_cpu = _loadgen_cpu() - loadgen_before
            result.loadgen_cpu_percent = 100 * loadgen_cpu / window
            for server, outcome, before in zip(servers, outcomes, cpu_before, strict=True):
                outcome.cpu_seconds, outcome.window_seconds = server.cpu_seconds() - before, window
                outcome.statuses = statuses
            if database == "postgresql":
                # Backends that ended within the window are missed; the pool keeps them open, so few do.
                backends_after = await postgres_backends_cpu(url)
                used = sum(cpu - backends_before.get(pid, 0.0) for pid, cpu in backends_after.items())
                outcomes.append(ProcessResult(name, "PostgreSQL backends", cpu_seconds=used, window_seconds=window,
                                              statuses=statuses, idle_cpu_percent=NAN, rss_idle=NAN,
                                              rss_connected=NAN, rss_peak=NAN, pause_cpu_percent=NAN))
            ours = loadgen_cpu + sum(outcome.cpu_seconds for outcome in outcomes)
            busy_after, steal_after = _machine_seconds()
            result.other_cores = max(0.0, busy_after - busy_before - ours) / window
            result.steal_cores = (steal_after - steal_before) / window

            print(f"[{name}] {options.pauses} pauses through {api.base_url} …", flush=True)
            lag = LoopLag()
            tasks.append(asyncio.create_task(lag.run()))
            cpu_before, pauses_start = [server.cpu_seconds() for server in servers], time.monotonic()
            await _sample_pauses(agents, api, seeded.api_key, options, result)
            result.loop_lag_ms = [1000 * s for s in lag.samples]
            pauses_seconds = time.monotonic() - pauses_start
            for server, outcome, before in zip(servers, outcomes[:len(servers)], cpu_before, strict=True):
                outcome.rss_peak = _memory_mib(server.pid, "VmHWM")
                outcome.pause_cpu_percent = 100 * (server.cpu_seconds() - before) / pauses_seconds
            result.processes = outcomes
        except Exception as exc:  # reported with the rest, so other scenarios still run
            result.errors.append(f"the run stopped: {exc!r}")
        finally:
            # Errors logged while agents hang up at the end are not the load's doing.
            measured_log = [_log_size(server.log_path) for server in servers]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(agent.close() for agent in agents))
            died = [server for server in servers if server.process is not None and not server.alive()]
            for server in servers:
                await server.stop()
                if options.keep_logs is not None:
                    options.keep_logs.mkdir(parents=True, exist_ok=True)
                    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
                    shutil.copy(server.log_path, options.keep_logs / f"{slug}-{server.name}.log")
            for server in died:
                result.errors.append(f"server {server.name} died:\n{_tail(server.log_path)}")
            for server, upto in zip(servers, measured_log, strict=True):
                logged = _logged_errors(server.log_path, upto)
                if logged:
                    result.errors.append(f"server {server.name} logged {sum(logged.values())} errors: {logged}")
    if counters.lost_connections:
        result.errors.append(f"{counters.lost_connections} agents lost their connection (close code: count "
                             f"{counters.close_codes})")
    if counters.unexpected_commands:
        result.errors.append(f"{counters.unexpected_commands} commands nobody asked for")
    return result


# ---------------------------------------------------------------- report


def _ms(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if value == value else "–"  # NaN is not equal to itself


def print_report(results: list[ScenarioResult], options: Options) -> None:
    print()
    print(f"{options.agents} agents, a status every {options.status_interval:g} s plus bursts of "
          f"{options.burst_size} from {options.burst_agents} agents/s; steady window {options.duration:g} s; "
          f"{options.pauses} pauses")
    print()
    print("| scenario | process | status msg/s | CPU ms / 1,000 status | CPU % of a core | idle CPU % "
          "| CPU % during pauses | RSS idle MiB | RSS connected MiB | RSS peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        for p in result.processes:
            print(f"| {result.name} | {p.role} | {result.status_rate:.0f} | {p.cpu_ms_per_1000:.0f} "
                  f"| {p.cpu_percent:.0f} | {_ms(p.idle_cpu_percent)} | {_ms(p.pause_cpu_percent, 0)} "
                  f"| {_ms(p.rss_idle, 0)} | {_ms(p.rss_connected, 0)} | {_ms(p.rss_peak, 0)} |")
    print()
    print("| scenario | connect all s | pause → agent p50 ms | p99 ms | max ms | API reply p50 ms | p99 ms "
          "| refused / lost | load gen. CPU % | its loop lag p99 / max ms | other programs, cores | steal, cores |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.connect_seconds:.1f} | {_ms(percentile(r.delivery_ms, 50))} "
              f"| {_ms(percentile(r.delivery_ms, 99))} | {_ms(max(r.delivery_ms, default=float('nan')))} "
              f"| {_ms(percentile(r.api_ms, 50))} | {_ms(percentile(r.api_ms, 99))} | {r.refused} / {r.lost} "
              f"| {r.loadgen_cpu_percent:.0f} | {_ms(percentile(r.loop_lag_ms, 99))} / "
              f"{_ms(max(r.loop_lag_ms, default=float('nan')))} | {r.other_cores:.2f} | {r.steal_cores:.2f} |")
    for r in results:
        if r.agents >= 1000 and r.name.startswith("single"):
            p99 = percentile(r.delivery_ms, 99)
            verdict = "met" if p99 < 200 and not r.refused and not r.lost else "NOT met"
            print(f"\ntarget (1,000 agents on one process, p99 command delivery < 200 ms), {r.name}: {verdict}")


# ---------------------------------------------------------------- main


def _raise_fd_limit(needed: int) -> None:
    # Each agent is a socket here and another in the server (which inherits this limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if wanted < needed:
            print(f"warning: open files limited to {wanted}; {needed} wanted", file=sys.stderr)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--duration", type=float, default=60, help="steady window for the CPU figure, seconds")
    parser.add_argument("--pauses", type=int, default=200)
    parser.add_argument("--pause-interval", type=float, default=0.25, help="mean seconds between pause calls")
    parser.add_argument("--mode", choices=["single", "redis", "both"], default="single")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite",
                        help="database of the single-process run (the Redis run always uses PostgreSQL)")
    parser.add_argument("--status-interval", type=float, default=10.0)
    parser.add_argument("--burst-agents", type=int, help="agents starting a burst each second (default K/250)")
    parser.add_argument("--burst-size", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--delivery-timeout", type=float, default=5.0)
    parser.add_argument("--resume-after", type=float, default=2.0, help="seconds a paused agent stays paused")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="dropped and recreated on each run")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--server-log-level", default="info")
    parser.add_argument("--keep-logs", type=Path, help="copy the servers' logs into this folder")
    args = parser.parse_args(argv)
    if args.agents < 1 or args.pauses < 0:
        parser.error("--agents must be at least 1 and --pauses at least 0")
    options = Options(
        agents=args.agents, duration=args.duration, pauses=args.pauses, pause_interval=args.pause_interval,
        status_interval=args.status_interval,
        burst_agents=args.burst_agents if args.burst_agents is not None else max(1, args.agents // 250),
        burst_size=args.burst_size, warmup=args.warmup, connect_concurrency=args.connect_concurrency,
        delivery_timeout=args.delivery_timeout, resume_after=args.resume_after, postgres_url=args.postgres_url,
        redis_url=args.redis_url, server_log_level=args.server_log_level, keep_logs=args.keep_logs,
    )
    return args, options


async def run(args: argparse.Namespace, options: Options) -> list[ScenarioResult]:
    plans: list[tuple[str, str, bool]] = []
    if args.mode in ("single", "both"):
        plans.append((f"single ({args.database})", args.database, False))
    if args.mode in ("redis", "both"):
        plans.append(("two processes + Redis (postgresql)", "postgresql", True))
    return [await run_scenario(name, database, two, options) for name, database, two in plans]


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(argv)
    _raise_fd_limit(2 * options.agents + 512)
    runner_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop  # the load generator must not be the slow side

        runner_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        results = runner.run(run(args, options))
    print_report(results, options)
    failed = False
    for result in results:
        for error in result.errors:
            print(f"error [{result.name}]: {error}", file=sys.stderr)
        failed = failed or bool(result.errors or result.refused or result.lost)
        if len(result.delivery_ms) + result.refused + result.lost < options.pauses:
            print(f"error [{result.name}]: only {len(result.delivery_ms)} of {options.pauses} pauses measured",
                  file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
