"""Request bodies are bounded, and an API request without any credentials is refused before a
byte of its body is read.

Every body is capped (1 MiB unless the endpoint needs more): a declared ``Content-Length`` over
the cap is refused on the first read, a chunked body as soon as the bytes read pass it. The
refusals are raised from the body's first read, inside the application, so each dialect answers
them in its own format (413, or 401 without credentials)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from layerfleet.api.deps import SESSION_COOKIE

MiB = 1024 * 1024
DEFAULT_LIMIT = 1 * MiB
# Endpoints whose bodies are larger by nature; each also enforces its own, smaller limit.
LARGER_LIMITS: tuple[tuple[str, int], ...] = (
    ("/api/v3/parts/upload_stl", 501 * MiB),  # STL files up to 500 MB, in a multipart form
    ("/api/v1/octo/", 16 * MiB),  # agents' webcam pictures and event snapshots (10 MB each)
    ("/api/v2/", 17 * MiB),  # PrintWatch pictures (16 MB)
    ("/feedback", 17 * MiB),
    # Timelapse uploads: the route refuses what is over LAYERFLEET_TIMELAPSE_UPLOAD_MAX_BYTES
    # (2 GB by default) by its Content-Length, in the v1 dialect's words; this is the ceiling.
    ("/api/v1/prints/upload/", 64 * 1024 * MiB),
)
# API endpoints that take a body from a client without credentials: the agents' linking and LAN
# discovery, and PrintWatch (its key is inside the body).
ANONYMOUS_BODIES = ("/api/v1/octo/verify/", "/api/v1/octo/unlinked/", "/api/v2/", "/feedback")
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def body_limit(path: str) -> int:
    for prefix, limit in LARGER_LIMITS:
        if path.startswith(prefix):
            return limit
    return DEFAULT_LIMIT


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _has_credentials(scope: Scope) -> bool:
    if _header(scope, b"authorization"):
        return True
    return f"{SESSION_COOKIE}=".encode() in (_header(scope, b"cookie") or b"")


def _unauthenticated(path: str) -> HTTPException:
    # The words and challenge each dialect's own authentication would answer with.
    if path.startswith("/api/v3/"):
        return HTTPException(401, detail="Authentication required: HTTP Basic with your access key and secret key",
                             headers={"WWW-Authenticate": 'Basic realm="Layerfleet print-farm API"'})
    return HTTPException(401, detail="Authentication credentials were not provided.",
                         headers={"WWW-Authenticate": 'Token realm="api"'})


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, detail=f"The request body is larger than {limit // MiB} MiB.")


class BodyLimits:
    """ASGI middleware applying the caps and the credentials check to every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = body_limit(path)
        refusal: HTTPException | None = None
        if (scope["method"] in BODY_METHODS and path.startswith("/api/") and not path.startswith(ANONYMOUS_BODIES)
                and not _has_credentials(scope)):
            refusal = _unauthenticated(path)
        declared = _header(scope, b"content-length")
        if refusal is None and declared is not None:
            try:
                if int(declared) > limit:
                    refusal = too_large(limit)
            except ValueError:
                refusal = HTTPException(400, detail="The Content-Length header is not a number.")
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            if refusal is not None:
                raise refusal
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, bounded_receive, send)
