"""`layerfleet simulate`: a farm of simulated printers linked to a server like real ones.

Each printer is linked through the normal path (a one-time code asked for with the user's
API token, then the agent's anonymous verify call), gets its own printer token, and runs the
same `AgentRunner` as `layerfleet agent`. Tokens are kept in a state file, so running the
simulator again brings back the same printers instead of adding new ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from layerfleet.printer_agent.camera import NamedCamera
from layerfleet.printer_agent.runner import AgentRunner, Cadence, Stopped
from layerfleet.simulator.printer import SimulatedCamera, SimulatedPrinter, SimulationOptions

log = logging.getLogger(__name__)


LINK_ATTEMPTS = 5


class LinkError(RuntimeError):
    """The server would not link a simulated printer; the message says why."""


@dataclass(frozen=True)
class SimulatedPrinterLink:
    name: str
    token: str


class TokenStore:
    """Printer tokens per user token, in a small JSON file (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def tokens(self, key: str) -> dict[str, str]:
        found = self._load().get(key, {})
        return {k: v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}

    def save(self, key: str, name: str, token: str) -> None:
        data = self._load()
        data.setdefault(key, {})[name] = token
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=2))
        os.chmod(temporary, 0o600)
        temporary.replace(self.path)  # never a half-written file after a crash


def store_key(user_token: str) -> str:
    # The user's token identifies the farm (not the URL, which changes with ports and proxies);
    # it is not written down itself, only a fingerprint.
    return "user-token:" + hashlib.sha256(user_token.encode()).hexdigest()[:16]


async def _token_works(client: httpx.AsyncClient, token: str) -> bool:
    response = await client.get("/api/v1/octo/printer/", headers={"Authorization": f"Token {token}"})
    if response.status_code in (401, 403):
        return False
    response.raise_for_status()
    return True


async def link_printer(client: httpx.AsyncClient, user_token: str, name: str) -> str:
    """Link a new printer called ``name`` with a one-time code; returns its printer token."""
    for _ in range(LINK_ATTEMPTS):
        answer = await client.get("/api/v1/onetimeverificationcodes/",
                                  headers={"Authorization": f"Token {user_token}"})
        if answer.status_code in (401, 403):
            raise LinkError(f"the server refused the API token ({answer.status_code}): "
                            "use a token of an admin or owner (`layerfleet token create EMAIL`)")
        if not answer.is_success:
            raise LinkError(f"asking for a linking code failed: {answer.status_code} {answer.text[:200]}")
        code = answer.json()["code"]
        linked = await client.post("/api/v1/octo/verify/", params={"code": code}, json={"name": name})
        if linked.is_success:
            token: str = linked.json()["printer"]["auth_token"]
            return token
        if linked.status_code != 404:
            break
        # The user's live code is shared: another linker (a second simulator) used it first.
        await asyncio.sleep(0.2)
    raise LinkError(f"linking with code {code} failed: {linked.status_code} {linked.text[:200]}")


# Bad Gateway, Service Unavailable, Gateway Timeout: a proxy in front of servers not up yet.
PROXY_WAITING = frozenset({502, 503, 504})


async def wait_for_server(client: httpx.AsyncClient, within: float = 60.0) -> None:
    """Wait for the server to answer at all (it may be starting beside the simulator, or behind a
    reverse proxy that answers 502–504 until its servers are up)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            answer = await client.get("/api/v1/octo/printer/")
            if answer.status_code not in PROXY_WAITING or asyncio.get_running_loop().time() > deadline:
                return
        except httpx.TransportError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.5)


async def link_printers(server: str, user_token: str, count: int, store: TokenStore,
                        prefix: str = "Simulated printer") -> list[SimulatedPrinterLink]:
    """``count`` printers, reusing those linked before (still valid) and linking the rest."""
    key = store_key(user_token)
    known = store.tokens(key)
    links: list[SimulatedPrinterLink] = []
    async with httpx.AsyncClient(base_url=server.rstrip("/"), timeout=30) as client:
        await wait_for_server(client)
        for number in range(1, count + 1):
            name = f"{prefix} {number}"
            token = known.get(name)
            if token is None or not await _token_works(client, token):
                token = await link_printer(client, user_token, name)
                store.save(key, name, token)
                log.info("linked %s", name)
            links.append(SimulatedPrinterLink(name, token))
    return links


async def run_farm(
    server: str,
    links: list[SimulatedPrinterLink],
    options: SimulationOptions,
    *,
    cadence: Cadence | None = None,
    seed: int | None = None,
    stop: asyncio.Event | None = None,
    failing_first: int = 0,
    cameras: int = 1,
) -> list[Stopped]:
    """Run one simulated printer per link until ``stop`` is set (or every agent gave up);
    the first print of the first ``failing_first`` printers fails early. Each printer has
    ``cameras`` cameras: the main one and others named ``side-1``, ``side-2``…"""
    runners: list[AgentRunner] = []
    for index, link in enumerate(links):
        printer_options = replace(options, first_print_fails=index < failing_first)
        printer = SimulatedPrinter(link.name, printer_options, seed=None if seed is None else seed + index)
        others = [NamedCamera(f"side-{view}", SimulatedCamera(printer, view=view)) for view in range(1, cameras)]
        runners.append(AgentRunner(server, link.token, printer, SimulatedCamera(printer), cameras=others,
                                   cadence=cadence, label=link.name))
    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    if stop is not None:
        async def stopper() -> None:
            await stop.wait()
            for runner in runners:
                runner.stop()

        stopping = asyncio.create_task(stopper())
    results: list[Stopped] = await asyncio.gather(*tasks)
    if stop is not None:
        stopping.cancel()
    return results


def describe(results: list[Stopped]) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for result in results:
        counts[result.name] = counts.get(result.name, 0) + 1
    return counts
