"""Drift: live statistics of a model's inputs and outputs against the baseline stored with the
model in its manifest, as a population stability index per feature.

Features (each binned in ``BINS`` equal bins over [0, 1]): ``brightness`` (mean input pixel
/ 255) and ``confidence`` (the top class's score). PSI = Σ (live − base) · ln(live / base)
over the bins, empty bins floored at ``EPS``; above ``THRESHOLD`` (0.25, the usual "major
shift") a drift event is raised once, and again only after the PSI has come back under it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping, Sequence

import numpy as np

BINS = 10
EPS = 1e-4
THRESHOLD = 0.25
FEATURES = ("brightness", "confidence")


def histogram(values: Sequence[float]) -> list[float]:
    """Fractions of ``values`` in BINS equal bins over [0, 1]."""
    counts, _ = np.histogram(np.clip(np.asarray(values, np.float64), 0, 1), bins=BINS, range=(0.0, 1.0))
    return (counts / max(1, counts.sum())).tolist()


def psi(live: Sequence[float], base: Sequence[float]) -> float:
    a = np.maximum(np.asarray(live, np.float64), EPS)
    e = np.maximum(np.asarray(base, np.float64), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftMonitor:
    """Keeps the last ``window`` feature values; ``scores()`` is the PSI per feature."""

    def __init__(self, baseline: Mapping[str, Sequence[float]], window: int = 200,
                 on_drift: Callable[[dict[str, Any]], None] | None = None, threshold: float = THRESHOLD) -> None:
        self.baseline = {k: list(v) for k, v in baseline.items() if k in FEATURES}
        self.values = {k: deque(maxlen=window) for k in self.baseline}
        self.on_drift = on_drift
        self.threshold = threshold
        self.drifting: set[str] = set()
        self._seen = 0

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            if key in self.values:
                self.values[key].append(value)
        self._seen += 1
        if self._seen % 25 == 0:
            self.check()

    def scores(self) -> dict[str, float]:
        return {k: psi(histogram(v), self.baseline[k]) for k, v in self.values.items() if len(v) >= 50}

    def check(self) -> None:
        for feature, score in self.scores().items():
            if score > self.threshold and feature not in self.drifting:
                self.drifting.add(feature)
                if self.on_drift is not None:
                    self.on_drift({"kind": "drift", "feature": feature, "psi": round(score, 4),
                                   "threshold": self.threshold})
            elif score <= self.threshold:
                self.drifting.discard(feature)
