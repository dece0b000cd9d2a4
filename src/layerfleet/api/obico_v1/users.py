from __future__ import annotations

from fastapi import APIRouter

from layerfleet.api.deps import CurrentUser
from layerfleet.api.obico_v1.schemas import UserOut, user_out

router = APIRouter(tags=["Obico v1: users"])


@router.get("/users/me/", response_model=UserOut)
async def me(user: CurrentUser) -> UserOut:
    return user_out(user)
