"""Rate limits for public endpoints: a sliding window per key, in memory.

Per process: with several daemons behind one proxy, each enforces its own window, so the
effective limit is multiplied by their number (the proxy can add a global one).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most `limit` hits per key in any `window` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> float:
        """Count a hit for key; return 0 if allowed, else seconds until one would be."""
        now = self.clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(hits[0] + self.window - now, 0.001)
        hits.append(now)
        self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        # Bounded memory under a flood of distinct keys: drop keys with no recent hit.
        if len(self._hits) > 10_000:
            idle = [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]
            for key in idle:
                del self._hits[key]


def retry_after(seconds: float) -> str:
    """Return a Retry-After header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
