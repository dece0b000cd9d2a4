"""Notification delivery under load: N printers' events → a real server process → a local receiver.

The bench makes an organization with ``--printers`` printers and one signed-webhook target (a
local HTTP receiver in this process) and starts ``layerfleet serve`` on the database. Events come
from one of two sources, spread over ``--spread`` seconds:

* ``--source agents`` (default): one simulated Obico agent per printer (bench/agents.py's) holds
  a websocket to the server, starts a print at connect and sends ``PrintDone`` at its moment —
  the real path: gateway → print lifecycle → outbox (same transaction) → delivery loop. Time is
  taken from the frame's send;
* ``--source outbox``: this process records ``--events-per-printer`` PrintDone events per
  printer straight into the outbox (each in its own transaction, as an emitter does); the server
  finds them on its next poll, so this measures the delivery path across processes. Time is
  taken from the commit.

Measured:

* p50 / p99 / max time from the event to its receipt at the receiver (one clock: both ends are
  in this process); each receipt is checked against the X-Layerfleet-Signature;
* server CPU (utime + stime of the server process, from /proc) per 1,000 notifications;
* with ``--digest`` the server's default coalescing applies (a burst becomes digests; the
  latency of an event in a digest is the digest's receipt); without it, digests and the rate
  limit are lifted so every event is one message.

    python bench/notify.py [--printers 1000] [--source agents|outbox] [--events-per-printer 1]
                           [--spread 60] [--database sqlite|postgresql] [--digest]

Exits 1 when an event is not delivered within the timeout, twice, or with a bad signature.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role
from layerfleet.database import create_engine, create_sessionmaker, migrate
from layerfleet.fleet import service as fleet
from layerfleet.notifications import outbox
from layerfleet.notifications import targets as notification_targets
from layerfleet.notifications.models import NotificationEvent
from layerfleet.notifications.targets import TargetFields

SECRET_KEY = "bench-notify-secret"
POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Receiver:
    """Records when each event's idempotency key arrives, and checks each body's signature."""

    def __init__(self) -> None:
        self.secret = ""
        self.received: dict[str, float] = {}
        self.by_printer: dict[int | None, float] = {}
        self.duplicates = 0
        self.bad_signatures = 0
        self.messages = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                arrived = time.perf_counter()
                expected = "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                data = json.loads(body)
                events = data["events"] if data.get("event") == "Digest" else [data]
                with receiver.lock:
                    receiver.messages += 1
                    if not hmac.compare_digest(self.headers.get("X-Layerfleet-Signature", ""), expected):
                        receiver.bad_signatures += 1
                    for event in events:
                        if event["idempotency_key"] in receiver.received:
                            receiver.duplicates += 1
                        receiver.received.setdefault(event["idempotency_key"], arrived)
                        receiver.by_printer.setdefault(event.get("printer_id"), arrived)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def prepare(url: str, printers: int, receiver: Receiver) -> tuple[int, list[tuple[int, str, str]]]:
    engine = create_engine(url)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session:
        user = await accounts.create_user(session, "bench@example.com", "bench-password-1", role=Role.OWNER,
                                          organization_name="Bench farm")
        made = [await fleet.create_printer(session, user, f"Printer {n:04d}") for n in range(printers)]
        await session.flush()
        _, secret = await notification_targets.create_target(
            session, user, TargetFields(name="bench", url=f"webhook+http://127.0.0.1:{receiver.port}/bench",
                                        events=["PrintDone"]), SECRET_KEY, own=False)
        await session.commit()
        receiver.secret = secret or ""
        organization_id = user.organization_id
        names = [(p.id, p.name, p.auth_token) for p in made]
    await engine.dispose()
    return organization_id, names


async def emit(url: str, organization_id: int, printers: list[tuple[int, str, str]], per_printer: int,
               spread: float) -> dict[str, float]:
    engine = create_engine(url)
    sessionmaker = create_sessionmaker(engine)
    plan = [(n * spread / (len(printers) * per_printer), printer) for n, printer in
            enumerate(printer for _ in range(per_printer) for printer in printers)]
    committed: dict[str, float] = {}
    began = time.perf_counter()

    async def one(offset: float, printer: tuple[int, str, str]) -> None:
        await asyncio.sleep(max(0.0, began + offset - time.perf_counter()))
        async with sessionmaker() as session:
            event = await outbox.record(session, organization_id=organization_id, event=NotificationEvent.PRINT_DONE,
                                        printer_id=printer[0], payload={"printer_name": printer[1],
                                                                        "filename": "bench.gcode"})
            await session.commit()
        assert event is not None
        committed[event.idempotency_key] = time.perf_counter()

    semaphore = asyncio.Semaphore(8)

    async def bounded(offset: float, printer: tuple[int, str, str]) -> None:
        async with semaphore:
            await one(offset, printer)

    await asyncio.gather(*(bounded(offset, printer) for offset, printer in plan))
    await engine.dispose()
    return committed


async def emit_from_agents(port: int, printers: list[tuple[int, str, str]], spread: float,
                           mark: Any, finish: Any) -> dict[int, float]:
    """One agent per printer: connected (its print starts), then PrintDone at its moment;
    ``mark()`` is called once every agent is connected and its print started, ``finish()``
    (which waits for the receipts) before the agents disconnect."""
    from agents import Agent, Counters  # bench/agents.py, beside this file

    counters = Counters()
    agents = [Agent(printer_id, token, counters, resume_after=0.0) for printer_id, _, token in printers]
    url = f"ws://127.0.0.1:{port}/ws/dev/"
    gate = asyncio.Semaphore(20)

    async def connect(agent: Any) -> None:
        async with gate:
            await agent.connect(url)

    await asyncio.gather(*(connect(agent) for agent in agents))
    readers = [asyncio.create_task(agent.read()) for agent in agents]
    await asyncio.sleep(2.0)  # every print has started on the server
    mark()
    sent: dict[int, float] = {}
    began = time.perf_counter()

    async def done(n: int, agent: Any) -> None:
        await asyncio.sleep(max(0.0, began + n * spread / len(agents) - time.perf_counter()))
        sent[agent.printer_id] = time.perf_counter()
        await agent.send("PrintDone")

    await asyncio.gather(*(done(n, agent) for n, agent in enumerate(agents)))
    await asyncio.to_thread(finish)
    for agent in agents:
        await agent.close()
    for reader in readers:
        reader.cancel()
    if counters.lost_connections:
        print(f"agents lost {counters.lost_connections} connection(s): {counters.close_codes}")
    return sent


async def postgres_database() -> str:
    name = f"layerfleet_bench_notify_{os.getpid()}"
    conn = await asyncpg.connect(f"{POSTGRES_SERVER}/postgres")
    await conn.execute(f"DROP DATABASE IF EXISTS {name}")
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    return name


async def drop_postgres(name: str) -> None:
    conn = await asyncpg.connect(f"{POSTGRES_SERVER}/postgres")
    await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--printers", type=int, default=1000)
    parser.add_argument("--source", choices=("agents", "outbox"), default="agents")
    parser.add_argument("--events-per-printer", type=int, default=1, help="--source outbox only")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds over which the events are recorded")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--digest", action="store_true", help="keep the default digests and rate limit")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the last receipt")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="layerfleet-bench-notify-"))
    pg_name = asyncio.run(postgres_database()) if args.database == "postgresql" else None
    url = (f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}" if pg_name
           else f"sqlite+aiosqlite:///{data_dir / 'bench.db'}")
    migrate(url)
    receiver = Receiver()
    organization_id, printers = asyncio.run(prepare(url, args.printers, receiver))
    port = free_port()
    env = {**os.environ, "LAYERFLEET_DATA_DIR": str(data_dir), "LAYERFLEET_DATABASE_URL": url,
           "LAYERFLEET_SECRET_KEY": SECRET_KEY, "LAYERFLEET_DETECTION_ENABLED": "false",
           "LAYERFLEET_LOG_LEVEL": "warning"}
    if not args.digest:
        env.update(LAYERFLEET_NOTIFICATION_DIGEST_THRESHOLD="100000000",
                   LAYERFLEET_NOTIFICATION_RATE_PER_MINUTE="100000000")
    server = subprocess.Popen([sys.executable, "-m", "layerfleet", "serve", "--no-migrate", "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failed = False
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print(server.communicate()[0])
                return 1
            time.sleep(0.2)
        baseline = {"cpu": cpu_seconds(server.pid), "wall": time.perf_counter()}

        def mark() -> None:
            # Connecting the agents is not the notifications' work: the window starts after it.
            baseline.update(cpu=cpu_seconds(server.pid), wall=time.perf_counter())

        def finish(expected: int) -> None:
            wait_until = time.monotonic() + args.timeout
            while len(receiver.received) < expected and time.monotonic() < wait_until:
                time.sleep(0.2)
            time.sleep(1.0)  # anything sent twice arrives now
            baseline.update(cpu=cpu_seconds(server.pid) - baseline["cpu"], wall=time.perf_counter() - baseline["wall"])

        if args.source == "agents":
            sent = asyncio.run(emit_from_agents(port, printers, args.spread, mark, lambda: finish(len(printers))))
            arrivals: dict[Any, float] = receiver.by_printer
            started: dict[Any, float] = sent
        else:
            started = asyncio.run(emit(url, organization_id, printers, args.events_per_printer, args.spread))
            arrivals = receiver.received
            finish(len(started))
        cpu_used, wall = baseline["cpu"], baseline["wall"]
        committed = started
        latencies = sorted(arrivals[key] - at for key, at in started.items() if key in arrivals)
        missing = len(committed) - len(latencies)
        delivered = len(latencies)
        print(f"printers {args.printers}, events {len(committed)} from {args.source} over {args.spread:g} s, "
              f"database {args.database}, digests {'on' if args.digest else 'off'}")
        if latencies:
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            print(f"event → receipt: p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                  f"max {latencies[-1] * 1000:.0f} ms")
        print(f"messages received {receiver.messages}; events delivered {delivered}, missing {missing}, "
              f"duplicates {receiver.duplicates}, bad signatures {receiver.bad_signatures}")
        print(f"server CPU {cpu_used:.2f} s over {wall:.1f} s; per 1,000 notifications "
              f"{cpu_used / max(delivered, 1) * 1000:.2f} s")
        failed = bool(missing or receiver.duplicates or receiver.bad_signatures)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        if pg_name:
            asyncio.run(drop_postgres(pg_name))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
