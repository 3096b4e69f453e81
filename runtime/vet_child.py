"""The isolated check: open, inspect and invoke a model once, in a child process.

Run as ``python -m edgeloop.runtime.vet_child`` with a JSON request on stdin;
prints one line ``EDGELOOP-VET <json report>`` on stdout. If the model
crashes the interpreter, only this process dies.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from typing import Any

MARKER = "EDGELOOP-VET "
_FLOAT_TYPES = ("float32", "float16", "float64")
# Builtin op names are upper case (CONV_2D); custom ops keep their own spelling.
_BUILTIN_NAME = re.compile(r"^[A-Z0-9_]+$")


def _tensor_dtypes(native: Any) -> list[str]:
    names = []
    for n in range(len(native.get_tensor_details())):
        try:
            names.append(native._get_tensor_details(n, 0)["dtype"].__name__)
        except (ValueError, RuntimeError, KeyError):
            continue
    return names


def examine(request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from .backends import get_backend
    from .delegates import DelegateSpec, load_delegate, required_delegate
    from .errors import EdgeloopError

    report: dict[str, Any] = {"ok": False, "path": request["path"]}
    try:
        backend = get_backend(request.get("backend", "auto"))
        report["backend"] = {"name": backend.name, "version": backend.version}
        probe = backend.create(request["path"], num_threads=1, xnnpack=False, allocate=False)
        native = probe._native
        ops = probe.op_names()
        counts = Counter(ops)
        dtypes = _tensor_dtypes(native)
        report.update(
            inputs=[t.to_dict() for t in probe.inputs],
            outputs=[t.to_dict() for t in probe.outputs],
            ops=dict(sorted(counts.items())),
            custom_ops=sorted(o for o in counts if not _BUILTIN_NAME.match(o)),
            fully_integer=not any(d in _FLOAT_TYPES for d in dtypes)
            and not any(t.dtype.kind == "f" for t in (*probe.inputs, *probe.outputs)),
            tensor_count=len(dtypes),
        )
        needs = required_delegate(ops)
        report["needs_delegate"] = needs
        report["edgetpu"] = needs == "edgetpu"
        probe.close()
        spec = request.get("delegate")
        delegates = []
        if spec:
            delegates = [load_delegate(backend, DelegateSpec(**spec))]
        elif needs:
            report["error"] = {"type": "DelegateRequired", "problem": f"the model needs the {needs} delegate",
                               "fix": None}
            return report
        interp = backend.create(request["path"], num_threads=int(request.get("num_threads", 1)),
                                xnnpack=bool(request.get("xnnpack", True)), delegates=delegates)
        for n, spec_in in enumerate(interp.inputs):
            interp.set_input(n, np.zeros(spec_in.shape, spec_in.dtype))
        start = time.perf_counter()
        interp.invoke()
        report["invoke_ms"] = (time.perf_counter() - start) * 1000.0
        for n in range(len(interp.outputs)):
            interp.output(n)
        interp.close()
        report["ok"] = True
    except EdgeloopError as exc:
        report["error"] = {"type": type(exc).__name__, "problem": exc.problem, "fix": exc.fix}
    return report


def main() -> int:
    request = json.loads(sys.stdin.read())
    report = examine(request)
    sys.stdout.write(MARKER + json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
