"""Scale-out: a server that leaves its jobs to Redis (LAYERFLEET_JOB_WORKERS=0) and a separate
`layerfleet worker` process that slices what the server queued."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from conftest import Farm
from layerfleet.app import create_app
from layerfleet.config import Settings
from redis_helpers import forget_namespace
from test_eiger_api import V3, basic, cube_stl, wait_for_slice
from test_slicing import needs_prusaslicer

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _redis_answers() -> bool:
    client = Redis.from_url(REDIS_URL)
    try:
        return bool(await client.ping())
    except OSError:
        return False
    finally:
        await client.aclose()


@needs_prusaslicer
async def test_a_worker_process_slices_what_a_server_queued(settings: Settings, farm: Farm, tmp_path: Path) -> None:
    if not await _redis_answers():
        if os.environ.get("CI"):
            pytest.fail("Redis must run at 127.0.0.1:6379 in CI")
        pytest.skip("no Redis at 127.0.0.1:6379")
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    scaled = settings.model_copy(update={"redis_url": REDIS_URL, "redis_namespace": namespace, "job_workers": 0})
    app = create_app(scaled)
    env = {**os.environ, "LAYERFLEET_DATA_DIR": str(settings.data_dir), "LAYERFLEET_DATABASE_URL":
           settings.effective_database_url, "LAYERFLEET_REDIS_URL": REDIS_URL, "LAYERFLEET_REDIS_NAMESPACE": namespace,
           "LAYERFLEET_SECRET_KEY": "test-secret"}
    worker: asyncio.subprocess.Process | None = None
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                headers = await basic(farm, await farm.member())
                created = (await client.post(f"{V3}/parts/upload_stl", headers=headers,
                                             files={"stlFile": ("cube.stl", cube_stl(tmp_path, 10.0))})).json()
                # Nobody runs jobs yet: the job waits in Redis.
                await asyncio.sleep(1.5)
                status = (await client.get(f"{V3}/parts/slice_status/{created['slice_job_id']}",
                                           headers=headers)).json()
                assert status == {"status": "QUEUED"}
                worker = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "layerfleet", "worker", env=env,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                seen = await wait_for_slice(client, headers, created["slice_job_id"], within=120)
                assert seen[-1] == "COMPLETED", seen
    finally:
        if worker is not None:
            worker.terminate()
            output, _ = await asyncio.wait_for(worker.communicate(), 30)
            assert worker.returncode == 0, output.decode()
        await forget_namespace(REDIS_URL, namespace)


def test_worker_needs_redis(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "layerfleet", "worker"], capture_output=True, text=True,
                            env={"PATH": os.environ.get("PATH", ""), "LAYERFLEET_DATA_DIR": str(tmp_path)},
                            timeout=60)
    assert result.returncode == 2 and "LAYERFLEET_REDIS_URL" in result.stderr
