"""Links that work without credentials for a short time: an HMAC of the path and the expiry
time, with the server's secret key. Used for STL downloads (30 s), the G-code an agent fetches
(1 h) and inspection reports (1 h)."""

from __future__ import annotations

import hashlib
import hmac
import time


def sign(secret: str, path: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_link(secret: str, base_url: str, path: str, seconds: int) -> str:
    expires = int(time.time()) + seconds
    return f"{base_url.rstrip('/')}{path}?expires={expires}&signature={sign(secret, path, expires)}"


def link_problem(secret: str, path: str, expires: str, signature: str) -> str | None:
    """Why the link cannot be used (for a person), or None when it can."""
    if not expires.isdigit() or not hmac.compare_digest(sign(secret, path, int(expires)), signature):
        return "The link is not valid"
    if int(expires) < time.time():
        return "The link has expired; ask for a new one"
    return None
