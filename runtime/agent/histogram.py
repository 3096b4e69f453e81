"""Answer latencies as histogram buckets per (task, slot, rung), counted on the hot path with
a bisect and a lock (about a microsecond) and read by the metrics collector when scraped, so
the first answer does not wait for prometheus-client to be imported (~30 ms of start-up)."""

from __future__ import annotations

import bisect
import threading

# Served latency from a few tens of µs (a cached answer) to the deadline and past it.
BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LatencyHistogram:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], list[float]] = {}  # key -> bucket counts..., +Inf, sum

    def observe(self, key: tuple[str, str, str], seconds: float) -> None:
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0.0] * (len(BUCKETS_S) + 2)
            series[bisect.bisect_left(BUCKETS_S, seconds)] += 1
            series[-1] += seconds

    def snapshot(self) -> dict[tuple[str, str, str], tuple[list[float], float, float]]:
        """key -> (cumulative counts for each bucket and +Inf, count, sum)."""
        with self._lock:
            series = {k: list(v) for k, v in self._series.items()}
        out = {}
        for key, v in series.items():
            cumulative, total = [], 0.0
            for n in v[:-1]:
                total += n
                cumulative.append(total)
            out[key] = (cumulative, total, v[-1])
        return out
