"""The job queue over Redis (scale-out mode): every server process consumes one shared list.

Producers LPUSH ``[kind, job_id]`` onto ``{ns}:jobs:queue``. A consumer BLMOVEs the oldest
job atomically into its process's list ``{ns}:jobs:processing:{consumer_id}``, runs it, then
LREMs it: a job is always in exactly one list, so a crash can delay it but never lose it.
Each process keeps ``{ns}:jobs:alive:{consumer_id}`` alive (SET with an expiry) and is named
in the set ``{ns}:jobs:consumers``; on start and periodically, every process moves the jobs
of consumers whose key expired back onto the queue. The BLMOVE waits at most a second, so
a consumer never holds a Redis connection blocked for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from redis.asyncio import Redis

from layerfleet import metrics
from layerfleet.jobs.queue import JobQueue, Taken

log = logging.getLogger(__name__)

POLL_SECONDS = 1  # BLMOVE takes whole seconds in redis-py's types
# Atomically, and only when the consumer is dead: its jobs go back to the consuming end of
# the queue, oldest first, and it is forgotten. Returns how many moved, or -1 if it lives.
_RECOVER = """
if redis.call('exists', KEYS[1]) == 1 then return -1 end
local moved = 0
while redis.call('lmove', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do moved = moved + 1 end
redis.call('srem', KEYS[4], ARGV[1])
return moved
"""


class RedisJobQueue(JobQueue):
    def __init__(self, url: str, *, namespace: str = "layerfleet", heartbeat_seconds: float = 30.0,
                 close_timeout: float = 10.0) -> None:
        """``heartbeat_seconds``: how long after a crash its jobs wait before another process takes them."""
        super().__init__(close_timeout=close_timeout)
        self.redis: Redis = Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                           socket_timeout=POLL_SECONDS + 5)
        self.namespace = namespace
        self.consumer_id = uuid.uuid4().hex
        self.heartbeat_seconds = heartbeat_seconds
        self._queue_key = f"{namespace}:jobs:queue"
        self._consumers_key = f"{namespace}:jobs:consumers"
        self._processing_key = self._processing(self.consumer_id)
        self._alive_key = self._alive(self.consumer_id)
        self._keeper: asyncio.Task[None] | None = None

    def _processing(self, consumer_id: str) -> str:
        return f"{self.namespace}:jobs:processing:{consumer_id}"

    def _alive(self, consumer_id: str) -> str:
        return f"{self.namespace}:jobs:alive:{consumer_id}"

    async def _push(self, kind: str, job_id: str) -> None:
        await self.redis.lpush(self._queue_key, json.dumps([kind, job_id]))

    async def _next(self) -> Taken | None:
        raw: Any = await self.redis.blmove(self._queue_key, self._processing_key, POLL_SECONDS, "RIGHT", "LEFT")
        if raw is None:
            return None
        try:
            kind, job_id = json.loads(raw)
            return Taken(str(kind), str(job_id), raw)
        except (TypeError, ValueError):
            log.error("dropped a malformed job from Redis: %r", raw)
            await self.redis.lrem(self._processing_key, 1, raw)
            return None

    async def _ack(self, job: Taken) -> None:
        await self.redis.lrem(self._processing_key, 1, job.token or "")

    async def _heartbeat(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self._alive_key, "1", px=max(1, int(self.heartbeat_seconds * 1000)))
            pipe.sadd(self._consumers_key, self.consumer_id)
            pipe.llen(self._queue_key)
            *_, waiting = await pipe.execute()
        # The shared queue's backlog, as of this heartbeat: every process reports the same list.
        metrics.JOB_QUEUE_BACKLOG.labels(queue="redis").set(int(waiting))

    async def _begin(self) -> None:
        await self._heartbeat()  # before taking any job, so none is taken by a consumer deemed dead
        await self.recover()
        self._keeper = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        """Refreshes our heartbeat three times per expiry; looks for dead consumers once per expiry."""
        beats = 0
        while not self._closed:
            await asyncio.sleep(self.heartbeat_seconds / 3)
            beats += 1
            try:
                await self._heartbeat()
                if beats % 3 == 0:
                    await self.recover()
            except Exception:
                log.warning("could not keep the job queue's heartbeat in Redis", exc_info=True)

    async def recover(self) -> int:
        """Requeue the jobs of consumers whose heartbeat expired; how many were requeued."""
        moved = 0
        members: set[str] = await self.redis.smembers(self._consumers_key)  # type: ignore[assignment]
        for consumer_id in members:
            if consumer_id == self.consumer_id:
                continue
            keys = (self._alive(consumer_id), self._processing(consumer_id), self._queue_key, self._consumers_key)
            count = int(await self.redis.eval(_RECOVER, len(keys), *keys, consumer_id))
            if count > 0:
                log.warning("requeued %d job(s) of dead job consumer %s", count, consumer_id)
                moved += count
        return moved

    async def _end(self) -> None:
        """Hands the jobs of handlers cancelled at close back to the queue, then leaves."""
        if self._keeper is not None:
            self._keeper.cancel()  # bounded wait: see JobQueue.close on swallowed cancellations
            await asyncio.wait({self._keeper}, timeout=POLL_SECONDS + 5)
        if self._started:
            keys = (self._alive_key, self._processing_key, self._queue_key, self._consumers_key)
            try:
                await self.redis.delete(self._alive_key)
                await self.redis.eval(_RECOVER, len(keys), *keys, self.consumer_id)
            except Exception:
                log.warning("could not requeue this process's unfinished jobs; another will once it "
                            "notices the heartbeat expired", exc_info=True)
        with contextlib.suppress(Exception):
            await self.redis.aclose()
