"""The HTTP server's own limits, applied before a request reaches the application.

uvicorn's default parser (httptools) collects a request's head — request line and headers — with
no bound: one client sending a 64 MB ``Authorization`` header held the event loop for seconds and
the memory for as long. :class:`BoundedHttpProtocol` refuses a head larger than
:data:`MAX_HEAD_BYTES` or with more than :data:`MAX_HEADERS` headers with 431 and closes the
connection, having kept at most one read's worth beyond the limit."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from layerfleet.config import Settings

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100

_REFUSAL = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: 41\r\nconnection: close\r\n\r\nThe request's headers are too large (431).")


class HeadersTooLarge(Exception):
    pass


class BoundedHttpProtocol(HttpToolsProtocol):
    """httptools, with the request head bounded in bytes and in headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            super().data_received(data)
        except HeadersTooLarge:
            self._refuse()
            return
        # Counted per read: a head that ends inside a read may count some body bytes, which
        # only matters for heads already near the limit.
        if self._reading_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            raise HeadersTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next request on a kept-alive connection starts a new head.
        self._reading_head = True
        self._head_bytes = 0

    def _refuse(self) -> None:
        self._reading_head = False
        transport: asyncio.Transport = self.transport
        if not transport.is_closing():
            transport.write(_REFUSAL)
            transport.close()


def server_config(app: Any, settings: Settings, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """How every Layerfleet server runs: bounded request heads, and proxy headers believed only
    from the proxies the operator names (``LAYERFLEET_TRUSTED_PROXIES``)."""
    proxies = [address.strip() for address in settings.trusted_proxies.split(",") if address.strip()]
    config = uvicorn.Config(app, host=host, port=port, http=BoundedHttpProtocol, proxy_headers=bool(proxies),
                            forwarded_allow_ips=proxies or None, **options)
    escape_logged_control_characters()  # after uvicorn set up its own handlers
    return config


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class EscapeControlCharacters(logging.Filter):
    """A request's path and headers are the client's text: escaped, a newline or terminal escape
    in them cannot forge log lines or rewrite an operator's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _escaped(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_escaped(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _escaped(arg) if isinstance(arg, str) else arg for key, arg in record.args.items()}
        return True


def escape_logged_control_characters() -> None:
    """Put the filter on every handler logging is configured with (ours and uvicorn's)."""
    escape = EscapeControlCharacters()
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, EscapeControlCharacters) for f in handler.filters):
                handler.addFilter(escape)
