"""A real Uvicorn server on a free local port, in a thread of the test process, for tests
whose client is another process (agents, schemathesis, a browser)."""

from __future__ import annotations

import threading
import time

import uvicorn

from layerfleet.app import create_app
from layerfleet.config import Settings
from layerfleet.serving import server_config


class LiveServer:
    def __init__(self, settings: Settings, port: int = 0) -> None:
        """``port`` 0 takes a free one; a fixed port lets a test restart "the same" server."""
        config = server_config(create_app(settings), settings, host="127.0.0.1", port=port, log_level="warning",
                               lifespan="on", timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
