"""Parent side of the isolated check (see ``vet_child``).

TFLite does not promise memory safety for untrusted flatbuffers, so a model
that is not registered, or that failed verification, is opened and invoked
once in a child process before it comes anywhere near the agent's process.

A pass is remembered by the file's sha256, the backend and its version and
the delegate (an empty marker file under ``EDGELOOP_CACHE_DIR``, default
``$XDG_CACHE_HOME/edgeloop`` or ``~/.cache/edgeloop``), so the same bytes are
not checked again on every start. Failures are never remembered.
``EDGELOOP_CACHE_DIR=off`` disables it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .delegates import DelegateSpec
from .errors import ModelRejected
from .vet_child import MARKER


def vet_model(path: Path, *, backend: str = "auto", num_threads: int = 1, xnnpack: bool = True,
              delegate: DelegateSpec | None = None, timeout_s: float = 60.0,
              use_cache: bool = True) -> dict[str, Any]:
    """Run the check in a child; return its report (``report["ok"]`` says if it passed).

    A crash or hang of the child becomes a report with ``error.type == "ModelRejected"``.
    A remembered pass returns ``{"ok": True, "cached": True}`` without the details.
    """
    marker = _pass_marker(path, backend, delegate) if use_cache else None
    if marker is not None and marker.exists():
        return {"ok": True, "path": str(path), "cached": True}
    request = {"path": str(path), "backend": backend, "num_threads": num_threads, "xnnpack": xnnpack,
               "delegate": asdict(delegate) if delegate else None}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeloop.runtime.vet_child"],
                              input=json.dumps(request), capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return _rejected(path, f"the isolated check of {path} did not finish in {timeout_s:.0f} s (hang)")
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            report = json.loads(line[len(MARKER):])
            if report.get("ok") and marker is not None:
                _remember(marker)
            return report
    if proc.returncode < 0:
        how = f"killed by {signal.Signals(-proc.returncode).name}"
    else:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        how = f"exit status {proc.returncode}: {tail[0]}"
    return _rejected(path, f"{path} crashed the interpreter in the isolated check ({how})")


def _cache_dir() -> Path | None:
    configured = os.environ.get("EDGELOOP_CACHE_DIR")
    if configured:
        return None if configured.lower() == "off" else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeloop"


def _pass_marker(path: Path, backend: str, delegate: DelegateSpec | None) -> Path | None:
    root = _cache_dir()
    if root is None:
        return None
    from edgeloop.models.store import sha256_of

    from .backends import get_backend

    impl = get_backend(backend)
    target = delegate.describe() if delegate else "cpu"
    name = f"{sha256_of(path)}-{impl.name}-{impl.version}-{target}".replace("/", "_").replace(":", "_")
    return root / "vetted" / name


def _remember(marker: Path) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass  # a read-only cache only costs the next start a child process


def _rejected(path: Path, problem: str) -> dict[str, Any]:
    return {"ok": False, "path": str(path),
            "error": {"type": "ModelRejected", "problem": problem,
                      "fix": "this file is not a usable TFLite model: re-export or re-download it"}}


def raise_for_report(report: dict[str, Any]) -> None:
    """Raise ``ModelRejected`` carrying the child's reason unless the report passed."""
    if report.get("ok"):
        return
    err = report.get("error") or {}
    problem = err.get("problem") or "the isolated check failed"
    if err.get("type") not in (None, "ModelRejected"):
        problem = f"{Path(report['path']).name} failed the isolated check: {problem}"
    raise ModelRejected(problem, err.get("fix") or "check the model with 'edgeloop models inspect'")
