"""The agent websocket, `/ws/dev/`: the connection itself is the gateway's."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from layerfleet.api.deps import Gateway

router = APIRouter()


@router.websocket("/ws/dev/")
@router.websocket("/ws/dev")
async def agent_socket(websocket: WebSocket, gateway: Gateway) -> None:
    await gateway.serve(websocket)
