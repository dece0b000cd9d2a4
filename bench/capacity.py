"""Capacity: how many watched printers one ``layerfleet serve`` process keeps up with.

N simulated printers, each as an OctoPrint-Obico agent would be, against a real server process:

* linked like an agent: an admin asks for a one-time code (``GET /api/v1/onetimeverificationcodes/``),
  the agent redeems it (``POST /api/v1/octo/verify/?code=…``) for its printer token and reads its
  printer (``GET /api/v1/octo/printer/``); the printer's action on failure is set to ``NONE``
  (alerts only), so a spaghetti picture does not pause the printer and take it out of the load;
* its websocket to ``/ws/dev/`` held, with a printing status every ``--status-interval`` seconds
  (bench/agents.py's agent: OctoPrint's shape, about 1 KB);
* a 640×480 JPEG (rendered ahead of time by ``simulator/render.py``; ``--spaghetti-share`` of
  the printers show a failure) posted every ``--picture-interval`` seconds, counted from the end
  of the previous upload as the plugin's loop does, through ``POST /api/v1/octo/pic/`` byte for
  byte as OctoPrint-Obico 2.6 sends it with ``requests`` (headers in its order, a multipart body
  with the one part ``pic``, file name ``pic``, no content type; see the protocol capture). The
  upload client is a few lines over asyncio streams: as cheap as a load generator gets, one
  connection per agent, opened again when the server closed it between uploads.

After ``--warmup`` seconds a steady window of ``--duration`` seconds is measured, then the load
goes on for ``--drain`` seconds so frames uploaded late in the window can still be scored. Report:

* upload latency p50 / p99 / max (request written → response read) and HTTP errors (non-200,
  resets, timeouts), for uploads started in the window;
* frames scored vs uploaded: prediction frames in the database whose picture arrived in the
  window, against the uploads of the window (and the server's own counters from ``/metrics``);
* per-printer scoring gap p50 / p99 / max: seconds between consecutive scored frames of a printer
  (by arrival; a printer whose last scored frame is older than the window's end by more than the
  gap limit adds that open gap too, one with none adds the whole window);
* scoring lag p50 / p99 (the server's histogram) and the oldest unscored frame seen (sampled);
* frames dropped (``layerfleet_watching_frames_dropped_total`` over the window);
* server CPU in cores, split by thread (psutil; Python threads named by a ``py-spy dump`` of the
  server when py-spy is installed, the others by their kernel name), RSS at the end and its peak;
  with PostgreSQL, its backends serving the bench database on a line of their own;
* this process's CPU and event-loop lag, and the CPU the rest of the machine used meanwhile
  (all busy CPU minus server, database backends and this process) and steal: on a shared
  machine, figures taken while other programs run are not the server's alone.

A step holds when p99 upload < 500 ms, no HTTP error, no frame dropped and the p99 gap ≤ 12 s.
``--find`` runs the steps of ``--steps`` (300, 600, 1000, 1500) in turn, each on a fresh server
and database, and names the largest that holds. Each step prints a markdown row for
docs/benchmarks.md.

    python bench/capacity.py [--printers 300] [--warmup 30] [--duration 60] [--drain 20]
                             [--database sqlite|postgresql] [--find [--steps 300,600,1000,1500]]

PostgreSQL runs in a database of the bench's own (``--postgres-url``), created for each step
and dropped after it. Exits 1 when a step does not hold (or, with --find, when none does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agents as load  # bench/ is not a package

from layerfleet.accounts import service as accounts
from layerfleet.database import create_engine, create_sessionmaker, migrate
from layerfleet.detection.models import PredictionFrame
from layerfleet.prints.models import Print
from layerfleet.simulator.render import Scene, render_frame

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_capacity"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
EMAIL = "capacity@example.com"
DEFAULT_STEPS = (300, 600, 1000, 1500)
# What a step must show to hold.
MAX_P99_UPLOAD_MS = 500.0
MAX_P99_GAP_SECONDS = 12.0
# The plugin's requests call (OctoPrint-Obico 2.6 with requests 2.34, as captured).
USER_AGENT = "python-requests/2.34.2"
UPLOAD_TIMEOUT = 30.0
METRICS_SAMPLE_SECONDS = 2.0
PICTURES = 24  # distinct pictures rendered; printers share them


# ---------------------------------------------------------------- pictures


def render_pictures(count: int, spaghetti_share: float, seed: int = 7) -> tuple[list[bytes], list[bytes]]:
    """Clean and spaghetti 640×480 JPEGs of the simulator's scenes, as its camera encodes them."""
    rng = random.Random(seed)
    clean: list[bytes] = []
    failing: list[bytes] = []
    failing_count = max(1, round(count * spaghetti_share)) if spaghetti_share > 0 else 0
    for index in range(count):
        scene = Scene.random(rng)
        spaghetti = rng.uniform(0.6, 1.0) if index < failing_count else 0.0
        image, _ = render_frame(scene, rng.uniform(0.15, 0.9), spaghetti=spaghetti, seed=index)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=80)  # simulator.printer.SimulatedCamera's quality
        (failing if spaghetti else clean).append(out.getvalue())
    return clean, failing


# ---------------------------------------------------------------- the agent's picture uploads


def multipart_picture(jpeg: bytes) -> tuple[bytes, str]:
    """The body requests builds for ``files={"pic": jpeg}``, and its content type."""
    boundary = os.urandom(16).hex()  # urllib3's choose_boundary
    head = (f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="pic"; filename="pic"\r\n\r\n').encode()
    return head + jpeg + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class UploadFailed(Exception):
    pass


class PictureUploader:
    """One agent's HTTP connection: keep-alive, opened again when the server closed it."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def post(self, jpeg: bytes) -> int:
        body, content_type = multipart_picture(jpeg)
        head = (
            "POST /api/v1/octo/pic/ HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Accept-Encoding: gzip, deflate\r\n"
            "Accept: */*\r\n"
            "Connection: keep-alive\r\n"
            f"Authorization: Token {self.token}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        if self.reader is not None and self.reader.at_eof():
            await self._close()  # the server's keep-alive timeout passed: urllib3 reconnects too
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(head + body)
            await self.writer.drain()
            status_line = await self.reader.readline()
            if not status_line:
                raise UploadFailed("connection closed before the answer")
            status = int(status_line.split(b" ", 2)[1])
            length, close = 0, False
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            await self._close()
            raise UploadFailed(repr(exc)) from None
        if close:
            await self._close()
        return status


# ---------------------------------------------------------------- one simulated printer


@dataclass
class Upload:
    started: float  # wall clock (time.time()), to compare with the server's arrival times
    latency_ms: float
    error: str | None

    def holds_arrival(self, arrived: float) -> bool:
        """Whether the server's arrival time of a frame falls within this upload (same clock)."""
        return self.started - 0.005 <= arrived <= self.started + self.latency_ms / 1000 + 0.005


@dataclass(eq=False)
class Printer:
    printer_id: int
    token: str
    picture: bytes
    agent: load.Agent
    uploader: PictureUploader
    uploads: list[Upload] = field(default_factory=list)
    stopping: bool = False

    async def post_pictures(self, interval: float) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        while not self.stopping:
            started, clock = time.time(), time.perf_counter()
            try:
                status = await asyncio.wait_for(self.uploader.post(self.picture), UPLOAD_TIMEOUT)
                error = None if status == 200 else f"HTTP {status}"
            except TimeoutError:
                await self.uploader._close()
                error = "timeout"
            except UploadFailed as exc:
                error = str(exc)
            except OSError as exc:  # could not connect
                error = repr(exc)
            self.uploads.append(Upload(started, 1000 * (time.perf_counter() - clock), error))
            # The plugin's loop: the next picture an interval after this one was sent.
            await asyncio.sleep(interval)


# ---------------------------------------------------------------- server side


@dataclass(frozen=True)
class Options:
    printers: int
    warmup: float
    duration: float
    drain: float
    status_interval: float
    picture_interval: float
    spaghetti_share: float
    database: str
    postgres_url: str
    link_concurrency: int
    server_log_level: str
    keep_logs: Path | None
    workers: int = 0
    redis_url: str = DEFAULT_REDIS_URL
    detection_threads: int = 0
    model: Path | None = None  # the detector's ONNX file (default: the shipped one)
    second_opinion: Path | None = None  # with model: its second opinion (default: none)


async def seed_owner(url: str) -> str:
    """The farm's owner and an API token; printers are linked through the API like agents."""
    await asyncio.to_thread(migrate, url)
    engine = create_engine(url, pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            # Enough detection hours for any run: running out would stop the watching measured.
            owner = await accounts.create_user(session, EMAIL, None, dh_balance=1e7)
            key = (await accounts.create_api_token(session, owner, "capacity bench")).key
            await session.commit()
    finally:
        await engine.dispose()
    return key


async def link_printers(base_url: str, api_key: str, count: int, concurrency: int) -> list[tuple[int, str]]:
    """(printer id, agent token) of ``count`` printers linked with one-time codes, as agents do.

    A member has one live code at a time, so a code is asked for and redeemed before the next;
    what follows (the agent reading its printer, the admin's settings) goes on in parallel.
    """
    linked: list[tuple[int, str]] = []
    gate = asyncio.Semaphore(concurrency)
    admin = {"Authorization": f"Token {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def set_up(index: int, printer_id: int, token: str) -> None:
            async with gate:
                agent = {"Authorization": f"Token {token}", "User-Agent": USER_AGENT}
                (await client.get("/api/v1/octo/printer/", headers=agent)).raise_for_status()
                (await client.patch(f"/api/v1/printers/{printer_id}/", headers=admin,
                                    json={"name": f"capacity printer {index + 1}",
                                          "action_on_failure": "NONE"})).raise_for_status()
                linked.append((printer_id, token))

        pending: list[asyncio.Task[None]] = []
        for index in range(count):
            answer = await client.get("/api/v1/onetimeverificationcodes/", headers=admin)
            answer.raise_for_status()
            verified = await client.post("/api/v1/octo/verify/", params={"code": answer.json()["code"]},
                                         headers={"User-Agent": USER_AGENT})
            verified.raise_for_status()
            printer = verified.json()["printer"]
            pending.append(asyncio.create_task(set_up(index, printer["id"], printer["auth_token"])))
        await asyncio.gather(*pending)
    return sorted(linked)


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    answer = await client.get("/metrics")
    answer.raise_for_status()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def histogram_quantile(before: dict[str, float], after: dict[str, float], name: str, q: float) -> float:
    """Prometheus's histogram_quantile over the window's increase (linear within a bucket)."""
    buckets: list[tuple[float, float]] = []
    for key, value in after.items():
        if key.startswith(f'{name}_bucket{{le="'):
            bound = float(key.split('le="', 1)[1].rstrip('"}'))
            buckets.append((bound, value - before.get(key, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return float("nan")


class ThreadCpu:
    """CPU seconds of each thread of a process (psutil), named when we can."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.process = psutil.Process(pid)

    def seconds(self) -> dict[int, float]:
        return {t.id: t.user_time + t.system_time for t in self.process.threads()}

    def kernel_name(self, tid: int) -> str:
        try:
            return Path(f"/proc/{self.pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            return "?"

    def python_names(self) -> dict[int, str]:
        """Python thread names by native id, from ``py-spy dump`` (needs py-spy and ptrace rights)."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            return {}
        try:
            out = subprocess.run([spy, "dump", "--pid", str(self.pid)], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
        names: dict[int, str] = {}
        for line in out.splitlines():
            # Thread 4293 (idle): "MainThread"
            if line.startswith("Thread ") and ":" in line:
                ident = line.split()[1]
                with contextlib.suppress(ValueError):
                    tid = int(ident, 16) if ident.startswith("0x") else int(ident)
                    names[tid] = line.rsplit(":", 1)[1].strip().strip('"')
        return names


def thread_group(tid: int, pid: int, python_names: dict[int, str], kernel_name: Callable[[int], str]) -> str:
    """What a server thread is, as far as its name tells; threads of one pool share a group."""
    if tid == pid:
        return "event loop"
    name = python_names.get(tid)
    if name is None:
        # Threads Python did not start. ONNX Runtime's intra-op pool leaves its threads unnamed,
        # so they keep the process's name; libuv names its own.
        comm = kernel_name(tid)
        return "native, unnamed (ONNX Runtime's pool)" if comm.startswith("python") else f"native {comm}"
    if name.endswith("(_connection_worker_thread)"):
        return "aiosqlite connections"
    if name.startswith(("uvloop_", "asyncio_", "ThreadPoolExecutor")):
        return "to_thread executor (detector calls, file work)"
    return name


# ---------------------------------------------------------------- one step


@dataclass
class StepResult:
    printers: int
    database: str
    uploads: int = 0
    upload_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    scored: int = 0
    scored_by_server: float = float("nan")
    received_by_server: float = float("nan")
    gaps: list[float] = field(default_factory=list)
    lag_p50: float = float("nan")
    lag_p99: float = float("nan")
    oldest_unscored_max: float = 0.0
    dropped: float = float("nan")
    window: float = 0.0
    server_cores: float = float("nan")
    workers: int = 0
    worker_cores: float = float("nan")  # all scoring workers together
    threads: list[tuple[str, float]] = field(default_factory=list)  # (name, cores), busiest first
    database_cores: float = float("nan")
    rss_mib: float = float("nan")
    rss_peak_mib: float = float("nan")
    loadgen_cores: float = float("nan")
    loadgen_lag_p99_ms: float = float("nan")
    other_cores: float = float("nan")
    steal_cores: float = float("nan")
    link_seconds: float = 0.0
    storage_bytes_per_s: float = float("nan")  # growth of the data directory (media, and SQLite's file)
    db_commits_per_s: float = float("nan")  # PostgreSQL only (pg_stat_database)
    db_rows_written_per_s: float = float("nan")
    redis_commands_per_s: float = float("nan")  # with --workers: every command the Redis server ran
    problems: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def holds(self) -> bool:
        return (not self.problems and self.uploads > 0 and self.error_count == 0 and self.dropped == 0
                and load.percentile(self.upload_ms, 99) < MAX_P99_UPLOAD_MS
                and load.percentile(self.gaps, 99) <= MAX_P99_GAP_SECONDS)


def scoring_gaps(arrivals: dict[int, list[float]], printer_ids: list[int], start: float, end: float) -> list[float]:
    gaps: list[float] = []
    for printer_id in printer_ids:
        times = sorted(arrivals.get(printer_id, []))
        if not times:
            gaps.append(end - start)
            continue
        gaps += [b - a for a, b in pairwise(times) if start <= b <= end]
        if end - times[-1] > MAX_P99_GAP_SECONDS:
            gaps.append(end - times[-1])
    return gaps


async def scored_arrivals(url: str, since: float) -> dict[int, list[float]]:
    """Arrival times (epoch seconds) of the scored frames of each printer since ``since``."""
    engine = create_engine(url, pooled=False)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(Print.printer_id, PredictionFrame.taken_at)
                .join(Print, Print.id == PredictionFrame.print_id)
                .where(PredictionFrame.taken_at >= datetime.fromtimestamp(since, UTC)))
            found: dict[int, list[float]] = {}
            for printer_id, taken_at in rows:
                if printer_id is not None:
                    found.setdefault(printer_id, []).append(taken_at.timestamp())
            return found
    finally:
        await engine.dispose()


class WorkerProcess:
    """``layerfleet worker`` scoring the server's frames (LAYERFLEET_SCORING_ON_WORKERS), with
    the server's settings and data directory."""

    def __init__(self, name: str, server: Any) -> None:
        self.name = name
        self.server = server
        self.log_path: Path = server.data_dir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "layerfleet", "worker", env=self.server.env, stdout=log,
                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while b"scoring frames" not in self.log_path.read_bytes():
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{load._tail(self.log_path)}")
            await asyncio.sleep(0.2)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return float(load._cpu_seconds(self.process.pid))

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def forget_redis_keys(url: str, namespace: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def folder_bytes(folder: Path) -> int:
    total = 0
    for path, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(path, name)).st_size
    return total


async def postgres_writes(url: str) -> tuple[int, int]:
    """Commits and rows inserted, updated or deleted in the bench's database so far."""
    connection = await asyncpg.connect(load._admin_dsn(url))
    try:
        row = await connection.fetchrow(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted AS written FROM pg_stat_database "
            "WHERE datname = $1", make_url(url).database)
        return (int(row["xact_commit"]), int(row["written"])) if row else (0, 0)
    finally:
        await connection.close()


async def redis_commands(url: str) -> int:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        stats: Any = await client.info("stats")
        return int(stats["total_commands_processed"])
    finally:
        await client.aclose()


async def drop_postgres(url: str) -> None:
    connection = await asyncpg.connect(load._admin_dsn(url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await connection.close()


async def sample_metrics(client: httpx.AsyncClient, result: StepResult) -> None:
    while True:
        with contextlib.suppress(httpx.HTTPError):
            sample = await client.get("/metrics", timeout=10)
            for line in sample.text.splitlines():
                if line.startswith("layerfleet_watching_oldest_unscored_frame_age_seconds "):
                    result.oldest_unscored_max = max(result.oldest_unscored_max, float(line.split()[1]))
        await asyncio.sleep(METRICS_SAMPLE_SECONDS)


async def run_step(options: Options, pictures: tuple[list[bytes], list[bytes]]) -> StepResult:
    n = options.printers
    result = StepResult(n, options.database, workers=options.workers)
    clean, failing = pictures
    with tempfile.TemporaryDirectory(prefix="layerfleet-capacity-") as tmp:
        root = Path(tmp)
        url = await load.fresh_database(options.database, options.postgres_url, root)
        env = {"LAYERFLEET_DATABASE_URL": url, "LAYERFLEET_LOG_LEVEL": options.server_log_level}
        if options.detection_threads:
            env["LAYERFLEET_DETECTION_THREADS"] = str(options.detection_threads)
        if options.model is not None:
            env["LAYERFLEET_MODEL_PATH"] = str(options.model.resolve())
        if options.second_opinion is not None:
            env["LAYERFLEET_SECOND_OPINION_PATH"] = str(options.second_opinion.resolve())
        namespace = f"bench-capacity-{os.getpid()}-{n}"
        if options.workers:
            env |= {"LAYERFLEET_REDIS_URL": options.redis_url, "LAYERFLEET_REDIS_NAMESPACE": namespace,
                    "LAYERFLEET_SCORING_ON_WORKERS": "true"}
        server = load.ServerProcess("capacity", root / "server", env)
        workers = [WorkerProcess(f"worker-{index}", server) for index in range(options.workers)]
        printers: list[Printer] = []
        tasks: list[asyncio.Task[Any]] = []
        counters = load.Counters()
        try:
            api_key = await seed_owner(url)
            await server.start()
            for worker in workers:
                await worker.start()
            print(f"[{n} {options.database}] linking {n} printers through the API …", flush=True)
            started = time.monotonic()
            linked = await link_printers(server.base_url, api_key, n, options.link_concurrency)
            result.link_seconds = time.monotonic() - started
            failing_printers = set(random.Random(n).sample(range(n), round(n * options.spaghetti_share)))
            for index, (printer_id, token) in enumerate(linked):
                picture = (failing[index % len(failing)] if index in failing_printers and failing
                           else clean[index % len(clean)])
                printers.append(Printer(printer_id, token, picture,
                                        load.Agent(printer_id, token, counters, resume_after=0.0),
                                        PictureUploader("127.0.0.1", server.port, token)))

            print(f"[{n} {options.database}] connecting {n} agents …", flush=True)
            await load._connect_all([p.agent for p in printers], server.base_url.replace("http", "ws") + "/ws/dev/",
                                    50)
            tasks += [asyncio.create_task(p.agent.read()) for p in printers]
            tasks += [asyncio.create_task(p.agent.report_periodically(options.status_interval)) for p in printers]
            tasks += [asyncio.create_task(p.post_pictures(options.picture_interval)) for p in printers]
            metrics_client = httpx.AsyncClient(base_url=server.base_url,
                                               headers={"Authorization": f"Token {api_key}"}, timeout=30)
            tasks.append(asyncio.create_task(sample_metrics(metrics_client, result)))
            lag = load.LoopLag()
            tasks.append(asyncio.create_task(lag.run()))
            print(f"[{n} {options.database}] warm-up {options.warmup:.0f} s …", flush=True)
            await asyncio.sleep(options.warmup)

            print(f"[{n} {options.database}] steady window {options.duration:.0f} s …", flush=True)
            threads = ThreadCpu(server.pid)
            metrics_before = await scrape(metrics_client)
            threads_before, server_before = threads.seconds(), server.cpu_seconds()
            workers_before = sum(w.cpu_seconds() for w in workers)
            storage_before = await asyncio.to_thread(folder_bytes, root)
            writes_before = await postgres_writes(url) if options.database == "postgresql" else (0, 0)
            redis_before = await redis_commands(options.redis_url) if workers else 0
            backends_before = (await load.postgres_backends_cpu(url)) if options.database == "postgresql" else {}
            busy_before, steal_before = load._machine_seconds()
            loadgen_before = load._loadgen_cpu()
            lag.samples.clear()
            result.oldest_unscored_max = 0.0
            window_start, clock = time.time(), time.monotonic()
            await asyncio.sleep(options.duration / 2)
            python_names = await asyncio.to_thread(threads.python_names)  # mid-window, when every thread runs
            await asyncio.sleep(max(0.0, options.duration - (time.monotonic() - clock)))
            window = time.monotonic() - clock
            window_end = time.time()
            threads_after, server_after = threads.seconds(), server.cpu_seconds()
            workers_cpu = sum(w.cpu_seconds() for w in workers) - workers_before
            result.storage_bytes_per_s = (await asyncio.to_thread(folder_bytes, root) - storage_before) / (
                time.monotonic() - clock)
            if options.database == "postgresql":
                commits, rows = await postgres_writes(url)
                result.db_commits_per_s = (commits - writes_before[0]) / (time.monotonic() - clock)
                result.db_rows_written_per_s = (rows - writes_before[1]) / (time.monotonic() - clock)
            if workers:
                result.redis_commands_per_s = (await redis_commands(options.redis_url) - redis_before) / (
                    time.monotonic() - clock)
            loadgen_cpu = load._loadgen_cpu() - loadgen_before
            busy_after, steal_after = load._machine_seconds()
            database_cpu = 0.0
            if options.database == "postgresql":
                after = await load.postgres_backends_cpu(url)
                database_cpu = sum(cpu - backends_before.get(pid, 0.0) for pid, cpu in after.items())
                result.database_cores = database_cpu / window
            metrics_after = await scrape(metrics_client)
            result.window = window
            result.server_cores = (server_after - server_before) / window
            result.loadgen_cores = loadgen_cpu / window
            result.loadgen_lag_p99_ms = 1000 * load.percentile(lag.samples, 99)
            if workers:
                result.worker_cores = workers_cpu / window
            result.other_cores = max(0.0, busy_after - busy_before - (server_after - server_before)
                                     - database_cpu - loadgen_cpu - (workers_cpu if workers else 0.0)) / window
            result.steal_cores = (steal_after - steal_before) / window
            used = {tid: threads_after[tid] - threads_before.get(tid, 0.0) for tid in threads_after}
            named: dict[str, tuple[int, float]] = {}
            for tid, seconds in used.items():
                name = thread_group(tid, server.pid, python_names, threads.kernel_name)
                count, total = named.get(name, (0, 0.0))
                named[name] = (count + 1, total + seconds / window)
            result.threads = sorted(((f"{name} ×{count}" if count > 1 else name, cores)
                                     for name, (count, cores) in named.items()), key=lambda item: -item[1])
            result.rss_mib = server.rss_mib()
            result.rss_peak_mib = load._memory_mib(server.pid, "VmHWM")

            def moved(name: str) -> float:
                return metrics_after.get(name, float("nan")) - metrics_before.get(name, 0.0)

            result.dropped = moved("layerfleet_watching_frames_dropped_total")
            result.scored_by_server = moved("layerfleet_watching_frames_scored_total")
            result.received_by_server = moved("layerfleet_watching_pictures_received_total")
            result.lag_p50 = histogram_quantile(metrics_before, metrics_after,
                                                "layerfleet_watching_scoring_lag_seconds", 0.5)
            result.lag_p99 = histogram_quantile(metrics_before, metrics_after,
                                                "layerfleet_watching_scoring_lag_seconds", 0.99)

            print(f"[{n} {options.database}] drain {options.drain:.0f} s (frames of the window still scored) …",
                  flush=True)
            await asyncio.sleep(options.drain)
            arrivals = await scored_arrivals(url, window_start - 3 * options.picture_interval)
            result.gaps = scoring_gaps(arrivals, [p.printer_id for p in printers], window_start, window_end)
            # Each upload of the window matched with its printer's scored frame, if any: the
            # window's edges cut uploads and arrivals alike.
            result.scored = sum(
                1 for p in printers for u in p.uploads
                if u.error is None and window_start <= u.started <= window_end
                and any(u.holds_arrival(t) for t in arrivals.get(p.printer_id, ())))
            in_window = [u for p in printers for u in p.uploads if window_start <= u.started <= window_end]
            result.uploads = sum(1 for u in in_window if u.error is None)
            result.upload_ms = [u.latency_ms for u in in_window if u.error is None]
            for upload in in_window:
                if upload.error is not None:
                    result.errors[upload.error[:80]] = result.errors.get(upload.error[:80], 0) + 1
            await metrics_client.aclose()
        except Exception as exc:  # reported with the rest, so the other steps still run
            result.problems.append(f"the step stopped: {exc!r}")
        finally:
            measured_log = load._log_size(server.log_path)
            for printer in printers:
                printer.stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(p.agent.close() for p in printers), return_exceptions=True)
            await asyncio.gather(*(p.uploader._close() for p in printers), return_exceptions=True)
            died = server.process is not None and not server.alive()
            for worker in workers:
                if worker.process is not None and worker.process.returncode is not None:
                    result.problems.append(f"{worker.name} died:\n{load._tail(worker.log_path)}")
                await worker.stop()
                logged_by_worker = load._logged_errors(worker.log_path, load._log_size(worker.log_path))
                if logged_by_worker:
                    result.problems.append(f"{worker.name} logged {sum(logged_by_worker.values())} errors: "
                                           f"{logged_by_worker}")
            await server.stop()
            if options.keep_logs is not None:
                options.keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(server.log_path, options.keep_logs / f"capacity-{n}-{options.database}.log")
            if died:
                result.problems.append(f"the server died:\n{load._tail(server.log_path)}")
            logged = load._logged_errors(server.log_path, measured_log)
            if logged:
                result.problems.append(f"the server logged {sum(logged.values())} errors: {logged}")
            if options.database == "postgresql":
                with contextlib.suppress(Exception):
                    await drop_postgres(options.postgres_url)
            if workers:
                with contextlib.suppress(Exception):
                    await forget_redis_keys(options.redis_url, namespace)
    if counters.lost_connections:
        result.problems.append(f"{counters.lost_connections} agents lost their websocket ({counters.close_codes})")
    if counters.unexpected_commands:
        result.problems.append(f"{counters.unexpected_commands} commands reached agents (none were asked for)")
    return result


# ---------------------------------------------------------------- report


def _f(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}" if value == value else "–"


TABLE_HEAD = (
    "| printers | database | upload p50 / p99 / max ms | HTTP errors | scored / uploaded (server: scored / received) "
    "| scoring gap p50 / p99 / max s | scoring lag p50 / p99 s, oldest unscored s | frames dropped "
    "| server CPU, cores (busiest threads) | scoring workers, cores | DB backends, cores | server RSS / peak MiB "
    "| load gen., cores (loop lag p99 ms) | rest of machine, cores (steal) | holds |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(r: StepResult) -> str:
    busiest = ", ".join(f"{name} {cores:.2f}" for name, cores in r.threads[:4])
    ms = r.upload_ms
    return (
        f"| {r.printers:,} | {r.database} | {_f(load.percentile(ms, 50))} / {_f(load.percentile(ms, 99))} / "
        f"{_f(max(ms, default=float('nan')))} | {r.error_count} | {r.scored} / {r.uploads} "
        f"({_f(r.scored_by_server)} / {_f(r.received_by_server)}) | {_f(load.percentile(r.gaps, 50), 1)} / "
        f"{_f(load.percentile(r.gaps, 99), 1)} / {_f(max(r.gaps, default=float('nan')), 1)} "
        f"| {_f(r.lag_p50, 1)} / {_f(r.lag_p99, 1)}, {_f(r.oldest_unscored_max, 1)} | {_f(r.dropped)} "
        f"| {_f(r.server_cores, 2)} ({busiest}) | {_f(r.worker_cores, 2) + (f' ({r.workers})' if r.workers else '')} "
        f"| {_f(r.database_cores, 2)} | {_f(r.rss_mib)} / {_f(r.rss_peak_mib)} "
        f"| {_f(r.loadgen_cores, 2)} ({_f(r.loadgen_lag_p99_ms, 1)}) | {_f(r.other_cores, 2)} ({_f(r.steal_cores, 2)}) "
        f"| {'yes' if r.holds else 'no'} |"
    )


def per_printer_costs(r: StepResult) -> str:
    """What one printer costs at this step: the figures docs/scaling.md is made of."""
    n = r.printers
    cores = r.server_cores + (r.worker_cores if r.workers else 0.0) + (
        r.database_cores if r.database_cores == r.database_cores else 0.0)
    day_mb = r.storage_bytes_per_s * 86400 / n / 1e6
    return (f"per printer: {1000 * cores / n:.2f} millicores (server{' + workers' if r.workers else ''}"
            f"{' + PostgreSQL' if r.database == 'postgresql' else ''}), {r.rss_mib / n:.2f} MiB server RSS, "
            f"{day_mb:,.0f} MB stored per day printing, {r.db_commits_per_s / n:.3f} commits/s and "
            f"{r.db_rows_written_per_s / n:.2f} rows written/s (PostgreSQL), "
            f"{r.redis_commands_per_s / n:.2f} Redis commands/s (with workers)")


def print_step(r: StepResult) -> None:
    print()
    with_workers = f" with {r.workers} scoring workers" if r.workers else ""
    print(f"{r.printers} printers on {r.database}{with_workers}: window {r.window:.0f} s, "
          f"linked in {r.link_seconds:.0f} s")
    print(TABLE_HEAD)
    print(table_row(r))
    print("server CPU by thread, cores: " + ", ".join(f"{name} {cores:.3f}" for name, cores in r.threads[:12]))
    print(per_printer_costs(r))
    if r.errors:
        print(f"HTTP errors: {r.errors}")
    for problem in r.problems:
        print(f"problem: {problem}", file=sys.stderr)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--printers", type=int, default=300, help="printers of a single step")
    parser.add_argument("--find", action="store_true", help="step through --steps and name the largest that holds")
    parser.add_argument("--steps", default=",".join(str(s) for s in DEFAULT_STEPS))
    parser.add_argument("--all-steps", action="store_true", help="with --find: go on after a step that fails")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=60.0, help="steady window, seconds")
    parser.add_argument("--drain", type=float, default=20.0,
                        help="seconds the load goes on after the window before scored frames are counted")
    parser.add_argument("--status-interval", type=float, default=10.0)
    parser.add_argument("--picture-interval", type=float, default=10.0)
    parser.add_argument("--spaghetti-share", type=float, default=0.1, help="share of printers showing spaghetti")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="created for each step and dropped")
    parser.add_argument("--link-concurrency", type=int, default=8)
    parser.add_argument("--server-log-level", default="info")
    parser.add_argument("--keep-logs", type=Path, help="copy the server's log of each step into this folder")
    parser.add_argument("--workers", type=int, default=0,
                        help="scoring on this many `layerfleet worker` processes (the server only receives; Redis)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="with --workers")
    parser.add_argument("--detection-threads", type=int, default=0,
                        help="LAYERFLEET_DETECTION_THREADS of the server and workers (default: all cores)")
    parser.add_argument("--model", type=Path, help="the detector's ONNX file (default: the shipped one), "
                        "to run an earlier model beside the shipped one")
    parser.add_argument("--second-opinion", type=Path,
                        help="with --model: its second opinion (else an earlier model scores alone)")
    args = parser.parse_args(argv)
    if args.printers < 1 or args.duration <= 0 or not 0 <= args.spaghetti_share <= 1:
        parser.error("--printers ≥ 1, --duration > 0 and 0 ≤ --spaghetti-share ≤ 1")
    options = Options(
        printers=args.printers, warmup=args.warmup, duration=args.duration, drain=args.drain,
        status_interval=args.status_interval, picture_interval=args.picture_interval,
        spaghetti_share=args.spaghetti_share, database=args.database, postgres_url=args.postgres_url,
        link_concurrency=args.link_concurrency, server_log_level=args.server_log_level, keep_logs=args.keep_logs,
        workers=args.workers, redis_url=args.redis_url, detection_threads=args.detection_threads, model=args.model,
        second_opinion=args.second_opinion,
    )
    return args, options


async def run(args: argparse.Namespace, options: Options) -> list[StepResult]:
    pictures = await asyncio.to_thread(render_pictures, PICTURES, options.spaghetti_share)
    sizes = [len(p) for p in pictures[0] + pictures[1]]
    print(f"{len(pictures[0])} clean and {len(pictures[1])} spaghetti pictures, 640×480, "
          f"{statistics.mean(sizes) / 1024:.0f} KiB on average", flush=True)
    steps = [int(s) for s in args.steps.split(",")] if args.find else [options.printers]
    results: list[StepResult] = []
    for printers in steps:
        step = Options(**{**options.__dict__, "printers": printers})
        result = await run_step(step, pictures)
        print_step(result)
        results.append(result)
        if args.find and not result.holds and not args.all_steps:
            break
    return results


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(argv)
    biggest = max([int(s) for s in args.steps.split(",")] if args.find else [options.printers])
    # Per printer: a websocket and an upload connection here, and both in the server (which
    # inherits this limit).
    load._raise_fd_limit(3 * biggest + 512)
    runner_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop  # the load generator must not be the slow side

        runner_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        results = runner.run(run(args, options))
    print()
    print(f"Command: python bench/capacity.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(TABLE_HEAD)
    for result in results:
        print(table_row(result))
    holding = [r.printers for r in results if r.holds]
    if args.find:
        print(f"\nlargest N that holds on {options.database} (p99 upload < {MAX_P99_UPLOAD_MS:.0f} ms, 0 errors, "
              f"0 drops, p99 gap ≤ {MAX_P99_GAP_SECONDS:.0f} s): {max(holding) if holding else 'none'}")
        return 0 if holding else 1
    return 0 if all(r.holds for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
