"""schemathesis against the notification targets' operations in our /openapi.json, on a real
server: generated valid and invalid requests never get a 5xx and every answer is documented."""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from schemathesis import GenerationMode

from conftest import Farm
from layerfleet.accounts.models import Role
from test_openapi_conformance import _fuzz


async def test_notification_target_operations_conform_to_our_openapi(live_url: str, farm: Farm) -> None:
    admin = await farm.member(Role.ADMIN)
    async with httpx.AsyncClient(base_url=live_url, headers=admin.headers) as client:
        made = await client.post("/api/v1/notification_targets/",
                                 json={"url": "json://127.0.0.1:9/fuzz", "events": ["PrintDone"]})
    target_id = made.json()["id"]
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    ours = [op for op in operations if op.path.startswith("/api/v1/notification_targets/")]
    ours.sort(key=lambda op: op.method.upper() == "DELETE")
    assert len(ours) == 7, [op.label for op in ours]
    calls: dict[str, set[int]] = {}
    for operation in ours:
        path_ids = {"target_id": target_id} if "{target_id}" in operation.path else None
        modes: list[tuple[GenerationMode, Any]] = [(GenerationMode.POSITIVE, None),
                                                   (GenerationMode.POSITIVE, path_ids)]
        if len(operation.body):
            modes.append((GenerationMode.NEGATIVE, path_ids))
        excluded = [schemathesis.checks.positive_data_acceptance] if operation.method.upper() in ("POST", "PATCH") \
            else []  # a schema-valid URL or event name may still be one Apprise or we refuse (a 400)
        for mode, path_parameters in modes:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            _fuzz(strategy, live_url, admin.headers, excluded, calls)
    assert 200 in calls["GET /api/v1/notification_targets/{target_id}/"]
    assert 400 in calls["POST /api/v1/notification_targets/"]
