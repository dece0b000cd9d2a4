"""The Obico REST API v1 dialect: a thin translation onto the domain packages."""

from fastapi import APIRouter

from layerfleet.api.obico_v1 import alerts, printers, prints, users

router = APIRouter(prefix="/api/v1")
router.include_router(printers.router)
router.include_router(prints.router)
router.include_router(users.router)
router.include_router(alerts.router)
