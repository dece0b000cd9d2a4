"""Background jobs: CPU-heavy work (slicing, rendering) run off the request path.

In-process by default; over Redis when ``LAYERFLEET_REDIS_URL`` is set, so that every
server process shares one queue and a crashed process's jobs are run by another.
"""

from __future__ import annotations

from layerfleet.config import Settings
from layerfleet.jobs.queue import Handler, InProcessJobQueue, JobQueue

__all__ = ["Handler", "InProcessJobQueue", "JobQueue", "create_job_queue"]


def create_job_queue(settings: Settings, *, namespace: str | None = None) -> JobQueue:
    if settings.redis_url:
        from layerfleet.jobs.redis_queue import RedisJobQueue

        return RedisJobQueue(settings.redis_url, namespace=namespace or settings.redis_namespace)
    return InProcessJobQueue()
