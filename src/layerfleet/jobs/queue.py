"""The job queue's contract, its consumer loop, and the in-process queue (the default).

CPU-heavy work (slicing, rendering) must not run on the event loop, and must not run
unbounded either: a queue with a fixed number of consumers is what limits it. The queue
carries only ``(kind, job_id)``; the job's durable state lives in the caller's database.
That makes delivery *at least once*: callers re-enqueue unfinished jobs from their
database on startup, a crashed Redis consumer's jobs are run again elsewhere, and a job
may be enqueued twice. So handlers must be idempotent: they load the job, skip it when it
is already done (or, across processes, claim it with a conditional status update and skip
it when running elsewhere), and record their own outcome and failures.

Within one process the queue never runs the same job twice at the same time: a duplicate
taken while the job runs is coalesced into a single run right after the current one ends
(the enqueue may carry news the running handler has not seen; the handler's idempotence
makes the extra run cheap when it does not).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from layerfleet import metrics

log = logging.getLogger(__name__)

Handler = Callable[[str], Awaitable[None]]
"""Runs one job, given its id. Offloads CPU work to a thread or subprocess, never blocks the loop."""

# After cancelling handlers that outlived the close deadline, wait this much longer for them
# to unwind; a handler that swallows the cancellation is left behind (logged) rather than hang.
CANCEL_GRACE_SECONDS = 1.0
IDLE_RECANCEL_SECONDS = 0.05


@dataclass(frozen=True)
class Taken:
    """A job a consumer took: ``token`` is whatever the backend needs to acknowledge it."""

    kind: str
    job_id: str
    token: str | None = None


class JobQueue(ABC):
    """Carries ``(kind, job_id)`` to handlers, at most ``concurrency`` at a time per process."""

    def __init__(self, *, close_timeout: float = 10.0) -> None:
        self.close_timeout = close_timeout
        self._handlers: dict[str, Handler] = {}
        self._consumers: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()
        self._running: set[tuple[str, str]] = set()
        self._rerun: set[tuple[str, str]] = set()
        self._started = False
        self._closed = False

    # -- the backend's part

    @abstractmethod
    async def _push(self, kind: str, job_id: str) -> None: ...

    @abstractmethod
    async def _next(self) -> Taken | None:
        """The next job, or None to look again (a poll timed out, the backend hiccuped)."""

    async def _ack(self, job: Taken) -> None:
        """The job ran (or was dropped): the backend may forget it."""
        return None

    async def _begin(self) -> None:
        """Called by start() before the consumers run."""
        return None

    async def _end(self) -> None:
        """Called by close() once the consumers have stopped."""
        return None

    # -- the public contract

    async def enqueue(self, kind: str, job_id: str) -> None:
        """Ask for ``job_id`` to be run by the handler for ``kind``. Duplicates are harmless."""
        if self._closed:
            raise RuntimeError("the job queue is closed")
        await self._push(kind, job_id)

    async def requeue(self, kind: str, job_ids: Iterable[str]) -> None:
        """Enqueue jobs again, e.g. the unfinished ones found in the database at startup."""
        for job_id in job_ids:
            await self.enqueue(kind, job_id)

    async def start(self, handlers: Mapping[str, Handler], *, concurrency: int = 1) -> None:
        """Start consuming with ``concurrency`` consumers. Jobs of other kinds are logged and dropped."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self._started or self._closed:
            raise RuntimeError("the job queue was already started")
        self._started = True
        self._handlers = dict(handlers)
        await self._begin()
        for _ in range(concurrency):
            task = asyncio.create_task(self._consume())
            self._consumers.add(task)

    async def close(self) -> None:
        """Stop consuming. Waits up to ``close_timeout`` for running handlers, then cancels them.

        Jobs not yet started stay where the backend keeps them (lost in-process: the database
        recovery at the next start finds them; in Redis, other consumers take them).
        """
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        pending = set(self._consumers)
        while pending:
            # A consumer waiting for a job has nothing to finish. Cancel it again on every
            # round: on Python 3.11 a cancellation landing as a Redis command is sent can be
            # swallowed (asyncio.wait_for), and the poll would then hold close() for a second.
            for task in pending - self._busy:
                task.cancel()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            _, pending = await asyncio.wait(pending, timeout=min(remaining, IDLE_RECANCEL_SECONDS))
        if pending:
            for task in pending:
                task.cancel()
            log.warning("cancelled %d job(s) still running at close", len(pending))
            _, stuck = await asyncio.wait(pending, timeout=CANCEL_GRACE_SECONDS)
            if stuck:
                log.error("%d job handler(s) ignored cancellation; left running", len(stuck))
        self._consumers.clear()
        await self._end()

    # -- the consumer loop

    async def _consume(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._closed:
            try:
                job = await self._next()
            except Exception:
                log.exception("could not take a job; retrying")
                await asyncio.sleep(1.0)
                continue
            if job is None:
                continue
            if self._closed:  # taken as close() began: the backend keeps it, unacknowledged
                return
            self._busy.add(task)
            try:
                await self._process(job)
            finally:
                self._busy.discard(task)

    async def _process(self, job: Taken) -> None:
        handler = self._handlers.get(job.kind)
        key = (job.kind, job.job_id)
        if handler is None:
            log.error("dropped job %s of kind %r: no handler for that kind here", job.job_id, job.kind)
        elif key in self._running:
            self._rerun.add(key)  # the running consumer runs it once more when done
        else:
            self._running.add(key)
            metrics.JOBS_RUNNING.inc()
            try:
                while True:
                    self._rerun.discard(key)
                    await self._call(handler, job)
                    if key not in self._rerun:
                        break
            finally:
                metrics.JOBS_RUNNING.dec()
                self._running.discard(key)
                self._rerun.discard(key)
        # Not reached when cancelled: the backend keeps the job of a cancelled handler.
        try:
            await self._ack(job)
        except Exception:
            log.exception("could not acknowledge job %s of kind %r", job.job_id, job.kind)

    @staticmethod
    async def _call(handler: Handler, job: Taken) -> None:
        try:
            await handler(job.job_id)
        except Exception:
            log.exception("job %s of kind %r failed", job.job_id, job.kind)


class InProcessJobQueue(JobQueue):
    """Consumers are tasks on the server's own event loop; handlers offload the CPU work."""

    def __init__(self, *, close_timeout: float = 10.0) -> None:
        super().__init__(close_timeout=close_timeout)
        self._queue: asyncio.Queue[Taken] = asyncio.Queue()

    async def _push(self, kind: str, job_id: str) -> None:
        self._queue.put_nowait(Taken(kind, job_id))
        _IN_PROCESS_BACKLOG.inc()

    async def _next(self) -> Taken | None:
        job = await self._queue.get()
        _IN_PROCESS_BACKLOG.dec()
        return job


# Every in-process queue of this process adds to one figure (a server has one: slicing).
_IN_PROCESS_BACKLOG = metrics.JOB_QUEUE_BACKLOG.labels(queue="in-process")
