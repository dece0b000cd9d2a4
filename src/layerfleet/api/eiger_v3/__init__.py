"""The print-farm API in the Markforged Eiger v3 dialect (../shared/specs/eiger-v3.openapi.yaml):
a thin adapter over the library, fleet and scheduling domains."""

from fastapi import APIRouter

from layerfleet.api.eiger_v3 import builds, devices, jobs, parts, users

router = APIRouter(prefix="/api/v3")
router.include_router(builds.router)
router.include_router(devices.router)
router.include_router(jobs.router)
router.include_router(parts.router)
router.include_router(users.router)

__all__ = ["router"]
