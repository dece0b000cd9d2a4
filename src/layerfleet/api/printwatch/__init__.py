"""The PrintWatch dialect: the inference API the PrintWatch clients call (`protocol`, where the
table of status codes is), and the REST management of its API keys (`key_admin`, under /api/v1)."""

from fastapi import APIRouter

from layerfleet.api.printwatch import key_admin, protocol

router = APIRouter()
router.include_router(protocol.router)
router.include_router(key_admin.router, prefix="/api/v1")
