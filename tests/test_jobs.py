"""The job queue, in-process and over the real Redis at 127.0.0.1:6379 (each test in its own namespace)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from conftest import local_port_answers
from layerfleet.config import Settings
from layerfleet.jobs import InProcessJobQueue, JobQueue, create_job_queue
from layerfleet.jobs.redis_queue import RedisJobQueue
from redis_helpers import forget_namespace

REDIS_URL = os.environ.get("LAYERFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_UP = local_port_answers(6379)
if not REDIS_UP and os.environ.get("CI"):
    raise RuntimeError("Redis at 127.0.0.1:6379 does not answer; CI must test on it")
needs_redis = pytest.mark.skipif(not REDIS_UP, reason="Redis does not answer at 127.0.0.1:6379")
BACKENDS = ["in-process", pytest.param("redis", marks=needs_redis)]

MakeQueue = Callable[..., JobQueue]


async def wait_until(predicate: Callable[[], Awaitable[bool]], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    name = f"test-jobs-{uuid.uuid4().hex}"
    yield name
    if REDIS_UP:
        await forget_namespace(REDIS_URL, name)


@pytest.fixture
async def raw_redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(params=BACKENDS)
async def make_queue(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[MakeQueue]:
    made: list[JobQueue] = []

    def make(**options: Any) -> JobQueue:
        queue: JobQueue
        if request.param == "redis":
            queue = RedisJobQueue(REDIS_URL, namespace=namespace, **options)
        else:
            queue = InProcessJobQueue(**options)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.close()


async def left_over(queue: JobQueue) -> int:
    """Jobs the backend still holds (waiting, or taken and not acknowledged)."""
    if isinstance(queue, RedisJobQueue):
        return int(await queue.redis.llen(f"{queue.namespace}:jobs:queue")) + int(
            await queue.redis.llen(f"{queue.namespace}:jobs:processing:{queue.consumer_id}"))
    assert isinstance(queue, InProcessJobQueue)
    return queue._queue.qsize()


async def test_jobs_run_at_most_concurrency_at_a_time(make_queue: MakeQueue) -> None:
    queue = make_queue()
    active = peak = 0
    ran: list[str] = []
    all_done = asyncio.Event()
    ids = [f"job-{n}" for n in range(12)]

    async def handler(job_id: str) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.03)
        active -= 1
        ran.append(job_id)
        if len(ran) == len(ids):
            all_done.set()

    await queue.requeue("slice", ids)
    await queue.start({"slice": handler}, concurrency=3)
    await asyncio.wait_for(all_done.wait(), 5)
    assert peak == 3
    assert sorted(ran) == sorted(ids)
    assert await left_over(queue) == 0


async def test_a_failing_handler_does_not_stop_the_queue(make_queue: MakeQueue,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    queue = make_queue()
    attempted: list[str] = []
    done = asyncio.Event()

    async def handler(job_id: str) -> None:
        attempted.append(job_id)
        if job_id.startswith("bad"):
            raise RuntimeError(f"{job_id} broke")
        if job_id == "ok-2":
            done.set()

    await queue.start({"slice": handler}, concurrency=1)
    with caplog.at_level(logging.ERROR, logger="layerfleet.jobs"):
        for job_id in ("bad-1", "ok-1", "bad-2", "ok-2"):
            await queue.enqueue("slice", job_id)
        await asyncio.wait_for(done.wait(), 5)
    assert attempted == ["bad-1", "ok-1", "bad-2", "ok-2"]  # in order: first in, first out
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.exc_info[1].args[0] for r in failures if r.exc_info and r.exc_info[1]] == ["bad-1 broke", "bad-2 broke"]
    assert await left_over(queue) == 0


async def test_a_job_of_an_unknown_kind_is_logged_and_dropped(make_queue: MakeQueue,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    queue = make_queue()
    done = asyncio.Event()

    async def handler(job_id: str) -> None:
        done.set()

    await queue.start({"slice": handler}, concurrency=1)
    with caplog.at_level(logging.ERROR, logger="layerfleet.jobs"):
        await queue.enqueue("render", "report-1")
        await queue.enqueue("slice", "s-1")
        await asyncio.wait_for(done.wait(), 5)
    assert any("report-1" in r.getMessage() and "'render'" in r.getMessage() for r in caplog.records)
    assert await left_over(queue) == 0


async def test_close_cancels_a_long_handler_at_its_deadline(make_queue: MakeQueue) -> None:
    queue = make_queue(close_timeout=0.3)
    started = asyncio.Event()
    cancelled = False

    async def handler(job_id: str) -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled = True
            raise

    await queue.start({"slice": handler}, concurrency=2)
    await queue.enqueue("slice", "long")
    await asyncio.wait_for(started.wait(), 5)
    began = time.monotonic()
    await queue.close()
    elapsed = time.monotonic() - began
    assert cancelled
    assert 0.3 <= elapsed < 0.8  # waited for the handler, then did not hang on it
    with pytest.raises(RuntimeError):
        await queue.enqueue("slice", "after-close")


async def test_close_lets_a_short_handler_finish(make_queue: MakeQueue) -> None:
    queue = make_queue(close_timeout=5)
    started = asyncio.Event()
    finished = False

    async def handler(job_id: str) -> None:
        nonlocal finished
        started.set()
        await asyncio.sleep(0.1)
        finished = True

    await queue.start({"slice": handler}, concurrency=2)
    await queue.enqueue("slice", "short")
    await asyncio.wait_for(started.wait(), 5)
    began = time.monotonic()
    await queue.close()
    assert finished
    assert time.monotonic() - began < 1  # idle consumers stop at once, not after a poll


async def test_a_duplicate_of_a_running_job_runs_once_after_it(make_queue: MakeQueue) -> None:
    queue = make_queue()
    gate = asyncio.Event()
    runs = active = peak = 0
    second_run = asyncio.Event()

    async def handler(job_id: str) -> None:
        nonlocal runs, active, peak
        runs += 1
        active += 1
        peak = max(peak, active)
        if runs == 1:
            await gate.wait()
        active -= 1
        if runs == 2:
            second_run.set()

    await queue.start({"slice": handler}, concurrency=4)
    await queue.enqueue("slice", "x")

    async def first_run_started() -> bool:
        return runs == 1

    await wait_until(first_run_started)
    await queue.requeue("slice", ["x", "x"])

    async def coalesced() -> bool:  # both duplicates taken while the first run is still going
        return await left_over(queue) == (1 if isinstance(queue, RedisJobQueue) else 0)

    await wait_until(coalesced)
    assert runs == 1
    gate.set()
    await asyncio.wait_for(second_run.wait(), 5)
    await asyncio.sleep(0.05)  # room for a wrong third run
    assert (runs, peak) == (2, 1)
    assert await left_over(queue) == 0


# -- Redis only: several processes


@needs_redis
async def test_two_consumers_share_the_work_and_run_no_job_twice(namespace: str) -> None:
    first, second = RedisJobQueue(REDIS_URL, namespace=namespace), RedisJobQueue(REDIS_URL, namespace=namespace)
    ran: Counter[str] = Counter()
    by: Counter[str] = Counter()
    all_done = asyncio.Event()
    ids = [f"job-{n}" for n in range(40)]

    def handler_for(name: str) -> Callable[[str], Awaitable[None]]:
        async def handler(job_id: str) -> None:
            await asyncio.sleep(0.01)
            ran[job_id] += 1
            by[name] += 1
            if sum(ran.values()) >= len(ids):
                all_done.set()
        return handler

    try:
        await first.start({"slice": handler_for("first")}, concurrency=2)
        await second.start({"slice": handler_for("second")}, concurrency=2)
        await first.requeue("slice", ids)
        await asyncio.wait_for(all_done.wait(), 5)
        await asyncio.sleep(0.05)  # room for a wrong extra run
        assert ran == Counter(ids)
        assert by["first"] > 0 and by["second"] > 0
        assert await left_over(first) == 0 and await left_over(second) == 0
    finally:
        await first.close()
        await second.close()


@needs_redis
async def test_close_hands_a_cancelled_job_to_another_consumer(namespace: str) -> None:
    closing = RedisJobQueue(REDIS_URL, namespace=namespace, close_timeout=0.1)
    other = RedisJobQueue(REDIS_URL, namespace=namespace)
    started = asyncio.Event()
    taken_over = asyncio.Event()

    async def hang(job_id: str) -> None:
        started.set()
        await asyncio.sleep(60)

    async def finish(job_id: str) -> None:
        taken_over.set()

    try:
        await closing.start({"slice": hang})
        await closing.enqueue("slice", "j-1")
        await asyncio.wait_for(started.wait(), 5)
        await other.start({"slice": finish})
        await asyncio.sleep(0.2)
        assert not taken_over.is_set()  # a live consumer's job is not taken from it
        await closing.close()
        await asyncio.wait_for(taken_over.wait(), 3)
    finally:
        await closing.close()
        await other.close()


CRASHING_CONSUMER = """
import asyncio, sys
from layerfleet.jobs.redis_queue import RedisJobQueue

async def main() -> None:
    queue = RedisJobQueue(sys.argv[1], namespace=sys.argv[2], heartbeat_seconds=0.3)

    async def hang(job_id: str) -> None:
        print(job_id, flush=True)
        await asyncio.sleep(600)

    await queue.start({"slice": hang})
    await queue.enqueue("slice", "crash-victim")
    await asyncio.sleep(600)

asyncio.run(main())
"""


@needs_redis
@pytest.mark.parametrize("recovered", ["at start", "while running"])
async def test_the_job_of_a_crashed_consumer_runs_elsewhere(namespace: str, recovered: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_CONSUMER, REDIS_URL, namespace, stdout=asyncio.subprocess.PIPE)
    survivor = RedisJobQueue(REDIS_URL, namespace=namespace,
                             heartbeat_seconds=30 if recovered == "at start" else 0.3)
    ran: list[str] = []
    done = asyncio.Event()

    async def handler(job_id: str) -> None:
        ran.append(job_id)
        done.set()

    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert line.decode().strip() == "crash-victim"
        if recovered == "while running":
            await survivor.start({"slice": handler})
            await asyncio.sleep(1.0)  # three of the crashing consumer's heartbeat periods
            assert ran == []  # its job is not taken while it lives
        process.send_signal(signal.SIGKILL)
        await process.wait()
        if recovered == "at start":
            await asyncio.sleep(0.4)  # its heartbeat expires
            await survivor.start({"slice": handler})
        await asyncio.wait_for(done.wait(), 3)
        await asyncio.sleep(0.05)
        assert ran == ["crash-victim"]
        assert await left_over(survivor) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await survivor.close()


async def test_the_factory_picks_redis_when_configured(tmp_path: Path) -> None:
    in_process = create_job_queue(Settings(data_dir=tmp_path))
    assert isinstance(in_process, InProcessJobQueue)
    scaled_out = create_job_queue(Settings(data_dir=tmp_path, redis_url=REDIS_URL))
    assert isinstance(scaled_out, RedisJobQueue)  # connects lazily: no Redis needed here
    await in_process.close()
    await scaled_out.close()
