"""The C path: thin wrappers that hand numpy buffers to the cffi extension."""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any, Callable

import numpy as np

from .native_rows import candidate_order, standard_rows
from . import reference
from .plan import DTYPE_CODES, FORMAT_CODES, Plan

NAME = "c"
# A path to another build of the same sources (the AddressSanitizer build of the tests).
MODULE_ENV = "EDGELOOP_KERNELS_NATIVE"
# Threads for preprocessing one frame (rows split between them; outputs under 64 rows stay
# on one). Default: the cores, at most 4.
THREADS = int(os.environ.get("EDGELOOP_KERNEL_THREADS", min(4, os.cpu_count() or 1)))


def set_threads(n: int) -> None:
    """Threads a large frame's preprocess is split over (``EDGELOOP_KERNEL_THREADS`` wins)."""
    global THREADS
    if "EDGELOOP_KERNEL_THREADS" not in os.environ:
        THREADS = max(1, int(n))
TOPK_INSERTION_MAX = 64


def _load() -> Any:
    path = os.environ.get(MODULE_ENV)
    if path:
        name = os.path.basename(path).split(".")[0]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{MODULE_ENV}={path} is not an extension module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module("edgeloop.runtime.kernels._native")


_mod = _load()
ffi, lib = _mod.ffi, _mod.lib


def _ptr(kind: str, array: np.ndarray) -> Any:
    # The address of element [0, 0, ...] works for any strides; callers keep `array` alive.
    return ffi.cast(kind, array.__array_interface__["data"][0])


def _c(array: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=dtype)


def _end_offset(src: np.ndarray) -> int:
    """Bytes from element [0, 0] to one past the frame's last byte in memory (rows packed)."""
    last_row = (src.shape[0] - 1) * src.strides[0] if src.strides[0] > 0 else 0
    return last_row + src[0].nbytes


def preprocess(src: np.ndarray, plan: Plan, out: np.ndarray) -> None:
    bind_preprocess(plan)(src, out)


def bind_preprocess(plan: Plan) -> Callable[[np.ndarray, np.ndarray], None]:
    """``preprocess`` for one plan with its tables cast once: per call only the frame's and the
    output's addresses change (a camera's frames share a plan: ``kernels.preprocessor``). The
    frame must have the plan's shape and format."""
    y, x = plan.ytaps, plan.xtaps
    x_lo, x_hi = int(x.index.min()), int(x.index.max()) + 1
    tables = (plan.alpha, plan.beta, plan.pad, y.start, y.index, y.weight, x.start, x.index, x.weight)
    fixed = (_ptr("int32_t *", y.start), _ptr("int32_t *", y.index), _ptr("float *", y.weight),
             _ptr("int32_t *", x.start), _ptr("int32_t *", x.index), _ptr("float *", x.weight),
             _ptr("float *", plan.alpha), _ptr("float *", plan.beta), _ptr("void *", plan.pad), int(plan.swap_rb),
             x_lo, x_hi)
    code, out_h, out_w, out_c = FORMAT_CODES[plan.fmt], plan.out_h, plan.out_w, plan.out_c
    dtype, inner, nv12, src_h = DTYPE_CODES[plan.out_dtype], plan.inner, plan.fmt == "NV12", plan.src_h
    call = lib.el_preprocess

    def run(src: np.ndarray, out: np.ndarray) -> None:
        src = standard_rows(src)
        uv = src[src_h:] if nv12 else src
        base = src.__array_interface__["data"][0]
        status = call(ffi.cast("uint8_t *", base), src.strides[0], ffi.cast("uint8_t *", uv.__array_interface__["data"][0]),
                      uv.strides[0], code, out_h, out_w, out_c, dtype,
                      ffi.cast("void *", out.__array_interface__["data"][0]), *inner, *fixed,
                      ffi.cast("uint8_t *", base + _end_offset(src)), THREADS)
        if status != 0:
            raise MemoryError("preprocess: out of memory for the column buffer")

    run.tables = tables  # type: ignore[attr-defined]  # keeps the plan's arrays alive with the pointers
    return run


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    scores = _c(scores, np.float32).reshape(-1)
    if k > TOPK_INSERTION_MAX:  # insertion is O(n k): numpy's sort wins beyond this
        return reference.topk(scores, k)
    out = np.empty(min(k, scores.size), np.int64)
    lib.el_topk(_ptr("float *", scores), scores.size, out.size, _ptr("int64_t *", out))
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, iou_threshold: float,
        score_threshold: float, max_detections: int) -> np.ndarray:
    boxes, scores = _c(boxes, np.float32), _c(scores, np.float32)
    cls = None if classes is None else _c(classes, np.int32)
    order = candidate_order(scores, score_threshold)
    keep = np.empty(max(min(max_detections, order.size), 1), np.int64)
    n = lib.el_nms(_ptr("float *", boxes), ffi.NULL if cls is None else _ptr("int32_t *", cls),
                   _ptr("int64_t *", order), order.size, iou_threshold, max_detections, _ptr("int64_t *", keep))
    return keep[:n].copy()


def keypoints(heatmaps: np.ndarray) -> np.ndarray:
    hm = _c(heatmaps, np.float32)
    h, w, k = hm.shape
    out = np.empty((k, 3), np.float32)
    lib.el_keypoints(_ptr("float *", hm), h, w, k, _ptr("float *", out))
    return out


def quantize_int8(v: np.ndarray) -> np.ndarray:
    v = _c(v, np.float32)
    out = np.empty(v.shape, np.int8)
    lib.el_quantize_int8(_ptr("float *", v), v.size, _ptr("int8_t *", out))
    return out


