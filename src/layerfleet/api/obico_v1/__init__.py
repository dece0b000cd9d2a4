"""The Obico REST API v1 dialect: a thin translation onto the domain packages."""

from fastapi import APIRouter

from layerfleet.api.obico_v1 import alerts, cameras, notification_targets, print_uploads, printers, prints, users

router = APIRouter(prefix="/api/v1")
router.include_router(printers.router)
router.include_router(cameras.router)
# Before the prints' routes: /prints/upload/ is not the print with id "upload".
router.include_router(print_uploads.router)
router.include_router(prints.router)
router.include_router(users.router)
router.include_router(alerts.router)
router.include_router(notification_targets.router)
