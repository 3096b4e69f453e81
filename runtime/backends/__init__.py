"""Interpreter backends, one file each, found by name.

``auto`` picks the first that imports, in ``AUTO_ORDER``. A backend whose
import fails disables only itself; asking for it by name raises
``BackendUnavailable`` naming the package to install.
"""

from __future__ import annotations

import importlib
import threading

from ..errors import BackendUnavailable, ConfigError
from .base import BackendInterpreter, InterpreterBackend

AUTO_ORDER: tuple[str, ...] = ("litert", "tflite_runtime")
_ALIASES = {"ai-edge-litert": "litert", "ai_edge_litert": "litert",
            "tflite-runtime": "tflite_runtime", "tflite": "tflite_runtime"}

_cache: dict[str, InterpreterBackend] = {}
_lock = threading.Lock()

__all__ = ["AUTO_ORDER", "BackendInterpreter", "InterpreterBackend", "get_backend", "probe_backends"]


def _load(name: str) -> InterpreterBackend:
    with _lock:
        if name in _cache:
            return _cache[name]
        module = importlib.import_module(f"{__name__}.{name}")
        try:
            backend = module.load()
        except Exception as exc:  # ImportError, or numpy ABI errors raised at import
            raise BackendUnavailable(
                f"backend '{name}' cannot be imported ({type(exc).__name__}: {exc})",
                f"pip install '{module.PACKAGE}'") from exc
        _cache[name] = backend
        return backend


def get_backend(name: str = "auto") -> InterpreterBackend:
    """The backend called ``name``, or the first importable one for ``auto``."""
    name = _ALIASES.get(name, name)
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            try:
                return _load(candidate)
            except BackendUnavailable as exc:
                reasons.append(str(exc))
        raise BackendUnavailable("no interpreter backend can be imported (" + "; ".join(reasons) + ")",
                                 "pip install ai-edge-litert")
    if name not in AUTO_ORDER:
        raise ConfigError(f"backend: unknown backend '{name}'",
                          f"use one of auto, {', '.join(AUTO_ORDER)}")
    return _load(name)


def probe_backends() -> list[dict[str, str | bool]]:
    """Every known backend with whether it imports, its version, or why not."""
    rows: list[dict[str, str | bool]] = []
    for name in AUTO_ORDER:
        try:
            backend = _load(name)
            rows.append({"name": name, "available": True, "version": backend.version})
        except BackendUnavailable as exc:
            rows.append({"name": name, "available": False, "error": str(exc)})
    return rows
