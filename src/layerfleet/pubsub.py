"""A Redis channel subscription that outlives its connection.

Scale-out mode carries agent commands and fleet changes between server processes over Redis
publish/subscribe. redis-py ends ``PubSub.listen()`` with an exception when the connection is
lost (Redis restarted, a network blip, ``CLIENT KILL``); a listener that let that end it would
leave its process deaf for good while everything else looked healthy. This one subscribes again,
with backoff, for as long as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.2
LAST_RETRY_SECONDS = 5.0

OnMessage = Callable[[dict[str, Any]], None]


async def listen(redis: Redis, channel: str, on_message: OnMessage, ready: asyncio.Event) -> None:
    """Hand every JSON object published on ``channel`` to ``on_message``, until cancelled.

    ``ready`` is set each time the subscription is in place (first and after a reconnection).
    Messages published while the subscription was down are lost — Redis keeps none — so every
    user of this must tolerate missing one (a command's sender times out, a page catches up).
    """
    delay = FIRST_RETRY_SECONDS
    while True:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(channel)
            ready.set()
            delay = FIRST_RETRY_SECONDS
            async for item in pubsub.listen():
                if item.get("type") != "message":
                    continue
                try:
                    message = json.loads(item["data"])
                except (TypeError, ValueError):
                    message = None
                if not isinstance(message, dict):
                    log.warning("ignored a malformed message on %s", channel)
                    continue
                on_message(message)
        except (RedisError, OSError) as exc:
            log.warning("Redis subscription to %s lost (%s); subscribing again in %.1f s", channel, exc, delay)
        finally:
            # redis-py leaves PubSub.aclose untyped.
            close = cast(Callable[[], Awaitable[None]], pubsub.aclose)
            with contextlib.suppress(Exception):
                await close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, LAST_RETRY_SECONDS)
