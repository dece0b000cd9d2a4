"""The fleet's change stream: which printers changed, per organization.

Whatever changes what a printer shows — an agent's status, a picture, a detector's score, a
user's settings — says so here with the printer's id; live pages subscribe per organization
and re-read only the printers named. The stream carries ids, not data: the database stays the
one truth, and a burst of changes to one printer costs a page one read.

Each subscriber collects the ids announced since it last read them, so a slow page never
holds up the agents that feed the stream and many changes to one printer coalesce into one.
In scale-out mode (:class:`RedisFleetEvents`) every process publishes its changes on one Redis
channel at most every ``FLUSH_SECONDS`` and feeds its own subscribers from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from typing import Any

from layerfleet import pubsub
from layerfleet.pacing import woken_within

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25


class Subscription:
    """The printers of one organization that changed since the subscriber last asked."""

    def __init__(self, organization_id: int) -> None:
        self.organization_id = organization_id
        self._changed: set[int] = set()
        self._ready = asyncio.Event()

    def add(self, printer_ids: Iterable[int]) -> None:
        self._changed.update(printer_ids)
        if self._changed:
            self._ready.set()

    async def changes(self, wait_seconds: float) -> set[int]:
        """The ids changed since the last call; an empty set when ``wait_seconds`` pass first."""
        await woken_within(self._ready, wait_seconds)
        changed, self._changed = self._changed, set()
        self._ready.clear()
        return changed


class FleetEvents:
    """In one process: publishers and subscribers meet here directly."""

    def __init__(self) -> None:
        self._subscribers: dict[int, set[Subscription]] = defaultdict(set)
        self._versions: dict[int, int] = defaultdict(int)

    def publish(self, organization_id: int, printer_ids: Iterable[int]) -> None:
        """Announce that these printers changed. Never blocks and never fails the caller."""
        self._fan_out(organization_id, printer_ids)

    def version(self, printer_id: int) -> int:
        """How many changes of the printer this process has heard of: what was read of it
        at a lower version may be out of date."""
        return self._versions[printer_id]

    def _fan_out(self, organization_id: int, printer_ids: Iterable[int]) -> None:
        ids = list(printer_ids)
        for printer_id in ids:
            self._versions[printer_id] += 1
        for subscription in self._subscribers.get(organization_id, ()):
            subscription.add(ids)

    @contextlib.asynccontextmanager
    async def subscribe(self, organization_id: int) -> AsyncIterator[Subscription]:
        subscription = Subscription(organization_id)
        self._subscribers[organization_id].add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(organization_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[organization_id]

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def start(self) -> None:
        """Open what the stream needs; nothing in one process."""

    async def close(self) -> None:
        """Release what the stream holds; nothing in one process."""


class RedisFleetEvents(FleetEvents):
    """Across server processes: changes are batched per process and published on one channel."""

    def __init__(self, url: str, *, namespace: str = "layerfleet") -> None:
        super().__init__()
        from redis.asyncio import Redis

        self.redis: Any = Redis.from_url(url, decode_responses=True)
        self.channel = f"{namespace}:fleet-events"
        self.process_id = uuid.uuid4().hex
        self._outgoing: dict[int, set[int]] = defaultdict(set)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()

    def publish(self, organization_id: int, printer_ids: Iterable[int]) -> None:
        ids = list(printer_ids)
        self._fan_out(organization_id, ids)  # our own pages need not wait for the round trip
        self._outgoing[organization_id].update(ids)
        self._wake.set()

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._listen(), name="fleet-events-listen"),
                           asyncio.create_task(self._send(), name="fleet-events-send")]
        async with asyncio.timeout(10):
            await self._ready.wait()

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_SECONDS)
            self._wake.clear()
            batch, self._outgoing = self._outgoing, defaultdict(set)
            message = json.dumps({"from": self.process_id,
                                  "changes": {str(org): sorted(ids) for org, ids in batch.items()}})
            try:
                await self.redis.publish(self.channel, message)
            except Exception:
                # Pages elsewhere miss this batch and catch up with the printers' next change.
                log.warning("could not publish fleet changes to Redis", exc_info=True)

    async def _listen(self) -> None:
        await pubsub.listen(self.redis, self.channel, self._on_changes, self._ready)

    def _on_changes(self, message: dict[str, Any]) -> None:
        if message.get("from") == self.process_id:
            return
        try:
            for organization, ids in message["changes"].items():
                self._fan_out(int(organization), (int(i) for i in ids))
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("ignored a malformed fleet change message")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.redis.aclose()
