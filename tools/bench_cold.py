"""Cold start: fresh ``edgeloop infer`` processes, time to exit and peak resident memory.

Each run is a new process (``os.wait4`` gives its own rusage), so the figures
include interpreter start, imports, model load and one classification. Two
series: with a warm cache of checked models (the usual restart), and with the
cache off, so an unregistered model pays its isolated check every time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _series(cmd: list[str], runs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    walls, rss = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append((time.perf_counter() - start) * 1000.0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
        rss.append(usage.ru_maxrss / 1024.0)  # Linux reports KiB; children of the child included
    return walls, rss


def cold_start(model: str, image: str, runs: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    exe = str(Path(sys.executable).parent / "edgeloop")
    cmd = [exe, "infer", model, image, "--top", "1", *extra]
    with tempfile.TemporaryDirectory() as cache:
        warm_env = {**os.environ, "EDGELOOP_CACHE_DIR": cache}
        _series(cmd, 1, warm_env)  # fills the cache
        walls, rss = _series(cmd, runs, warm_env)
    checked, checked_rss = _series(cmd, runs, {**os.environ, "EDGELOOP_CACHE_DIR": "off"})
    return {
        "command": " ".join(cmd),
        "runs": runs,
        "cold_start_p50_ms": round(float(np.median(walls)), 1),
        "cold_start_max_ms": round(float(max(walls)), 1),
        "peak_rss_mb": round(float(max(rss)), 1),
        "cold_start_checked_p50_ms": round(float(np.median(checked)), 1),
        "peak_rss_checked_mb": round(float(max(checked_rss)), 1),
    }
