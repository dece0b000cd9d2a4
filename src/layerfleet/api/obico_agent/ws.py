"""The agent websocket, `/ws/dev/`: the connection itself is the gateway's."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from layerfleet.agents.gateway import AgentGateway
from layerfleet.api.deps import services_of

router = APIRouter()


@router.websocket("/ws/dev/")
@router.websocket("/ws/dev")
async def agent_socket(websocket: WebSocket) -> None:
    gateway: AgentGateway = services_of(websocket).agent_gateway
    await gateway.serve(websocket)
