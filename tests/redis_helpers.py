"""What tests that run against the real Redis share: a namespace of their own, forgotten after."""

from __future__ import annotations

from redis.asyncio import Redis


async def forget_namespace(url: str, namespace: str) -> None:
    """Delete every key of ``namespace`` (the prefix of LAYERFLEET_REDIS_NAMESPACE)."""
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
