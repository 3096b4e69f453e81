"""Benchmarks: each module measures one suite and returns its figures as a dict (JSON out
through ``edgeloop bench SUITE --json``). Shared here: the alternation block and the summary
of a list of latencies."""

from __future__ import annotations

import numpy as np

BLOCK = 5  # runs per alternation block


def summarize(samples_ms: list[float], prefix: str = "") -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        f"{prefix}p50_ms": round(float(p50), 4),
        f"{prefix}p95_ms": round(float(p95), 4),
        f"{prefix}p99_ms": round(float(p99), 4),
        f"{prefix}mean_ms": round(float(a.mean()), 4),
        f"{prefix}std_ms": round(float(a.std()), 4),
        f"{prefix}min_ms": round(float(a.min()), 4),
        f"{prefix}jitter_ms": round(float(np.abs(np.diff(a)).mean()) if a.size > 1 else 0.0, 4),
    }
