"""A probe of the event loop's lag: how late a task that asks to wake up actually wakes.

Anything blocking the loop (a database call, rendering, a large loop in Python) shows up
here as lag; the daemon reports it in /healthz and `digest send --json` in its summary.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

INTERVAL = 0.01  # seconds between wake-ups
KEEP = 60_000  # samples kept: ten minutes at INTERVAL


class LoopLagProbe:
    """Samples the lag of the loop it runs on; owned by that loop."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.samples: deque[float] = deque(maxlen=KEEP)

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.samples.append(max(time.perf_counter() - asked - self.interval, 0.0))

    def percentile(self, fraction: float) -> float | None:
        """Return the lag in seconds that `fraction` of the samples stay under."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def worst(self) -> float | None:
        return max(self.samples, default=None)
