"""Events per key (a client address, an account) within a sliding window, in bounded memory.

Used for anonymous or credential-guessing endpoints (sign-in, agent linking, LAN discovery).
Per process: with several server processes each keeps its own count.
"""

from __future__ import annotations

import time
from collections import deque


class RateLimiter:
    def __init__(self, calls: int, window: float, max_tracked: int = 10_000) -> None:
        self.calls = calls
        self.window = window
        self.max_tracked = max_tracked
        # Each event with an optional tag (whose event it was), so that some can be forgiven.
        self._hits: dict[str, deque[tuple[float, str | None]]] = {}

    def _recent(self, key: str) -> deque[tuple[float, str | None]]:
        hits = self._hits.get(key, deque())
        cutoff = time.monotonic() - self.window
        while hits and hits[0][0] < cutoff:
            hits.popleft()
        if not hits:
            self._hits.pop(key, None)
        return hits

    def blocked(self, key: str) -> bool:
        return len(self._recent(key)) >= self.calls

    def record(self, key: str, tag: str | None = None) -> None:
        hits = self._recent(key)
        hits.append((time.monotonic(), tag))
        self._hits[key] = hits
        if len(self._hits) > self.max_tracked:
            for address in list(self._hits):
                self._recent(address)
            while len(self._hits) > self.max_tracked:
                # Past the bound the oldest addresses go: forgetting one only ever lets it in.
                del self._hits[next(iter(self._hits))]

    def clear(self, key: str) -> None:
        self._hits.pop(key, None)

    def forgive(self, key: str, tag: str) -> None:
        """Forget the events of ``key`` recorded with ``tag``, keeping the others."""
        hits = self._recent(key)
        kept = deque(hit for hit in hits if hit[1] != tag)
        if kept:
            self._hits[key] = kept
        else:
            self._hits.pop(key, None)

    def allow(self, key: str) -> bool:
        """Count a call from ``key``; False once it has made ``calls`` within the window."""
        if self.blocked(key):
            return False
        self.record(key)
        return True
