"""Cold start: fresh ``edgeloop infer`` processes, time to exit and peak resident memory.

Each run is a new process (``os.wait4`` gives its own rusage), so the figures
include interpreter start, imports, model load and one classification.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def cold_start(model: str, image: str, runs: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    exe = str(Path(sys.executable).parent / "edgeloop")
    cmd = [exe, "infer", model, image, "--top", "1", *extra]
    walls, rss = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append((time.perf_counter() - start) * 1000.0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
        rss.append(usage.ru_maxrss / 1024.0)  # Linux reports KiB
    return {
        "command": " ".join(cmd),
        "runs": runs,
        "cold_start_p50_ms": round(float(np.median(walls)), 1),
        "cold_start_max_ms": round(float(max(walls)), 1),
        "peak_rss_mb": round(float(max(rss)), 1),
    }
