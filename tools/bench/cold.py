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
from pathlib import Path
from typing import Any, Sequence

import numpy as np


# Runs one command and prints its wall time and peak RSS. A small helper process does the
# spawning: a child forked from this (large) benchmark process would inherit its resident
# pages into its peak RSS before exec.
_HELPER = """
import os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print((time.perf_counter() - start) * 1000.0, usage.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status))
"""


def _series(cmd: list[str], runs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    walls, rss = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _HELPER, *cmd], capture_output=True, text=True, env=env,
                             check=True).stdout.split()
        wall, peak, code = float(out[0]), float(out[1]), int(out[2])
        if code != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {code}")
        walls.append(wall)
        rss.append(peak)  # Linux reports KiB; /1024 above gives MiB
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
