"""Who is calling: HTTP Basic with an access key (user name) and secret key (password), or,
for the dashboard's own pages, the signed-in session cookie when no Authorization is sent."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import User
from layerfleet.api.deps import UNSAFE_METHODS, Db, same_origin, session_user
from layerfleet.api.eiger_v3.errors import EigerError

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Layerfleet print-farm API"'}


def unauthorized(message: str) -> EigerError:
    return EigerError(401, message, _CHALLENGE)


async def eiger_user(request: Request, db: Db) -> User:
    header = request.headers.get("authorization")
    if not header:
        user = await session_user(request, db)
        if user is not None:
            if request.method in UNSAFE_METHODS and not same_origin(request):
                # The browser sends the cookie with any site's request: it alone must not change anything.
                raise EigerError(403, "Cross-site request refused: send it from Layerfleet's own pages "
                                      "or authenticate with HTTP Basic")
            return user
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise unauthorized("Authentication required: HTTP Basic with your access key and secret key")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise unauthorized("The Authorization header is not valid HTTP Basic credentials") from None
    access_key, sep, secret = decoded.partition(":")
    if not sep or not access_key or not secret:
        raise unauthorized("The Authorization header is not valid HTTP Basic credentials")
    user = await accounts.user_for_access_key(db, access_key, secret)
    if user is None:
        raise unauthorized("Unknown access key or wrong secret key")
    if db.dirty:
        await db.commit()
    return user


EigerUser = Annotated[User, Depends(eiger_user)]
