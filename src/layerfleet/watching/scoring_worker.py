"""A `layerfleet worker`'s share of watching: frames taken from the servers' stream, scored in
batches and applied to their prints with the pipeline's own code.

One task takes and scores a batch while another applies the previous one, as in a server's own
pipeline, so the detector and the database work at once. A batch is acknowledged only once
applied: a worker killed at any point leaves its unacknowledged frames to another worker
(:mod:`layerfleet.watching.frame_stream`), and the one decision state per print lives in the
database, under the printer's row lock, whatever process applies the frame.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Protocol

from layerfleet.detection.runtime import FrameResult
from layerfleet.watching.frame_stream import FrameStream, StreamedFrame
from layerfleet.watching.pipeline import PendingFrame, WatchingPipeline

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after Redis or the detector failed, before trying again


class Connection(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class FrameScorer:
    def __init__(self, pipeline: WatchingPipeline, stream: FrameStream, *, consumer: str | None = None,
                 connections: Sequence[Connection] = ()) -> None:
        """``pipeline``: a pipeline without a stream of its own, never started; its detector and
        appliers are what this worker runs. ``connections``: what the pipeline sends on (its
        command bus, its fleet events), opened with the scorer and closed after it."""
        self.pipeline = pipeline
        self.connections = connections
        self.stream = stream
        self.consumer = consumer or f"scorer-{uuid.uuid4().hex[:12]}"
        self.applied = 0
        self._scored: asyncio.Queue[tuple[list[StreamedFrame], list[tuple[PendingFrame, FrameResult]]]] = \
            asyncio.Queue(1)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for connection in self.connections:
            await connection.start()
        await self.stream.start()
        await self.pipeline.load_detector()
        self._tasks = [asyncio.create_task(self._take_and_score(), name="scorer-detect"),
                       asyncio.create_task(self._apply(), name="scorer-apply")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # Whatever was taken and not applied stays pending in Redis for another worker.
        await self.stream.close()
        for connection in reversed(self.connections):
            await connection.close()

    async def _take_and_score(self) -> None:
        while True:
            try:
                taken = await self.stream.take(self.consumer, self.pipeline.batch_size)
            except Exception:
                log.warning("could not take frames from Redis", exc_info=True)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if not taken:
                continue
            try:
                scored = await self.pipeline.score([t.frame for t in taken])
            except Exception:
                # Left pending: another worker (or this one, once it has been idle long enough) retries it.
                log.exception("the detector failed on a batch of %d frames", len(taken))
                await asyncio.sleep(RETRY_SECONDS)
                continue
            await self._scored.put((taken, scored))

    async def _apply(self) -> None:
        while True:
            taken, scored = await self._scored.get()
            if scored:
                # Failures of single frames are logged and counted there; the frames are done with.
                await self.pipeline.apply_scored(scored)
                self.applied += len(scored)
            try:
                await self.stream.done(taken)
            except Exception:
                # Applied but not acknowledged: a worker taking them over finds them applied.
                log.warning("could not acknowledge %d applied frames", len(taken), exc_info=True)
