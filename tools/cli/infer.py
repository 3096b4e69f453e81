"""``edgeloop infer MODEL INPUT...``: classify (or embed) images or ``.npy`` arrays."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("infer", help="run a model on images or .npy arrays",
                       description="INPUT is an image (resized per the manifest; for an unregistered model "
                       "resized bilinearly to the input size, RGB or grey, pixels as-is for uint8 inputs) or a "
                       ".npy array fed as the input tensor as-is (its shape and dtype must match).")
    p.add_argument("model", help="registered model name or .tflite path")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--top", type=int, default=5, help="classes to show (default 5)")
    p.add_argument("--labels", type=Path, help="labels file (one per line, or 'index label')")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--save-outputs", type=Path, metavar="FILE.npz",
                   help="write the raw output tensors, keys in{i}_out{j} (input i, output j)")
    common(p)
    p.set_defaults(handler=run)


def _result(model: Any, source: str, top: int) -> tuple[dict[str, Any], list[Any]]:
    array = model.prepare(source)
    start = time.perf_counter()
    outputs = model.run(array)
    latency = (time.perf_counter() - start) * 1000.0
    if model.entry.registered:
        decoded = model.decode(outputs, top)
    else:
        # Unregistered models: output 0 read as class scores, the common case.
        from edgeloop.runtime.results import classify
        decoded = classify(outputs[0], model.outputs[0], model.labels, top)
    return {"input": source, **decoded.to_dict(), "latency_ms": round(latency, 3)}, outputs


def _print_text(model: Any, row: dict[str, Any]) -> None:
    print(f"{row['input']}  ({row['latency_ms']:.2f} ms)")
    for c in row.get("top", []):
        label = f"  {c['label']}" if c["label"] is not None else ""
        print(f"  {c['score']:.4f}  {c['index']:>5}{label}")
    if "embedding" in row:
        print(f"  embedding, {row['embedding']['dim']} dims")
    for d in row.get("detections", []):
        print(f"  {d['score']:.4f}  {d['index']:>5}  {d['label'] or ''}  box={d['box']}")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edgeloop.runtime.errors import ConfigError, InputError

    from .common import EXIT_ERROR, engine_from_args, print_json

    if args.top < 1:
        raise ConfigError(f"--top: {args.top} is not positive", "use --top 1 or more")
    engine = engine_from_args(args)
    try:
        model = engine.load(args.model)
        if args.labels:
            model.set_labels(args.labels)
        rows, saved, failed = [], {}, 0
        for i, source in enumerate(args.inputs):
            try:
                row, outputs = _result(model, source, args.top)
            except InputError as exc:
                # One bad input must not cost the results of the others.
                failed += 1
                rows.append({"input": source, "error": f"{type(exc).__name__}: {exc}"})
                print(f"edgeloop: error: {rows[-1]['error']}", file=sys.stderr)
                continue
            rows.append(row)
            saved.update({f"in{i}_out{j}": o for j, o in enumerate(outputs)})
            if not args.json:
                _print_text(model, row)
                sys.stdout.flush()
        if args.save_outputs:
            np.savez(args.save_outputs, **saved)
        if args.json:
            print_json({"model": model.describe(), "results": rows})
        return EXIT_ERROR if failed else 0
    finally:
        engine.close()
