"""``edgeloop models list | verify | inspect``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("models", help="the model store: list, verify, inspect")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    lp = msub.add_parser("list", help="registered models and their variants")
    lp.add_argument("--json", action="store_true")
    common(lp)
    lp.set_defaults(handler=cmd_list)
    vp = msub.add_parser("verify", help="check sha256 of every file and run the golden inputs")
    vp.add_argument("names", nargs="*", help="models to verify (default: all)")
    vp.add_argument("--json", action="store_true")
    common(vp)
    vp.set_defaults(handler=cmd_verify)
    ip = msub.add_parser("inspect", help="tensors, quantization, ops of a model file (checked in a child process)")
    ip.add_argument("model", help=".tflite path or registered name")
    ip.add_argument("--json", action="store_true")
    common(ip)
    ip.set_defaults(handler=cmd_inspect)


def cmd_list(args: argparse.Namespace) -> int:
    from .common import engine_from_args, print_json

    store = engine_from_args(args).store
    rows = []
    for entry in store.entries():
        row = entry.to_dict()
        row["manifest"] = str(entry.source)
        row["files_present"] = all(a.file.is_file() for a in entry.artifacts.values())
        rows.append(row)
    if args.json:
        print_json({"manifests": [str(m) for m in store.manifests], "models": rows})
        return 0
    if not rows:
        print("no models registered (manifests: " + ", ".join(map(str, store.manifests)) + ")")
    for row in rows:
        variants = ", ".join(f"{k}={Path(v['file']).name}" for k, v in row["variants"].items())
        missing = "" if row["files_present"] else "  [FILES MISSING]"
        print(f"{row['name']:<28} {row['version']:<10} {row['task']:<16} {variants}{missing}")
    return 0


def _verify_entry(engine: Any, entry: Any) -> dict[str, Any]:
    from edgeloop.models.store import verify_artifact
    from edgeloop.runtime.errors import EdgeloopError

    row: dict[str, Any] = {"name": entry.name, "files": {}, "golden": [], "ok": True}
    for target, artifact in entry.artifacts.items():
        try:
            verify_artifact(artifact, entry)
            row["files"][target] = "ok"
        except EdgeloopError as exc:
            row["files"][target] = str(exc)
            row["ok"] = False
    if entry.golden and row["files"].get("cpu") == "ok":
        try:
            model = engine.load(entry.name)
        except EdgeloopError as exc:
            row["golden"].append({"error": str(exc)})
            row["ok"] = False
            return row
        for case in entry.golden:
            result = model.classify(case.input, 1)
            ok = case.top1 is None or result.best.index == case.top1
            row["golden"].append({"input": str(case.input), "expected": case.top1,
                                  "got": result.best.index, "ok": ok})
            row["ok"] &= ok
    return row


def cmd_verify(args: argparse.Namespace) -> int:
    from edgeloop.runtime.errors import ModelNotFound

    from .common import engine_from_args, print_json

    engine = engine_from_args(args)
    try:
        entries = engine.store.entries()
        if args.names:
            unknown = sorted(set(args.names) - {e.name for e in entries})
            if unknown:
                raise ModelNotFound(f"not registered: {', '.join(unknown)}", "run 'edgeloop models list'")
            entries = [e for e in entries if e.name in args.names]
        rows = [_verify_entry(engine, e) for e in entries]
    finally:
        engine.close()
    if args.json:
        print_json({"models": rows, "ok": all(r["ok"] for r in rows)})
    else:
        for r in rows:
            print(f"{'OK  ' if r['ok'] else 'FAIL'} {r['name']}")
            for target, state in r["files"].items():
                print(f"     {target}: {state}")
            for g in r["golden"]:
                print(f"     golden {g}")
    return 0 if all(r["ok"] for r in rows) else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from edgeloop.runtime.vetting import vet_model

    from .common import engine_from_args, print_json

    engine = engine_from_args(args)
    entry = engine.store.resolve(args.model)
    path = Path(args.model).resolve() if Path(args.model).is_file() else next(iter(entry.artifacts.values())).file
    report = vet_model(path, backend=engine.config.backend, xnnpack=engine.config.xnnpack, use_cache=False)
    report["size_bytes"] = path.stat().st_size
    if args.json:
        print_json(report)
        return 0 if report.get("ok") or report.get("needs_delegate") else 1
    print(f"{path}  ({report['size_bytes']} bytes)")
    if "inputs" not in report:
        err = report.get("error", {})
        print(f"  cannot be opened: {err.get('problem')}")
        return 1
    for kind in ("inputs", "outputs"):
        for n, t in enumerate(report[kind]):
            q = t["quantization"]
            qtext = ("per-channel" if q and "scales" in q else
                     f"scale={q['scale']:.8g} zero_point={q['zero_point']}" if q else "not quantized")
            print(f"  {kind[:-1]} {n}: {t['name']}  {t['shape']}  {t['dtype']}  {qtext}")
    print("  ops: " + ", ".join(f"{k}x{v}" for k, v in report["ops"].items()))
    print(f"  fully integer: {'yes' if report['fully_integer'] else 'no'}")
    print(f"  Edge TPU custom ops: {'yes' if report['edgetpu'] else 'no'}")
    if report["custom_ops"]:
        print(f"  custom ops: {', '.join(report['custom_ops'])}")
    if report.get("ok"):
        print(f"  isolated invoke: ok ({report['invoke_ms']:.2f} ms)")
    else:
        err = report.get("error", {})
        print(f"  isolated invoke: FAILED: {err.get('problem')}")
    return 0 if report.get("ok") or report.get("needs_delegate") else 1
