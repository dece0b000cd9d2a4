"""Commands across server processes over the real Redis at 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import httpx
import pytest

from conftest import PRINTING, FakeAgent, Farm, local_port_answers
from layerfleet.app import create_app
from layerfleet.commands.bus import AgentCommand, RemoteStatus
from layerfleet.commands.redis_bus import RedisCommandBus

REDIS_URL = os.environ.get("LAYERFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


if not local_port_answers(6379):
    if os.environ.get("CI"):
        raise RuntimeError("Redis at 127.0.0.1:6379 does not answer; CI must test on it")
    pytest.skip("Redis does not answer at 127.0.0.1:6379", allow_module_level=True)


async def started(namespace: str) -> RedisCommandBus:
    bus = RedisCommandBus(REDIS_URL, namespace=namespace, delivery_timeout=2.0)
    await bus.start()
    return bus


async def wait_until(predicate: Any, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_a_command_reaches_an_agent_held_by_another_process() -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    api_process, agent_process = await started(namespace), await started(namespace)
    try:
        agent = FakeAgent()
        agent_process.register(7, agent)
        await wait_until(lambda: api_process.is_connected(7))
        command = AgentCommand("pause", {"retract": 6.5, "lift_z": 2.5, "tools_off": True, "bed_off": False})
        assert await api_process.send(7, command) is True
        assert await api_process.send(7, RemoteStatus(should_watch=False)) is True
        assert agent.received == [command, RemoteStatus(should_watch=False)]

        agent_process.unregister(7, agent)

        async def gone() -> bool:
            return not await api_process.is_connected(7)

        await wait_until(gone)
        started_at = time.monotonic()
        assert await api_process.send(7, command) is False
        assert time.monotonic() - started_at < 0.5  # offline fails fast, never hangs
    finally:
        await api_process.close()
        await agent_process.close()


async def test_a_crashed_holder_fails_within_the_timeout() -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    api_process = await started(namespace)
    try:
        # A claim left by a process that is gone: nobody listens on its channel.
        await api_process.redis.set(f"{namespace}:agent:9", "dead-process", ex=30)
        started_at = time.monotonic()
        assert await api_process.send(9, AgentCommand("cancel")) is False
        assert time.monotonic() - started_at < 0.5
    finally:
        await api_process.close()


async def test_pause_through_one_server_reaches_the_agent_on_another(settings, farm: Farm) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    await farm.print(printer, current=True)
    agent_side = await started(namespace)
    api_side = RedisCommandBus(REDIS_URL, namespace=namespace, delivery_timeout=2.0)
    app = create_app(settings, command_bus=api_side)
    await api_side.start()
    try:
        agent = FakeAgent()
        agent_side.register(printer.id, agent)
        await wait_until(lambda: api_side.is_connected(printer.id))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post(f"/api/v1/printers/{printer.id}/pause_print", headers=owner.headers)
        assert response.status_code == 200
        assert response.json()["succeeded"] is True
        assert [m.cmd for m in agent.received if isinstance(m, AgentCommand)] == ["pause"]
    finally:
        await api_side.close()
        await agent_side.close()
        await app.state.services.engine.dispose()


async def _cut_subscriptions(client_name: str) -> int:
    """Close, on the Redis side, the subscribed connections of clients called ``client_name`` —
    what a Redis restart or a network blip does to them."""
    from redis.asyncio import Redis

    admin = Redis.from_url(REDIS_URL)
    try:
        cut = 0
        for client in await admin.client_list():
            if client.get("name") == client_name and int(client.get("sub", 0)) > 0:
                await admin.client_kill_filter(_id=client["id"])
                cut += 1
        return cut
    finally:
        await admin.aclose()


async def test_commands_cross_processes_again_after_the_redis_subscription_is_cut() -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    name = f"lf-{namespace[-8:]}"
    url = f"{REDIS_URL}?client_name={name}"
    api_process = RedisCommandBus(url, namespace=namespace, delivery_timeout=1.0)
    agent_process = RedisCommandBus(url, namespace=namespace, delivery_timeout=1.0)
    await api_process.start()
    await agent_process.start()
    try:
        agent = FakeAgent()
        agent_process.register(7, agent)
        await wait_until(lambda: api_process.is_connected(7))
        command = AgentCommand("pause", {})
        assert await api_process.send(7, command) is True
        assert await _cut_subscriptions(name) == 2

        async def delivered() -> bool:
            return await api_process.send(7, command)

        # Both listeners subscribe again by themselves; before, the holder stayed deaf for good.
        await wait_until(delivered, seconds=10)
        assert not api_process._listener.done() and not agent_process._listener.done()  # type: ignore[union-attr]
    finally:
        await api_process.close()
        await agent_process.close()
