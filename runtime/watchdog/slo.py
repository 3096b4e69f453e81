"""A sliding window of latencies: the SLO is judged on its p95.

The samples live in a fixed ring (``capacity``, the newest kept): ``add`` is two stores under a
lock, and ``percentile`` works on the ring's arrays. A list rebuilt from a deque for each check
cost ~30 µs a request at 7,000 requests/s (measured), more than the model it judged."""

from __future__ import annotations

import threading
import time

import numpy as np


class LatencyWindow:
    def __init__(self, window_s: float, capacity: int = 8192) -> None:
        self.window_s = window_s
        self._when = np.full(capacity, -np.inf)
        self._took = np.zeros(capacity)
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()

    def add(self, seconds: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            i = self._next
            self._when[i] = now
            self._took[i] = seconds
            self._next = (i + 1) % self._when.size
            self._count += 1

    def _recent(self) -> np.ndarray:
        return self._took[self._when >= time.monotonic() - self.window_s]

    def percentile(self, q: float, min_samples: int = 1) -> float | None:
        """The q-th percentile (seconds) over the window; None with fewer than ``min_samples``."""
        with self._lock:
            recent = self._recent()
        if recent.size < min_samples or recent.size == 0:
            return None
        return float(np.percentile(recent, q))

    def clear(self) -> None:
        with self._lock:
            self._when.fill(-np.inf)

    def __len__(self) -> int:
        with self._lock:
            return int(self._recent().size)
