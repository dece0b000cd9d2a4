"""The command bus across server processes, over Redis (scale-out mode).

Each process delivers to the agents connected to it, as the in-process bus does, and
announces them in Redis: key ``{ns}:agent:{printer_id}`` names the process holding the
printer's connection (refreshed while it lives, so a crashed process's claims expire).
A message for an agent held elsewhere is published on that process's channel; the holder
delivers it and answers on the sender's reply channel. No holder, or no answer within the
timeout, is a failure reported at once: an API call never hangs on an offline agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from redis.asyncio import Redis

from layerfleet import pubsub
from layerfleet.commands.bus import AgentCommand, AgentMessage, Deliver, InProcessCommandBus, RemoteStatus, TokenRevoked

log = logging.getLogger(__name__)

CLAIM_SECONDS = 30
REFRESH_SECONDS = 10
# Delete a claim only while it is still ours: a newer connection elsewhere may have taken it.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def encode(message: AgentMessage) -> dict[str, Any]:
    if isinstance(message, AgentCommand):
        return {"type": "command", "cmd": message.cmd, "args": message.args, "initiator": message.initiator}
    if isinstance(message, TokenRevoked):
        return {"type": "token_revoked"}
    return {"type": "remote_status", "should_watch": message.should_watch, "viewing": message.viewing}


def decode(data: dict[str, Any]) -> AgentMessage:
    if data["type"] == "command":
        return AgentCommand(data["cmd"], dict(data["args"]), data["initiator"])
    if data["type"] == "token_revoked":
        return TokenRevoked()
    return RemoteStatus(should_watch=bool(data["should_watch"]), viewing=bool(data["viewing"]))


class RedisCommandBus(InProcessCommandBus):
    def __init__(self, url: str, *, namespace: str = "layerfleet", delivery_timeout: float = 5.0) -> None:
        super().__init__(delivery_timeout)
        self.redis: Redis = Redis.from_url(url, decode_responses=True)
        self.namespace = namespace
        self.process_id = uuid.uuid4().hex
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def _key(self, printer_id: int) -> str:
        return f"{self.namespace}:agent:{printer_id}"

    def _channel(self, process_id: str) -> str:
        return f"{self.namespace}:process:{process_id}"

    async def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
            self._refresher = asyncio.create_task(self._refresh())
        async with asyncio.timeout(10):
            await self._ready.wait()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def register(self, printer_id: int, deliver: Deliver) -> None:
        super().register(printer_id, deliver)
        self._spawn(self.redis.set(self._key(printer_id), self.process_id, ex=CLAIM_SECONDS))

    def unregister(self, printer_id: int, deliver: Deliver | None = None) -> None:
        if deliver is not None and self._receivers.get(printer_id) is not deliver:
            return
        super().unregister(printer_id, deliver)
        self._spawn(self.redis.eval(_RELEASE, 1, self._key(printer_id), self.process_id))

    async def is_connected(self, printer_id: int) -> bool:
        if await super().is_connected(printer_id):
            return True
        return bool(await self.redis.exists(self._key(printer_id)))

    async def send(self, printer_id: int, message: AgentMessage) -> bool:
        if printer_id in self._receivers:
            return await super().send(printer_id, message)
        holder = str(await self.redis.get(self._key(printer_id)) or "")
        if not holder or holder == self.process_id:
            return False
        request_id = uuid.uuid4().hex
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        envelope = {"kind": "deliver", "id": request_id, "reply_to": self.process_id,
                    "printer_id": printer_id, "message": encode(message)}
        try:
            receivers = await self.redis.publish(self._channel(holder), json.dumps(envelope))
            if not receivers:
                return False
            async with asyncio.timeout(self._delivery_timeout):
                return await answer
        except TimeoutError:
            return False
        finally:
            self._pending.pop(request_id, None)

    async def _listen(self) -> None:
        await pubsub.listen(self.redis, self._channel(self.process_id), self._on_envelope, self._ready)

    def _on_envelope(self, envelope: dict[str, Any]) -> None:
        if envelope.get("kind") == "deliver":
            self._spawn(self._deliver_for(envelope))
        elif envelope.get("kind") == "result":
            future = self._pending.get(envelope.get("id", ""))
            if future is not None and not future.done():
                future.set_result(bool(envelope.get("ok")))

    async def _deliver_for(self, envelope: dict[str, Any]) -> None:
        try:
            ok = await super().send(int(envelope["printer_id"]), decode(envelope["message"]))
        except (KeyError, TypeError, ValueError):
            log.warning("ignored a bus message of the wrong shape")
            ok = False
        reply = {"kind": "result", "id": envelope.get("id"), "ok": ok}
        await self.redis.publish(self._channel(str(envelope.get("reply_to"))), json.dumps(reply))

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for printer_id in list(self._receivers):
                        pipe.set(self._key(printer_id), self.process_id, ex=CLAIM_SECONDS)
                    await pipe.execute()
            except Exception:
                log.warning("could not refresh agent claims in Redis", exc_info=True)

    async def close(self) -> None:
        for printer_id in list(self._receivers):
            with contextlib.suppress(Exception):
                await self.redis.eval(_RELEASE, 1, self._key(printer_id), self.process_id)
        self._receivers.clear()
        for task in (self._listener, self._refresher, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._listener, self._refresher) if t is not None), return_exceptions=True)
        await self.redis.aclose()
