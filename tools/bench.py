"""``edgeloop bench MODEL``: latency like TFLite's benchmark_model, and the engine's overhead.

The engine loop (``LoadedModel.run`` + decode) and the raw backend loop
(``set_tensor``/``invoke``/``get_tensor`` on a bare interpreter of the same
backend, file and threads) are measured in the same run, in alternating
blocks, so machine noise hits both alike. ``overhead_ratio`` is
``p50_ms / raw_p50_ms``. ``jitter_ms`` is the mean absolute difference
between consecutive latencies.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

BLOCK = 5  # runs per alternation block


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("bench", help="measure latency and engine overhead (JSON with --json)",
                       description="'edgeloop bench kernels' times the pre/post-processing kernels instead; "
                       "'edgeloop bench sync' the outbox and the MQTT link against a Mosquitto it starts; "
                       "'edgeloop bench index' the retrieval index against exact numpy search; "
                       "'edgeloop bench serial' the firmware bridge over a pty; "
                       "'edgeloop bench watchdog' the degradation ladder under injected faults; "
                       "'edgeloop bench agent' the device agent end to end.")
    p.add_argument("model", help="registered model name or .tflite path, or 'kernels', 'sync', 'index', 'serial', 'watchdog' or 'agent'")
    p.add_argument("--runs", type=int, help="timed runs of each loop (default: run for --seconds)")
    p.add_argument("--seconds", type=float, default=3.0, help="time budget per loop (default 3)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--compare-backends", action="store_true",
                   help="also time bare interpreters of every importable backend side by side")
    p.add_argument("--cold-start", metavar="IMAGE",
                   help="also time fresh 'edgeloop infer MODEL IMAGE' processes and their peak memory")
    p.add_argument("--cold-runs", type=int, default=10, help="processes for --cold-start (default 10)")
    p.add_argument("--frame", metavar="WxH",
                   help="also time the whole frame pipeline (frame in, top-k out) against a naive one")
    p.add_argument("--n", type=int, default=100_000, help="with 'index': vectors (default 100,000)")
    p.add_argument("--dim", type=int, default=384, help="with 'index': dimensions (default 384)")
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("EDGELOOP_SHARED", "../shared")),
                   help="with 'watchdog' and 'agent': the shared models and photos (default ../shared) [EDGELOOP_SHARED]")
    p.add_argument("--requests", type=int, default=1000, help="with 'watchdog': requests per fault (default 1000)")
    p.add_argument("--invoke-model", metavar="MODEL",
                   help="with 'kernels': also time this model's invoke, for the preprocess share of it")
    common(p)
    p.set_defaults(handler=run)


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


def run(args: argparse.Namespace) -> int:
    from .cli import engine_from_args, print_json

    if args.model == "kernels":
        return run_kernels(args)
    if args.model == "index":
        return run_index(args)
    if args.model in ("sync", "serial", "watchdog", "agent"):
        return run_suite(args)
    engine = engine_from_args(args)
    try:
        r = measure(engine, args.model, args.runs, args.seconds, args.warmup)
        if args.frame:
            from .bench_pipeline import bench_pipeline, parse_frame
            r["pipeline"] = bench_pipeline(engine.load(args.model), parse_frame(args.frame), args.seconds)
    finally:
        engine.close()
    if args.compare_backends:
        from .bench_backends import compare_backends
        r["backend_comparison"] = compare_backends(r["model"]["file"], r["threads"], args.seconds)
    if args.cold_start:
        from .bench_cold import cold_start
        extra = [f"--manifest={m}" for m in args.manifest]
        r["cold_start"] = cold_start(args.model, args.cold_start, args.cold_runs, extra)
    if args.json:
        print_json(r)
    else:
        print(f"{r['model']['name']} on {r['backend']['name']} {r['backend']['version']}, "
              f"{r['threads']} threads, {r['runs']} runs")
        print(f"load {r['load_ms']:.1f} ms, first {r['first_ms']:.2f} ms")
        print(f"engine p50 {r['p50_ms']:.3f}  p95 {r['p95_ms']:.3f}  p99 {r['p99_ms']:.3f}  "
              f"mean {r['mean_ms']:.3f}  std {r['std_ms']:.3f}  jitter {r['jitter_ms']:.3f} ms")
        print(f"raw    p50 {r['raw_p50_ms']:.3f}  p95 {r['raw_p95_ms']:.3f}  p99 {r['raw_p99_ms']:.3f} ms")
        print(f"overhead ratio {r['overhead_ratio']:.4f}")
        for name, b in r.get("backend_comparison", {}).get("backends", {}).items():
            print(f"backend {name} {b['version']}: p50 {b['p50_ms']:.3f}  p95 {b['p95_ms']:.3f} ms")
        if "tflite_runtime_over_litert_p50" in r.get("backend_comparison", {}):
            print(f"tflite_runtime / litert p50: {r['backend_comparison']['tflite_runtime_over_litert_p50']:.2f}")
        if "pipeline" in r:
            pl = r["pipeline"]
            print(f"frame {pl['frame']}: fused p50 {pl['pipeline_p50_ms']:.3f} ms, naive p50 "
                  f"{pl['naive_p50_ms']:.3f} ms, pipeline_speedup {pl['pipeline_speedup']:.2f}")
        if "cold_start" in r:
            c = r["cold_start"]
            print(f"cold start p50 {c['cold_start_p50_ms']:.0f} ms, peak RSS {c['peak_rss_mb']:.1f} MB; "
                  f"with the isolated check every start {c['cold_start_checked_p50_ms']:.0f} ms, "
                  f"{c['peak_rss_checked_mb']:.1f} MB")
    return 0


def run_kernels(args: argparse.Namespace) -> int:
    from .bench_kernels import bench_kernels
    from .cli import engine_from_args, print_json

    invoke_ms = None
    if args.invoke_model:
        engine = engine_from_args(args)
        try:
            r = measure(engine, args.invoke_model, args.runs, min(args.seconds, 1.0), args.warmup)
            invoke_ms = r["raw_p50_ms"]
        finally:
            engine.close()
    report = bench_kernels(seconds=min(args.seconds, 1.0), invoke_ms=invoke_ms)
    report["invoke_ms"] = invoke_ms
    if args.json:
        print_json(report)
        return 0
    print(f"paths: {', '.join(report['paths'])}" + (f"; invoke {invoke_ms:.3f} ms" if invoke_ms else ""))
    for name, rows in report["kernels"].items():
        for size, row in (rows.items() if "fastest" not in rows else [("", rows)]):
            times = "  ".join(f"{p} {row[p + '_ms']:.3f}" for p in ("c", "numba", "numpy") if row.get(p + "_ms") is not None)
            extra = f"  pil {row['pil_ms']:.3f}  x{row['speedup_vs_pil']}" if "pil_ms" in row else ""
            print(f"{name:<28} {size or row.get('input', ''):<40} {times}{extra}")
    return 0


def run_index(args: argparse.Namespace) -> int:
    import sys

    from .bench_index import bench_index
    from .cli import print_json

    r = bench_index(args.n, args.dim, progress=lambda m: print(f"bench index: {m}", file=sys.stderr, flush=True))
    if args.json:
        print_json(r)
    else:
        for name in ("random", "clustered"):
            print(f"{name}: numpy p50 {r[name]['numpy_p50_ms']} ms")
            for mode in ("float", "int8", "binary", "float_cells", "int8_cells", "binary_cells"):
                print(f"  {mode:<13} " + "  ".join(f"{k} {v}" for k, v in r[name][mode].items()))
        print(f"best: {r.get('best')}")
    return 0


def _suite(args: argparse.Namespace, engine: Any) -> dict[str, Any]:
    """The figures of ``edgeloop bench sync|serial|watchdog|agent``."""
    seconds = min(args.seconds, 3.0)
    if args.model == "sync":
        from .bench_sync import bench_sync
        return bench_sync(seconds=seconds)
    if args.model == "serial":
        from .bench_serial import bench_serial
        return bench_serial(seconds, engine)
    if args.model == "watchdog":
        from .bench_watchdog import bench_watchdog
        return bench_watchdog(engine, args.shared, args.requests)
    from .bench_agent import bench_agent
    return bench_agent(engine, seconds, args.shared)


def run_suite(args: argparse.Namespace) -> int:
    from .cli import engine_from_args, print_json

    if args.model == "agent" and args.threads is None and "EDGELOOP_NUM_THREADS" not in os.environ:
        from edgeloop.runtime.agent.agent import inference_threads

        args.threads = inference_threads()  # as `edgeloop run` does
    engine = None if args.model == "sync" else engine_from_args(args)
    try:
        r = _suite(args, engine)
    finally:
        if engine is not None:
            engine.close()
    if args.json:
        print_json(r)
    else:
        width = max(map(len, r)) + 2
        for key, value in r.items():
            print(f"{key:<{width}} {value}")
    return 0
