"""A sliding window of latencies: the SLO is judged on its p95."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class LatencyWindow:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (when, seconds)
        self._lock = threading.Lock()

    def add(self, seconds: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._samples.append((now, seconds))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def percentile(self, q: float, min_samples: int = 1) -> float | None:
        """The q-th percentile (seconds) over the window; None with fewer than ``min_samples``."""
        with self._lock:
            self._trim(time.monotonic())
            if len(self._samples) < min_samples:
                return None
            return float(np.percentile([s for _, s in self._samples], q))

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()

    def __len__(self) -> int:
        return len(self._samples)
