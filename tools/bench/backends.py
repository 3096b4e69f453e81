"""The same model on every importable backend, side by side in one run.

Bare interpreters (the backends' own API, same file, threads and XNNPACK
setting), measured in alternating blocks so noise hits each alike.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgeloop.runtime.backends import AUTO_ORDER, get_backend
from edgeloop.runtime.errors import BackendUnavailable

from . import BLOCK, summarize


def compare_backends(model_path: str, threads: int, seconds: float, warmup: int = 10) -> dict[str, Any]:
    loops: dict[str, Any] = {}
    versions: dict[str, str] = {}
    for name in AUTO_ORDER:
        try:
            backend = get_backend(name)
        except BackendUnavailable:
            continue
        module = backend._module
        interp = module.Interpreter(model_path=model_path, num_threads=threads,
                                    experimental_op_resolver_type=module.OpResolverType.AUTO)
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        out = interp.get_output_details()[0]
        x = np.random.default_rng(0).integers(0, 256, inp["shape"]).astype(inp["dtype"])

        def once(interp: Any = interp, i: int = inp["index"], o: int = out["index"], x: Any = x) -> None:
            interp.set_tensor(i, x)
            interp.invoke()
            interp.get_tensor(o)

        loops[name] = once
        versions[name] = backend.version
    samples: dict[str, list[float]] = {name: [] for name in loops}
    for once in loops.values():
        for _ in range(warmup):
            once()
    deadline = time.perf_counter() + seconds * len(loops)
    while time.perf_counter() < deadline or min(len(s) for s in samples.values()) < 50:
        for name, once in loops.items():
            for _ in range(BLOCK):
                start = time.perf_counter()
                once()
                samples[name].append((time.perf_counter() - start) * 1000.0)
    result: dict[str, Any] = {
        "model": model_path,
        "threads": threads,
        "backends": {name: {"version": versions[name], "runs": len(s), **summarize(s)}
                     for name, s in samples.items()},
    }
    if "litert" in samples and "tflite_runtime" in samples:
        result["tflite_runtime_over_litert_p50"] = round(
            result["backends"]["tflite_runtime"]["p50_ms"] / result["backends"]["litert"]["p50_ms"], 3)
    return result
