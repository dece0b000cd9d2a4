"""Memory and latency of one server under hostile clients (issue: Hardening).

Starts ``layerfleet serve`` (SQLite in a temporary folder, detector off) with one user, one API
token and one printer, then, while a member's client reads ``GET /api/v1/printers/`` in a loop:

* ``--bodies`` (20) clients at once each send a 100 MB body, without credentials, to a v1 JSON
  endpoint (``PATCH /api/v1/printers/{id}/``): half declare it with Content-Length, half send it
  chunked; each keeps sending until the server stops reading or closes;
* ``--headers`` (20) clients at once each send a 64 MB ``Authorization`` header.

Reported: the server's RSS before and at its peak (sampled every 20 ms from /proc), what each
hostile client got back and how many bytes it managed to send, and the member's request
latency p50 / p99 / max during the attack. ``--python`` runs another checkout's server (its
venv's python) for a side-by-side with an older build.

    python bench/hostile_clients.py [--bodies 20] [--headers 20] [--python PATH]

Exits 1 when the peak RSS is 400 MB or more, or the member's p99 is 200 ms or more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

BODY_BYTES = 100 * 1024 * 1024
HEADER_BYTES = 64 * 1024 * 1024
CHUNK = 256 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _send_until_refused(port: int, head: bytes, piece: bytes, total: int, end: bytes) -> tuple[str, int]:
    """Send ``head``, then ``piece`` until ``total`` bytes or the server stops taking them;
    return the first line of the server's answer (or what went wrong) and the bytes sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    sent = 0
    try:
        while sent < total and not reader.at_eof():
            writer.write(piece)
            await asyncio.wait_for(writer.drain(), timeout=10)
            sent += CHUNK
        writer.write(end)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), timeout=20)
    except (OSError, TimeoutError) as exc:
        answer = f"({type(exc).__name__})".encode()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return answer.split(b"\r\n", 1)[0].decode(errors="replace"), sent


async def _hostile_body(port: int, path: str, chunked: bool) -> tuple[str, int]:
    head = f"PATCH {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {BODY_BYTES}\r\n\r\n"
    block = b"[" * CHUNK
    piece = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
    return await _send_until_refused(port, head.encode(), piece, BODY_BYTES, b"0\r\n\r\n" if chunked else b"")


async def _hostile_header(port: int) -> tuple[str, int]:
    head = b"GET /api/v1/printers/ HTTP/1.1\r\nHost: bench\r\nAuthorization: Token "
    return await _send_until_refused(port, head, b"a" * CHUNK, HEADER_BYTES, b"\r\n\r\n")


MEMBER = """
import json, sys, time, httpx
port, token, stop = sys.argv[1], sys.argv[2], sys.argv[3]
import pathlib
latencies = []
with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Token {token}"}, timeout=60) as c:
    while not pathlib.Path(stop).exists():
        started = time.perf_counter()
        assert c.get("/api/v1/printers/").status_code == 200
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
print(json.dumps(latencies))
"""


async def attack(port: int, bodies: int, headers: int) -> tuple[list[tuple[str, int]], float]:
    started = time.perf_counter()
    attacks = [_hostile_body(port, "/api/v1/printers/1/", chunked=n % 2 == 1) for n in range(bodies)]
    attacks += [_hostile_header(port) for _ in range(headers)]
    results = await asyncio.gather(*attacks)
    return list(results), time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    data = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    port = _free_port()
    env = {**os.environ, "LAYERFLEET_DATA_DIR": str(data), "LAYERFLEET_DETECTION_ENABLED": "false",
           "LAYERFLEET_LOG_LEVEL": "warning"}
    python = args.python or sys.executable
    subprocess.run([python, "-m", "layerfleet", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([python, "-m", "layerfleet", "createuser", "bench@example.com", "--password", "bench-password-1"],
                   env=env, check=True, capture_output=True)
    token = subprocess.run([python, "-m", "layerfleet", "token", "create", "bench@example.com"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip().split()[-1]
    log = (data / "server.log").open("w")
    server = subprocess.Popen([python, "-m", "layerfleet", "serve", "--port", str(port), "--no-migrate"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    stop = data / "stop"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/printers/",
                             headers={"Authorization": f"Token {token}"}).status_code == 200:
                    break
            time.sleep(0.1)
        before = peak = _rss_mb(server.pid)
        # The member is a process of its own, so the attackers' work here cannot delay its requests.
        member = subprocess.Popen([sys.executable, "-c", MEMBER, str(port), token, str(stop)],
                                  stdout=subprocess.PIPE, text=True)
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, _rss_mb(server.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        time.sleep(1)
        results, elapsed = asyncio.run(attack(port, args.bodies, args.headers))
        time.sleep(1)
        stop.touch()
        latencies: list[float] = json.loads(member.communicate(timeout=120)[0])
        sampling = False
        sampler.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

    answers: dict[str, list[int]] = {}
    for answer, sent in results:
        answers.setdefault(answer, []).append(sent)
    p50 = statistics.median(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else max(latencies)
    print(f"server: {python}")
    print(f"hostile clients: {args.bodies} bodies of {BODY_BYTES // 2**20} MB without credentials "
          f"(half chunked), {args.headers} headers of {HEADER_BYTES // 2**20} MB; attack lasted {elapsed:.1f} s")
    for answer, sizes in sorted(answers.items()):
        print(f"  {len(sizes):3d} × {answer!r}: sent at most {max(sizes) / 2**20:.1f} MB, "
              f"median {statistics.median(sizes) / 2**20:.1f} MB")
    print(f"server RSS: {before:.0f} MB before, {peak:.0f} MB at peak")
    print(f"GET /api/v1/printers/ from the start to 1 s after the attack: {len(latencies)} requests, "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms")
    ok = peak < 400 and p99 < 200
    print("PASS" if ok else "FAIL: the bound is RSS < 400 MB and p99 < 200 ms")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", type=int, default=20)
    parser.add_argument("--headers", type=int, default=20)
    parser.add_argument("--python", help="the python of another checkout's venv, to run its server instead")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
