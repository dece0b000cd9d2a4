"""Targets' URLs and webhook secrets at rest: encrypted with a Fernet key derived from the
server's secret key, and shown to people only masked."""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASK = "***"
# Path parts as long as a token (Discord, Telegram, Slack, ntfy topics with keys…) are secret.
_TOKEN_LIKE = re.compile(r"^[A-Za-z0-9_\-]{16,}$")
_SECRET_QUERY = re.compile(r"(?i)(pass(word)?|token|key|secret|auth|apikey|user)=([^&]*)")


@lru_cache(maxsize=8)
def _fernet(server_secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"layerfleet-notifications",
               info=b"target secrets").derive(server_secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(server_secret: str, plain: str) -> str:
    return _fernet(server_secret).encrypt(plain.encode()).decode()


def decrypt(server_secret: str, token: str) -> str:
    """The stored text; raises ValueError when the server's key changed since it was stored."""
    try:
        return _fernet(server_secret).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("stored with another server key") from exc


def mask_url(url: str) -> str:
    """The URL with its password, token-like path parts and secret query values replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user = credentials.split(":", 1)[0]
        # A user name alone may still be a key (Pushover's user key, Pushbullet's token).
        if ":" not in credentials and _TOKEN_LIKE.match(user):
            user = MASK
        netloc = f"{user}:{MASK}@{host}" if ":" in credentials else f"{user}@{host}"
    netloc = _mask_host(netloc)
    path = "/".join(MASK if _TOKEN_LIKE.match(piece) else piece for piece in parts.path.split("/"))
    query = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}={MASK}", parts.query)
    masked = f"{parts.scheme}://{netloc}{path}"
    return masked + (f"?{query}" if query else "")


def _mask_host(netloc: str) -> str:
    credentials, at, host = netloc.rpartition("@")
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        port = MASK  # "bot id:token" (Telegram) in place of host:port
    if _TOKEN_LIKE.match(name):
        name = MASK  # a key in place of a host name (Pushover's application token)
    return f"{credentials}{at}{name}{colon}{port}"
