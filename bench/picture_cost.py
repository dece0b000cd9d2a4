"""Picture path cost: the server CPU one agent's webcam picture costs outside the detector.

One process, nothing else in it: the real application (``create_app``) on a fresh SQLite (or
``--database postgresql``) database, ``--printers`` printers linked to it, each with its agent's
websocket held and a print going (started by the agent's first status, as on a real farm), then
``--rounds`` rounds of, for every printer:

* a **claimed** picture: ``POST /api/v1/octo/pic/`` when the printer is due for scoring and its
  print for a timelapse frame (once per 10 s per printer on a farm): the printer read, the picture
  stored, both claims, the frame queued, the timelapse frame written;
* an **unclaimed** picture: the same upload again at once (within both intervals): read, stored,
  nothing claimed;
* the **apply** of the claimed frames, scored ahead of time (fixed ``FrameResult``s of a clean
  print: the detector is not measured), through ``WatchingPipeline.apply_scored`` in batches of
  ``--batch`` frames as the pipeline's apply stage does;
* a **status**: one websocket message of about 1 KB per printer (bench/agents.py's OctoPrint-shaped
  status), until the status writer has written them.

Requests are driven as raw ASGI calls (scope, one ``http.request`` message carrying the body built
byte for byte as OctoPrint-Obico sends it, the response collected): no HTTP client in the process
and no sockets, so what is measured is the application's own work. Excluded, therefore: uvicorn's
HTTP parsing (httptools, C, tens of µs) and the kernel's socket work. The measure is
``time.process_time()`` over each phase (all threads: the event loop, aiosqlite's thread, the
``to_thread`` pool), split by thread with psutil; with PostgreSQL, its backends' CPU is measured
too (psutil, when the server runs on this machine) and shown apart. A round of warm-up runs
first. The figures are per picture (per frame, per status); repeat ``--repeat`` times for the
spread.

    .venv/bin/python bench/picture_cost.py [--printers 50] [--rounds 6] [--batch 8] [--repeat 3]
                                           [--database sqlite|postgresql] [--profile cprofile.out]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import func, select, update

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agents as load  # bench/ is not a package
from capacity import USER_AGENT, drop_postgres, multipart_picture, render_pictures

from layerfleet.accounts import service as accounts
from layerfleet.app import create_app
from layerfleet.commands.bus import InProcessCommandBus
from layerfleet.config import Settings
from layerfleet.database import migrate
from layerfleet.detection.runtime import FrameResult
from layerfleet.fleet import service as fleet
from layerfleet.fleet.models import ActionOnFailure, Printer
from layerfleet.prints.models import Print
from layerfleet.watching.pipeline import PendingFrame, WatchingPipeline

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_picture_cost"
# What the detector says of a clean print's frame: a faint box, under the visualisation threshold.
CLEAN_RESULT = FrameResult(score=0.02, p=0.05, boxes=[(320.0, 240.0, 60.0, 40.0, 0.05)], width=640, height=480)


# ---------------------------------------------------------------- raw ASGI calls


async def asgi_post(app: Any, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
    """One HTTP request through the application as a server hands it over; its status and body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # the client stays connected until the answer
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


class AgentSocket:
    """An agent's websocket to ``/ws/dev/``, driven through the ASGI websocket protocol."""

    def __init__(self, app: Any, printer_id: int, token: str) -> None:
        self.agent = load.Agent(printer_id, token, load.Counters(), resume_after=0.0)
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.accepted = asyncio.Event()
        scope = {
            "type": "websocket", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "scheme": "ws", "path": "/ws/dev/", "raw_path": b"/ws/dev/", "query_string": b"", "root_path": "",
            "headers": [(b"authorization", f"Token {token}".encode()), (b"user-agent", USER_AGENT.encode())],
            "client": ("127.0.0.1", 50001), "server": ("127.0.0.1", 8000), "subprotocols": [],
        }
        self.incoming.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(app(scope, self.incoming.get, self._send))

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.accept":
            self.accepted.set()
        elif message["type"] == "websocket.close":
            raise RuntimeError(f"printer {self.agent.printer_id}: the server closed the agent's websocket")

    def send_status(self) -> None:
        frame = {"status": self.agent.status(), "current_print_ts": self.agent.print_started}
        self.incoming.put_nowait({"type": "websocket.receive", "text": json.dumps(frame)})

    async def close(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 10)


# ---------------------------------------------------------------- CPU accounting


class Cpu:
    """CPU seconds of this process (whole, its event loop thread, the others) and of PostgreSQL's backends."""

    def __init__(self, postgres_url: str | None) -> None:
        self.process = psutil.Process()
        self.loop_thread = threading.get_native_id()
        self.postgres_url = postgres_url

    async def sample(self) -> tuple[float, float, float]:
        threads = {t.id: t.user_time + t.system_time for t in self.process.threads()}
        database = sum((await load.postgres_backends_cpu(self.postgres_url)).values()) if self.postgres_url else 0.0
        return time.process_time(), threads.get(self.loop_thread, 0.0), database


@dataclass
class Phase:
    name: str
    unit: str
    total: list[float] = field(default_factory=list)  # ms of process CPU per unit, one per run
    loop: list[float] = field(default_factory=list)
    database: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


async def measured(cpu: Cpu, phase: Phase, units: int, work: Callable[[], Awaitable[None]],
                   totals: dict[str, list[float]]) -> None:
    """Run ``work`` and add its CPU to this run's totals of ``phase``."""
    before, wall = await cpu.sample(), time.perf_counter()
    await work()
    after, wall_after = await cpu.sample(), time.perf_counter()
    spent = [b - a for a, b in zip(before, after, strict=True)]
    run = totals.setdefault(phase.name, [0.0, 0.0, 0.0, 0.0, 0.0])
    run[0] += spent[0]
    run[1] += spent[1]
    run[2] += spent[2]
    run[3] += wall_after - wall
    run[4] += units


# ---------------------------------------------------------------- the farm


async def seed_farm(app: Any, count: int) -> list[tuple[int, str]]:
    """An owner and ``count`` printers that act on a failure with an alert only (their prints are
    never paused, so every round finds them printing)."""
    sessionmaker = app.state.services.sessionmaker
    async with sessionmaker() as session:
        owner = await accounts.create_user(session, "bench@example.com", None, dh_balance=1e7)
        printers = []
        for index in range(count):
            printer = await fleet.create_printer(session, owner, f"bench printer {index + 1}")
            printer.action_on_failure = ActionOnFailure.NONE.value
            printers.append(printer)
        await session.commit()
        return [(p.id, p.auth_token) for p in printers]


async def statuses_written(app: Any, sockets: list[AgentSocket]) -> None:
    """Wait until every socket's messages were handled and the status writer wrote them."""
    gateway = app.state.services.agent_gateway
    for _ in range(1000):
        connections = [gateway._connections.get(s.agent.printer_id) for s in sockets]
        if all(c is not None and not c.inbox and (c.status_written is None or c.status_written.done())
               for c in connections) and all(s.incoming.empty() for s in sockets):
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the statuses were not written within 10 s")


def drain(pipeline: WatchingPipeline) -> list[PendingFrame]:
    """The frames the uploads claimed, taken out of the (not running) pipeline's queue."""
    frames = []
    while not pipeline.queue.empty():
        frames.append(pipeline._taken(pipeline.queue.get_nowait()))
    pipeline._in_flight.clear()
    return frames


async def run_once(options: argparse.Namespace, picture: bytes, phases: dict[str, Phase]) -> None:
    with tempfile.TemporaryDirectory(prefix="layerfleet-picture-cost-") as tmp:
        root = Path(tmp)
        url = await load.fresh_database(options.database, options.postgres_url, root)
        await asyncio.to_thread(migrate, url)
        settings = Settings(
            data_dir=root / "data", database_url=url, secret_key="bench-picture-cost", detection_enabled=True,
            detection_interval_seconds=10.0, detection_batch_size=options.batch, timelapse_enabled=True,
            timelapse_frame_interval_seconds=10.0)
        app = create_app(settings, command_bus=InProcessCommandBus())
        services = app.state.services
        pipeline: WatchingPipeline = services.watching
        sockets: list[AgentSocket] = []
        try:
            linked = await seed_farm(app, options.printers)
            sockets = [AgentSocket(app, printer_id, token) for printer_id, token in linked]
            for socket in sockets:
                await asyncio.wait_for(socket.accepted.wait(), 10)
                socket.send_status()  # the first status starts the agent's print
            started = 0
            for _ in range(500):  # each first status goes the full way, in its own transaction
                async with services.sessionmaker() as session:
                    started = (await session.execute(select(func.count()).select_from(Printer).where(
                        Printer.current_print_id.is_not(None)))).scalar_one()
                if started == options.printers:
                    break
                await asyncio.sleep(0.02)
            else:
                raise RuntimeError(f"{started} of {options.printers} printers have a print going")
            await statuses_written(app, sockets)

            uploads = []
            for _, token in linked:
                body, content_type = multipart_picture(picture)
                uploads.append(([
                    ("host", "127.0.0.1:8000"), ("user-agent", USER_AGENT), ("accept-encoding", "gzip, deflate"),
                    ("accept", "*/*"), ("connection", "keep-alive"), ("authorization", f"Token {token}"),
                    ("content-length", str(len(body))), ("content-type", content_type)], body))

            async def post_all() -> None:
                for headers, body in uploads:
                    status, answer = await asgi_post(app, "/api/v1/octo/pic/", headers, body)
                    if status != 200:
                        raise RuntimeError(f"upload answered {status}: {answer[:200]!r}")

            cpu = Cpu(url if options.database == "postgresql" else None)
            profiler = cProfile.Profile() if options.profile else None
            totals: dict[str, list[float]] = {}
            for round_ in range(options.rounds + 1):
                measuring = round_ > 0  # round 0 warms up
                scratch: dict[str, list[float]] = {}
                async with services.sessionmaker() as session:  # every printer due again for both claims
                    await session.execute(update(Printer).values(last_scored_at=None))
                    await session.execute(update(Print).values(timelapse_frame_at=None))
                    await session.commit()
                if profiler is not None and measuring:
                    profiler.enable()
                await measured(cpu, phases["claimed"], len(uploads), post_all, totals if measuring else scratch)
                frames = drain(pipeline)
                if len(frames) != len(uploads):
                    raise RuntimeError(f"{len(frames)} of {len(uploads)} pictures were claimed for scoring")
                await measured(cpu, phases["unclaimed"], len(uploads), post_all, totals if measuring else scratch)
                if pipeline.queue.qsize():
                    raise RuntimeError("a picture within the interval was claimed")

                async def apply(frames: list[PendingFrame] = frames) -> None:
                    for start in range(0, len(frames), options.batch):
                        await pipeline.apply_scored([(f, CLEAN_RESULT) for f in frames[start:start + options.batch]])

                scored_before = pipeline.scored
                await measured(cpu, phases["apply"], len(frames), apply, totals if measuring else scratch)
                if pipeline.scored - scored_before != len(frames):
                    raise RuntimeError(f"{pipeline.scored - scored_before} of {len(frames)} frames were applied")

                async def report() -> None:
                    for socket in sockets:
                        socket.send_status()
                    await statuses_written(app, sockets)

                await measured(cpu, phases["status"], len(sockets), report, totals if measuring else scratch)
                if profiler is not None and measuring:
                    profiler.disable()
            if profiler is not None:
                profiler.dump_stats(options.profile)
            for name, (total, loop, database, wall, units) in totals.items():
                phase = phases[name]
                phase.total.append(1000 * total / units)
                phase.loop.append(1000 * loop / units)
                phase.database.append(1000 * database / units)
                phase.wall.append(1000 * wall / units)
        finally:
            for socket in sockets:
                await socket.close()
            await services.agent_gateway.close_all()
            await services.engine.dispose()
            if options.database == "postgresql":
                with contextlib.suppress(Exception):
                    await drop_postgres(options.postgres_url)


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    mean = statistics.mean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values) / mean:.0f} %" if mean else "0"


def print_table(options: argparse.Namespace, phases: dict[str, Phase]) -> None:
    load_1 = os.getloadavg()[0]
    print(f"\n{options.printers} printers × {options.rounds} rounds × {options.repeat} runs, {options.database}, "
          f"batch {options.batch}; load average (1 min) at the end {load_1:.2f}\n")
    database = options.database == "postgresql"
    head = "| per | process CPU ms | of it, event loop thread | other threads | wall ms |"
    print(head + (" PostgreSQL backends ms |" if database else ""))
    print("|---" * (6 if database else 5) + "|")
    for phase in phases.values():
        others = [t - lp for t, lp in zip(phase.total, phase.loop, strict=True)]
        row = (f"| {phase.unit} | {spread(phase.total)} | {statistics.mean(phase.loop):.2f} | "
               f"{statistics.mean(others):.2f} | {statistics.mean(phase.wall):.2f} |")
        print(row + (f" {statistics.mean(phase.database):.2f} |" if database else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--printers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6, help="measured rounds per run (one more warms up)")
    parser.add_argument("--batch", type=int, default=8, help="scored frames applied together")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each on a fresh database")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="created for each run and dropped")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the measured rounds (last run) here")
    return parser.parse_args(argv)


async def run(options: argparse.Namespace) -> dict[str, Phase]:
    phases = {
        "claimed": Phase("claimed", "claimed picture (scored + timelapse frame)"),
        "unclaimed": Phase("unclaimed", "unclaimed picture"),
        "apply": Phase("apply", f"scored frame applied (batches of {options.batch})"),
        "status": Phase("status", "websocket status"),
    }
    picture = render_pictures(1, 0.0)[0][0]
    for index in range(options.repeat):
        print(f"run {index + 1} of {options.repeat} …", flush=True)
        await run_once(options, picture, phases)
    return phases


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    phases = asyncio.run(run(options))
    print_table(options, phases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
