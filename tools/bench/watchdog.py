"""``edgeloop bench watchdog``: availability of the degradation ladder under injected faults,
and what the ladder costs per request.

A ladder of real models (``mobilenet_v2`` on the CPU first, ``mobilenet_v1_0.25`` as the
smaller fallback, then the cache and a default) serves the shared photos with a 50 ms
deadline. For each fault (none, hang, slowdown, error, burst) the fault is injected after a
fifth of the requests and healed at half of them; ``availability`` is the share of all
requests answered within their deadline (shed ones count as not answered). ``burst`` sends
10x the ladder's capacity at once from 20 threads.

``router_overhead_us``: the ladder's own work per request (admission, rung choice, the SLO
window, counts), measured with an instant in-thread rung against calling it directly.
``worker_handoff_us``: what running a model on a deadline-bound worker thread adds (two
thread wake-ups), measured with an instant model.

``cascade``: mobilenet_v1_0.25 as the draft, mobilenet_v2 as the target, threshold 0.6, on
the shared photos and 20 crops of each (``bench_cascade.py``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

FAULTS = ("none", "hang", "slowdown", "error", "burst")


class _Instant:
    name = "instant"

    def infer(self, source: Any, top_k: int = 5) -> Any:
        return source


class _InlineRung:
    """A rung that answers in the caller's thread: isolates the ladder's own cost."""

    name = "inline"
    degraded = False
    expected_s = 0.0

    def serve(self, source: Any, timeout_s: float) -> Any:
        return source

    def close(self) -> None:
        pass


def _median_us(fn: Any, n: int) -> float:
    for _ in range(n // 10):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples)) * 1e6


def overheads(n: int = 20_000) -> dict[str, float]:
    from edgeloop.runtime.watchdog import DefaultRung, Ladder, LadderConfig, ModelRung

    instant = _Instant()
    ladder = Ladder("bench", [_InlineRung(), DefaultRung(None)], LadderConfig(deadline_s=0.1))  # type: ignore[list-item]
    rung = ModelRung("handoff", instant)
    try:
        direct = _median_us(lambda: instant.infer(1), n)
        through_ladder = _median_us(lambda: ladder.serve(1), n)
        through_worker = _median_us(lambda: rung.serve(1, 0.1), n)
    finally:
        ladder.close()
        rung.close()
    return {"router_overhead_us": round(through_ladder - direct, 2),
            "worker_handoff_us": round(through_worker - direct, 2)}


def _scenario(engine: Any, models: tuple[str, str], fault: str, requests: int, images: list[Any]) -> dict[str, Any]:
    from edgeloop.runtime.watchdog import CacheRung, DefaultRung, Ladder, LadderConfig, ModelRung
    from edgeloop.tools.testing.faults import FaultyModel

    big = FaultyModel(engine.load(models[0]))
    config = LadderConfig(deadline_s=0.05, window_s=1.0, min_samples=5, recover_s=0.3, probe_every_s=0.05,
                          capacity=2 if fault == "burst" else 16)
    ladder = Ladder("classify", [ModelRung("cpu", big, hang_s=0.2),
                                 ModelRung("small", engine.load(models[1]), hang_s=0.2, degraded=True),
                                 CacheRung(), DefaultRung("unknown")], config)
    served: list[Any] = []
    lock = threading.Lock()

    def inject(n: int) -> None:
        if n == requests // 5:
            {"hang": big.hang, "slowdown": lambda: big.slow(0.06), "error": big.fail}.get(fault, lambda: None)()
        elif n == requests // 2:
            big.heal()

    try:
        for i in range(min(10, requests)):  # warm-up: every rung has run once
            ladder.serve(images[i % len(images)])
        start = time.monotonic()
        if fault == "burst":
            def client(k: int) -> None:
                for j in range(requests // 20):
                    s = ladder.serve(images[(k + j) % len(images)])
                    with lock:
                        served.append(s)
            threads = [threading.Thread(target=client, args=(k,)) for k in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for n in range(requests):
                inject(n)
                served.append(ladder.serve(images[n % len(images)]))
        elapsed = time.monotonic() - start
        answered = [s for s in served if not s.shed]
        lat = [s.latency_ms for s in answered]
        stats = ladder.stats()
        rungs = {k.removeprefix("served_"): v for k, v in stats.items() if k.startswith("served_") and v}
        return {"requests": len(served), "availability": round(sum(s.within_deadline and not s.shed for s in served)
                                                              / len(served), 5),
                "served_p99_ms": round(float(np.percentile(lat, 99)), 3) if lat else None,
                "shed": stats["shed"], "transitions": stats["transitions"], "by_rung": rungs,
                "requests_per_s": round(len(served) / elapsed, 1)}
    finally:
        big.heal()
        ladder.close()


def bench_watchdog(engine: Any, shared: Path, requests: int = 1000, faults: tuple[str, ...] = FAULTS,
                   cascade: bool = True) -> dict[str, Any]:
    """``shared``: the folder with ``models/coral`` and ``images`` (``../shared``)."""
    from PIL import Image

    from edgeloop.runtime.errors import ConfigError

    coral = shared / "models" / "coral"
    models = (str(coral / "mobilenet_v2_1.0_224_quant.tflite"), str(coral / "mobilenet_v1_0.25_128_quant.tflite"))
    images = [Image.open(p).convert("RGB") for p in sorted((shared / "images").glob("*.bmp"))]
    if not images or not all(Path(m).exists() for m in models):
        raise ConfigError(f"--shared: {shared} lacks images/*.bmp or the Coral mobilenet models",
                          "point --shared (or EDGELOOP_SHARED) at the shared folder")
    result: dict[str, Any] = {"deadline_ms": 50.0, **overheads()}
    for fault in faults:
        result[fault] = _scenario(engine, models, fault, requests, images)
    if cascade:
        from .cascade import cascade_report

        result["cascade"] = cascade_report(engine.load(models[1]), engine.load(models[0]), shared)
    return result
