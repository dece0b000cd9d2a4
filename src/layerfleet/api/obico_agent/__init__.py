"""The Obico printer-agent dialect: the HTTP calls and the websocket that OctoPrint-Obico and
moonraker-obico make, translated onto the agents domain package."""

from fastapi import APIRouter

from layerfleet.api.obico_agent import linking, octo, ws

router = APIRouter()
router.include_router(octo.router)
router.include_router(linking.router)
router.include_router(ws.router)
