"""``GET /metrics``: this process's Prometheus metrics (``layerfleet.metrics``), for admins.

Prometheus authenticates like any API client: an admin's (or owner's) API token as a bearer
token (``authorization: {credentials: <key>}`` in the scrape config). The figures are of the
whole server process, whatever the caller's organization; they name no organization, printer
or user. In a scale-out deployment each process answers with its own figures.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from layerfleet import metrics
from layerfleet.api.deps import Admin

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def scrape(_admin: Admin) -> Response:
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
