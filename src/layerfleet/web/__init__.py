"""The web dashboard: server-rendered pages with small hand-written scripts, no build step.

Pages read and change the farm through the same domain services and APIs as every other
client (the Obico v1 and Eiger v3 APIs accept the session cookie from our own pages); live
updates come over server-sent events from the fleet's event stream (:mod:`layerfleet.fleet.events`).
"""

from fastapi import APIRouter

from layerfleet.web import (
    action_link_page,
    auth,
    credentials_page,
    fleet,
    library,
    linking_page,
    models_page,
    notifications_page,
    prints,
)

router = APIRouter(include_in_schema=False)
for module in (auth, fleet, prints, library, linking_page, credentials_page, notifications_page, action_link_page,
               models_page):
    router.include_router(module.router)
