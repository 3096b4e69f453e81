"""Pre- and post-processing kernels with three paths: C (cffi), numba, numpy reference.

Each kernel runs on the first path, in the order C → numba → numpy, that is
available and implements it (numba covers only the kernels where it beats
numpy). ``EDGELOOP_KERNELS=c|numba|numpy`` forces a path (numpy always
serves as the last resort for kernels the forced path lacks). Which path was
chosen, and why a faster one was not, is logged once.

The numpy reference (``reference.py``) is the specification; ``plan.py``
states the arithmetic contract.
"""

from __future__ import annotations

import binascii
import importlib
import logging
import os
import threading
import zlib
from types import ModuleType
from typing import Any, Callable

import numpy as np

from . import reference
from .plan import FORMATS, RESIZES, Plan, make_plan

log = logging.getLogger("edgeloop.kernels")

PATHS = ("c", "numba", "numpy")
ENV = "EDGELOOP_KERNELS"
_MODULES = {"c": "native_path", "numba": "numba_path"}
_loaded: dict[str, ModuleType | None] = {}
_reasons: dict[str, str] = {}
_lock = threading.Lock()
_announced = False

__all__ = ["FORMATS", "PATHS", "RESIZES", "Plan", "available_paths", "binarize", "crc16_ccitt", "crc32",
           "dequantize", "implementation", "keypoints", "l2_normalize", "make_plan", "nms", "path_for", "paths_for",
           "preprocess", "quantize_int8", "softmax", "topk"]


def _module(path: str) -> ModuleType | None:
    """The path's module, or None (with the reason remembered) if it cannot be imported."""
    if path == "numpy":
        return reference
    with _lock:
        if path not in _loaded:
            try:
                _loaded[path] = importlib.import_module(f"{__name__}.{_MODULES[path]}")
            except Exception as exc:  # ImportError, or a compiler/runtime failure inside numba
                _loaded[path] = None
                _reasons[path] = f"{type(exc).__name__}: {exc}"
        return _loaded[path]


_chosen: dict[tuple[str, str], Callable[..., Any]] = {}


def _order() -> tuple[str, ...]:
    forced = os.environ.get(ENV, "auto").strip().lower()
    if forced in ("", "auto"):
        # numba stands in for a missing C extension. Beside it, a kernel C lacks (dequantize,
        # l2_normalize: vector-sized) goes to numpy: loading LLVM for those cost the agent
        # 60 MB of memory and a JIT compile, for no gain at that size.
        return ("c", "numpy") if _module("c") is not None else PATHS
    if forced not in PATHS:
        raise ValueError(f"{ENV}: '{forced}' is not one of auto, {', '.join(PATHS)}")
    return (forced, "numpy") if forced != "numpy" else ("numpy",)


def available_paths() -> list[str]:
    return [p for p in PATHS if _module(p) is not None]


def paths_for(kernel: str) -> list[str]:
    """The available paths that implement ``kernel`` (numpy implements every one)."""
    return [p for p in available_paths() if hasattr(_module(p), kernel)]


def path_for(kernel: str) -> str:
    """The path that runs ``kernel`` now."""
    global _announced
    order = _order()
    for path in order:
        module = _module(path)
        if module is not None and hasattr(module, kernel):
            if not _announced:
                _announced = True
                skipped = [f"{p} unavailable ({_reasons[p]})" for p in order[: order.index(path)] if p in _reasons]
                forced = f" (forced by {ENV})" if os.environ.get(ENV, "auto").strip().lower() not in ("", "auto") else ""
                log.info("kernels: %s path%s%s", path, forced, ("; " + "; ".join(skipped)) if skipped else "")
            return path
    raise RuntimeError(f"no path implements kernel '{kernel}'")  # numpy implements all: a bug if reached


def implementation(kernel: str, path: str | None = None) -> Callable[..., Any]:
    """The function for ``kernel`` on ``path`` (default: the chosen path)."""
    if path is None:  # the hot path: one lookup per kernel and setting of EDGELOOP_KERNELS
        key = (kernel, os.environ.get(ENV, ""))
        fn = _chosen.get(key)
        if fn is None:
            fn = _chosen[key] = implementation(kernel, path_for(kernel))
        return fn
    module = _module(path or path_for(kernel))
    if module is None or not hasattr(module, kernel):
        raise ValueError(f"path: '{path}' does not provide '{kernel}' here ({_reasons.get(path or '', 'not implemented')})")
    return getattr(module, kernel)


# -- the kernels -------------------------------------------------------------------------

def preprocess(src: np.ndarray, fmt: str, out: np.ndarray, *, path: str | None = None, **options: Any) -> Plan:
    """Crop, colour-convert, resize, normalize and quantize ``src`` straight into ``out``.

    ``out`` is typically an interpreter's input view: (1, H, W, C) or (H, W[, C]) of
    uint8, int8 or float32. Options: ``roi=(x, y, w, h)``, ``resize`` (bilinear, area,
    nearest), ``letterbox``, ``pad_value``, ``mean``, ``std``, ``scale``, ``zero_point``,
    ``color`` (RGB, BGR, GRAY). Bad arguments raise ValueError naming the argument.
    Returns the plan (geometry of the letterbox, for mapping boxes back).
    """
    plan = make_plan(src, fmt, out, **options)
    implementation("preprocess", path)(src, plan, out)
    return plan


def preprocessor(src: np.ndarray, fmt: str, out: np.ndarray, *, path: str | None = None,
                 **options: Any) -> Callable[[np.ndarray, np.ndarray], None]:
    """``preprocess`` bound to one geometry: the arguments are validated and the plan made once;
    the returned ``fn(src, out)`` takes frames of ``src``'s shape and format into arrays of
    ``out``'s shape and dtype (a camera's frames into a model's input)."""
    plan = make_plan(src, fmt, out, **options)
    if _is_copy(plan):  # a camera already at the model's size and format: the kernel would copy
        return lambda frame, into: np.copyto(into.reshape(frame.shape), frame)
    module = _module(path or path_for("preprocess"))
    bind = getattr(module, "bind_preprocess", None)
    if bind is not None:
        return bind(plan)
    fn = implementation("preprocess", path)
    return lambda frame, into: fn(frame, plan, into)


def set_threads(n: int) -> None:
    """How many threads the C path splits a large frame's preprocess over (unless
    ``EDGELOOP_KERNEL_THREADS`` says): the agent gives it its inference threads, leaving a core
    to the sync worker, as the model does."""
    module = _module("c")
    if module is not None:
        module.set_threads(n)


def _is_copy(plan: Plan) -> bool:
    """The plan maps each source byte to the same output byte (same size, no crop or letterbox,
    the same channels and order, uint8 with no normalization): bilinear taps are (1, 0) then."""
    return (plan.roi == (0, 0, plan.src_w, plan.src_h) and plan.inner == (0, 0, plan.out_w, plan.out_h)
            and (plan.src_h, plan.src_w) == (plan.out_h, plan.out_w) and plan.out_dtype == np.uint8
            and not plan.swap_rb and bool(np.all(plan.alpha == 1.0)) and bool(np.all(plan.beta == 0.0))
            and ((plan.fmt == "GRAY" and plan.out_c == 1) or (plan.fmt == "RGB" and plan.out_c == 3)))


def dequantize(q: np.ndarray, scale: float, zero_point: int, *, path: str | None = None) -> np.ndarray:
    return implementation("dequantize", path)(q, scale, zero_point)


def softmax(x: np.ndarray, *, path: str | None = None) -> np.ndarray:
    """float32 softmax along the last axis."""
    return implementation("softmax", path)(x)


def topk(scores: np.ndarray, k: int, *, path: str | None = None) -> np.ndarray:
    """Indices of the ``k`` best scores, best first; ties go to the lower index."""
    if k < 1:
        raise ValueError(f"k: {k} must be at least 1")
    return implementation("topk", path)(np.asarray(scores).reshape(-1), k)


def nms(boxes: np.ndarray, scores: np.ndarray, *, classes: np.ndarray | None = None, iou_threshold: float = 0.5,
        score_threshold: float = 0.0, max_detections: int = 100, path: str | None = None) -> np.ndarray:
    """Indices kept by greedy NMS over (ymin, xmin, ymax, xmax) boxes; class-aware with ``classes``."""
    boxes = np.asarray(boxes)
    scores = np.asarray(scores).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != scores.size:
        raise ValueError(f"boxes: shape {boxes.shape} must be (N, 4) with N = len(scores) = {scores.size}")
    if classes is not None and np.asarray(classes).size != scores.size:
        raise ValueError(f"classes: {np.asarray(classes).size} entries for {scores.size} boxes")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold: {iou_threshold} is outside [0, 1]")
    if max_detections < 1:
        raise ValueError(f"max_detections: {max_detections} must be at least 1")
    return implementation("nms", path)(boxes, scores, classes, float(iou_threshold), float(score_threshold),
                                       int(max_detections))


def keypoints(heatmaps: np.ndarray, *, path: str | None = None) -> np.ndarray:
    """(K, 3) rows of (y, x, score), normalized coordinates, from (H, W, K) heatmaps."""
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 3 or 0 in heatmaps.shape:
        raise ValueError(f"heatmaps: shape {heatmaps.shape} must be (H, W, K), none of them 0")
    return implementation("keypoints", path)(heatmaps)


def l2_normalize(v: np.ndarray, *, path: str | None = None) -> np.ndarray:
    return implementation("l2_normalize", path)(v)


def quantize_int8(v: np.ndarray, *, path: str | None = None) -> np.ndarray:
    """A unit vector as int8 with scale 1/127, for the retrieval index."""
    return implementation("quantize_int8", path)(v)


def binarize(v: np.ndarray, *, path: str | None = None) -> np.ndarray:
    """Sign bits (1 for > 0), packed MSB first: the binary form for the retrieval index."""
    return implementation("binarize", path)(v)


# CRCs for the firmware bridge's framing come from the standard library's C code.

def crc16_ccitt(data: bytes, init: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): 0x29B1 for b"123456789"."""
    return binascii.crc_hqx(data, init)


def crc32(data: bytes, init: int = 0) -> int:
    """CRC-32 (ISO-HDLC, as zlib): 0xCBF43926 for b"123456789"."""
    return zlib.crc32(data, init) & 0xFFFFFFFF
