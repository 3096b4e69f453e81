"""``edgeloop bench SUITE``: one sub-command per suite, each with its own flags; JSON with
``--json``. ``edgeloop bench MODEL`` (a registered name or a ``.tflite`` path) is short for
``edgeloop bench model MODEL``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

SUITES = ("model", "kernels", "index", "sync", "regional", "serial", "watchdog", "agent", "rollout", "flood")


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks, one sub-command per suite (JSON with --json)",
                       description="edgeloop bench MODEL is short for edgeloop bench model MODEL.")
    suites = p.add_subparsers(dest="suite", required=True, metavar="SUITE")

    def suite(name: str, help_: str, handler: Callable[[argparse.Namespace], int], engine: bool = True,
              seconds: float = 3.0) -> argparse.ArgumentParser:
        s = suites.add_parser(name, help=help_)
        s.add_argument("--json", action="store_true", help="print JSON")
        s.add_argument("--seconds", type=float, default=seconds, help=f"time budget per loop (default {seconds:g})")
        if engine:
            common(s)
        s.set_defaults(handler=handler)
        return s

    m = suite("model", "a model's latency and the engine's overhead against a bare interpreter", run_model)
    m.add_argument("model", help="registered model name or .tflite path")
    m.add_argument("--runs", type=int, help="timed runs of each loop (default: run for --seconds)")
    m.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    m.add_argument("--compare-backends", action="store_true",
                   help="also time bare interpreters of every importable backend side by side")
    m.add_argument("--cold-start", metavar="IMAGE",
                   help="also time fresh 'edgeloop infer MODEL IMAGE' processes and their peak memory")
    m.add_argument("--cold-runs", type=int, default=10, help="processes for --cold-start (default 10)")
    m.add_argument("--frame", metavar="WxH",
                   help="also time the whole frame pipeline (frame in, top-k out) against a naive one")
    k = suite("kernels", "the pre/post-processing kernels on every path", run_kernels, seconds=1.0)
    k.add_argument("--invoke-model", metavar="MODEL",
                   help="also time this model's invoke, for the preprocess share of it")
    k.add_argument("--warmup", type=int, default=10, help="untimed runs of --invoke-model first (default 10)")
    i = suite("index", "the retrieval index against exact numpy search", run_index, engine=False)
    i.add_argument("--n", type=int, default=100_000, help="vectors (default 100,000)")
    i.add_argument("--dim", type=int, default=384, help="dimensions (default 384)")
    suite("sync", "the outbox and the MQTT link against a Mosquitto it starts", run_suite, engine=False)
    r = suite("regional", "a simulated fleet through a broker into receivers and the regional store",
              run_regional, engine=False, seconds=20.0)
    r.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    r.add_argument("--rate", type=float, default=22.0, help="records/s each device enqueues (default 22)")
    r.add_argument("--every", type=float, default=1.0,
                   help="each device enqueues rate x this many records at a time, this often (s; default 1)")
    r.add_argument("--processes", type=int, default=4,
                   help="processes the devices run in (default 4; at least one per 150 devices)")
    r.add_argument("--sqlite", action="store_true", help="one receiver on an SQLite file instead of PostgreSQL")
    ro = suite("rollout", "a rollout's cost to the camera serving through it, against steady windows",
               run_rollout, engine=False)
    ro.add_argument("--rounds", type=int, default=5, help="side-by-side rounds for the medians (default 5)")
    ro.add_argument("--fps", type=float, default=200.0, help="the camera's frame rate (default 200)")
    ro.add_argument("--probation-s", type=float, default=10.0, help="the bundles' probation window (default 10)")
    fl = suite("flood", "a request flood's cost to the camera, against quiet windows", run_flood, engine=False)
    fl.add_argument("--rounds", type=int, default=5, help="side-by-side rounds for the medians (default 5)")
    fl.add_argument("--fps", type=float, default=100.0, help="the camera's frame rate (default 100)")
    fl.add_argument("--rate", type=float, default=10_000.0, help="requests/s the flooder sends (default 10000)")
    fl.add_argument("--window-s", type=float, default=5.0, help="each window's length (default 5)")
    suite("serial", "the firmware bridge over a pty", run_suite)
    w = suite("watchdog", "the degradation ladder under injected faults", run_suite)
    w.add_argument("--requests", type=int, default=1000, help="requests per fault (default 1000)")
    a = suite("agent", "the device agent end to end", run_suite)
    a.add_argument("--rounds", type=int, default=5, help="side-by-side rounds for the medians (default 5)")
    for s in (w, a):
        s.add_argument("--shared", type=Path, default=Path(os.environ.get("EDGELOOP_SHARED", "../shared")),
                       help="the shared models and photos (default ../shared) [EDGELOOP_SHARED]")


def shorthand(argv: list[str]) -> list[str]:
    """``bench MODEL ...`` → ``bench model MODEL ...`` (what the README's commands use)."""
    if "bench" in argv:
        at = argv.index("bench") + 1
        if at < len(argv) and argv[at] not in SUITES and not argv[at].startswith("-"):
            return [*argv[:at], "model", *argv[at:]]
    return argv


def _print(report: dict[str, Any], as_json: bool) -> None:
    from .common import print_json

    if as_json:
        print_json(report)
        return
    width = max(map(len, report)) + 2
    for key, value in report.items():
        print(f"{key:<{width}} {value}")


def run_model(args: argparse.Namespace) -> int:
    from edgeloop.tools.bench.model import measure

    from .common import engine_from_args

    engine = engine_from_args(args)
    try:
        r = measure(engine, args.model, args.runs, args.seconds, args.warmup)
        if args.frame:
            from edgeloop.tools.bench.pipeline import bench_pipeline, parse_frame

            r["pipeline"] = bench_pipeline(engine.load(args.model), parse_frame(args.frame), args.seconds)
    finally:
        engine.close()
    if args.compare_backends:
        from edgeloop.tools.bench.backends import compare_backends

        r["backend_comparison"] = compare_backends(r["model"]["file"], r["threads"], args.seconds)
    if args.cold_start:
        from edgeloop.tools.bench.cold import cold_start

        r["cold_start"] = cold_start(args.model, args.cold_start, args.cold_runs,
                                     [f"--manifest={m}" for m in args.manifest])
    if args.json:
        _print(r, True)
        return 0
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
    from edgeloop.tools.bench.kernels import bench_kernels
    from edgeloop.tools.bench.model import measure

    from .common import engine_from_args

    invoke_ms = None
    if args.invoke_model:
        engine = engine_from_args(args)
        try:
            invoke_ms = measure(engine, args.invoke_model, None, args.seconds, args.warmup)["raw_p50_ms"]
        finally:
            engine.close()
    report = bench_kernels(seconds=args.seconds, invoke_ms=invoke_ms)
    report["invoke_ms"] = invoke_ms
    if args.json:
        _print(report, True)
        return 0
    print(f"paths: {', '.join(report['paths'])}" + (f"; invoke {invoke_ms:.3f} ms" if invoke_ms else ""))
    for name, rows in report["kernels"].items():
        for size, row in (rows.items() if "fastest" not in rows else [("", rows)]):
            times = "  ".join(f"{p} {row[p + '_ms']:.3f}" for p in ("c", "numba", "numpy")
                              if row.get(p + "_ms") is not None)
            extra = f"  pil {row['pil_ms']:.3f}  x{row['speedup_vs_pil']}" if "pil_ms" in row else ""
            print(f"{name:<28} {size or row.get('input', ''):<40} {times}{extra}")
    return 0


def run_index(args: argparse.Namespace) -> int:
    from edgeloop.tools.bench.index import bench_index

    r = bench_index(args.n, args.dim, progress=lambda m: print(f"bench index: {m}", file=sys.stderr, flush=True))
    if args.json:
        _print(r, True)
        return 0
    for name in ("random", "clustered"):
        print(f"{name}: numpy p50 {r[name]['numpy_p50_ms']} ms")
        for mode in ("float", "int8", "binary", "float_cells", "int8_cells", "binary_cells"):
            print(f"  {mode:<13} " + "  ".join(f"{k} {v}" for k, v in r[name][mode].items()))
    print(f"best: {r.get('best')}")
    return 0


def run_regional(args: argparse.Namespace) -> int:
    from edgeloop.runtime.errors import ConfigError
    from edgeloop.tools.bench.regional import bench_regional

    if args.devices < 1 or args.processes < 1 or args.rate <= 0 or args.seconds <= 0 or args.every <= 0:
        raise ConfigError("bench regional: --devices, --processes, --rate, --every and --seconds must be positive",
                          "for example --devices 1000 --rate 22 --seconds 20")
    r = bench_regional(args.devices, args.seconds, args.rate, min(args.processes, args.devices),
                       postgres=not args.sqlite, every=args.every,
                       progress=lambda m: print(f"bench regional: {m}", file=sys.stderr, flush=True))
    _print(r, args.json)
    return 0


def run_rollout(args: argparse.Namespace) -> int:
    from edgeloop.runtime.errors import ConfigError
    from edgeloop.tools.bench.rollout import bench_rollout

    if args.rounds < 1 or not 0 < args.fps <= 1000 or not 0 < args.probation_s <= 600:
        raise ConfigError("bench rollout: --rounds must be positive, --fps within 0..1000, --probation-s within 0..600",
                          "for example --rounds 3 --fps 100 --probation-s 2")
    r = bench_rollout(args.rounds, args.fps, args.probation_s,
                      progress=lambda m: print(f"bench rollout: {m}", file=sys.stderr, flush=True))
    _print(r, args.json)
    return 0


def run_flood(args: argparse.Namespace) -> int:
    from edgeloop.runtime.errors import ConfigError
    from edgeloop.tools.bench.flood import bench_flood

    if args.rounds < 1 or not 0 < args.fps <= 1000 or not 0 < args.rate <= 100_000 or not 0 < args.window_s <= 600:
        raise ConfigError("bench flood: --rounds must be positive, --fps within 0..1000, --rate within 0..100000, "
                          "--window-s within 0..600", "for example --rounds 3 --rate 10000 --window-s 5")
    r = bench_flood(args.rounds, args.fps, args.rate, args.window_s,
                    progress=lambda m: print(f"bench flood: {m}", file=sys.stderr, flush=True))
    _print(r, args.json)
    return 0


def _suite(args: argparse.Namespace, engine: Any) -> dict[str, Any]:
    seconds = min(args.seconds, 3.0)
    if args.suite == "sync":
        from edgeloop.tools.bench.sync import bench_sync

        return bench_sync(seconds=seconds)
    if args.suite == "serial":
        from edgeloop.tools.bench.serial import bench_serial

        return bench_serial(seconds, engine)
    if args.suite == "watchdog":
        from edgeloop.tools.bench.watchdog import bench_watchdog

        return bench_watchdog(engine, args.shared, args.requests)
    from edgeloop.tools.bench.agent import bench_agent

    return bench_agent(engine, seconds, args.shared, args.rounds)


def run_suite(args: argparse.Namespace) -> int:
    from .common import engine_from_args

    if args.suite == "agent" and args.threads is None and "EDGELOOP_NUM_THREADS" not in os.environ:
        from edgeloop.runtime.agent.agent import inference_threads

        args.threads = inference_threads()  # as `edgeloop run` does
    engine = None if args.suite == "sync" else engine_from_args(args)
    try:
        r = _suite(args, engine)
    finally:
        if engine is not None:
            engine.close()
    _print(r, args.json)
    return 0
