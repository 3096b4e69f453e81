"""``edgeloop bench MODEL``: latency like TFLite's benchmark_model, and the engine's overhead.

The engine loop (``LoadedModel.run`` + decode) and the raw backend loop
(``set_tensor``/``invoke``/``get_tensor`` on a bare interpreter of the same
backend, file and threads) are measured in the same run, in alternating
blocks, so machine noise hits both alike. ``overhead_ratio`` is
``p50_ms / raw_p50_ms``. ``jitter_ms`` is the mean absolute difference
between consecutive latencies.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from . import BLOCK, summarize


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def measure(engine: Any, ref: str, runs: int | None, seconds: float, warmup: int) -> dict[str, Any]:
    start = time.perf_counter()
    model = engine.load(ref)
    load_ms = (time.perf_counter() - start) * 1000.0
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 256, t.shape).astype(t.dtype) if t.dtype.kind in "iu"
              else rng.standard_normal(t.shape).astype(t.dtype) for t in model.inputs]
    decode = model.decode if model.entry.registered else (lambda outs: outs)

    def engine_once() -> None:
        decode(model.run(*inputs))

    first_ms = _timed(engine_once)  # load already ran warm-up invokes; this is the first real call

    # The raw loop: a bare interpreter of the same backend, file and settings.
    backend = engine.backend
    resolver = backend._module.OpResolverType
    bare = backend._module.Interpreter(
        model_path=str(model.artifact.file), num_threads=engine.config.num_threads,
        experimental_op_resolver_type=resolver.AUTO if engine.config.xnnpack
        else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    bare.allocate_tensors()
    in_idx = [d["index"] for d in bare.get_input_details()]
    out_idx = [d["index"] for d in bare.get_output_details()]

    def raw_once() -> None:
        for i, x in zip(in_idx, inputs):
            bare.set_tensor(i, x)
        bare.invoke()
        for o in out_idx:
            bare.get_tensor(o)

    for _ in range(warmup):
        engine_once()
        raw_once()
    eng: list[float] = []
    raw: list[float] = []
    deadline = time.perf_counter() + 2 * seconds
    while (len(eng) < runs) if runs else (time.perf_counter() < deadline or len(eng) < 50):
        for _ in range(BLOCK):
            eng.append(_timed(engine_once))
        for _ in range(BLOCK):
            raw.append(_timed(raw_once))
    del bare
    result: dict[str, Any] = {
        "model": model.describe(),
        "backend": {"name": backend.name, "version": backend.version},
        "threads": engine.config.num_threads,
        "xnnpack": engine.config.xnnpack,
        "runs": len(eng),
        "load_ms": round(load_ms, 3),
        "first_ms": round(first_ms, 4),
        **summarize(eng),
        **summarize(raw, "raw_"),
    }
    result["overhead_ratio"] = round(result["p50_ms"] / result["raw_p50_ms"], 4)
    return result
