"""Validation and planning for the preprocess kernel, shared by every path.

A plan holds everything that depends only on the frame geometry and the model's
input, not on the pixels: the region of interest, the letterbox rectangle, the
resize taps and the per-channel normalize+quantize coefficients. Plans are
cached, so a camera stream pays for planning once.

The arithmetic contract (what every path computes, see ``reference.py``):

- each source pixel becomes float32 RGB (or grey luma for one-channel outputs);
- resize is separable with taps: ``out = Σx wx · (Σy wy · pixel)``, sums from 0 in
  tap order, in float32; bilinear uses TensorFlow's half-pixel centres without
  antialiasing, ``area`` is a box filter by coverage, ``nearest`` takes half-pixel
  nearest;
- ``v = out · alpha[c] + beta[c]`` with ``alpha = 1 / (std · scale)`` and
  ``beta = zero_point − mean / (std · scale)``; integer outputs round half away
  from zero and saturate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FORMATS = ("RGB", "BGR", "RGBA", "GRAY", "YUYV", "NV12")
RESIZES = ("bilinear", "area", "nearest")
FORMAT_CODES = {name: n for n, name in enumerate(FORMATS)}
DTYPE_CODES = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1, np.dtype(np.float32): 2}


@dataclass(frozen=True)
class Taps:
    """CSR taps: output ``o`` reads ``index[start[o]:start[o+1]]`` with those weights."""

    start: np.ndarray  # int32, n_out + 1
    index: np.ndarray  # int32, absolute source coordinates
    weight: np.ndarray  # float32

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_out, max_taps) index and weight arrays, padded with weight 0 at index 0."""
        counts = np.diff(self.start)
        width = int(counts.max()) if counts.size else 0
        idx = np.zeros((counts.size, width), np.int64)
        w = np.zeros((counts.size, width), np.float32)
        for o in range(counts.size):
            s, e = self.start[o], self.start[o + 1]
            idx[o, : e - s] = self.index[s:e]
            w[o, : e - s] = self.weight[s:e]
        return idx, w


@dataclass(frozen=True)
class Plan:
    fmt: str
    src_h: int
    src_w: int
    roi: tuple[int, int, int, int]  # x, y, w, h in source pixels
    out_h: int
    out_w: int
    out_c: int
    out_dtype: np.dtype
    inner: tuple[int, int, int, int]  # x, y, w, h of the resized picture inside the output
    ytaps: Taps
    xtaps: Taps
    alpha: np.ndarray  # float32 [out_c]
    beta: np.ndarray  # float32 [out_c]
    pad: np.ndarray  # out_dtype [out_c]: the letterbox border, already normalized/quantized
    swap_rb: bool  # output BGR


def frame_size(src: np.ndarray, fmt: str) -> tuple[int, int]:
    """(height, width) in pixels of a frame in ``fmt``; ValueError naming what is wrong."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt: '{fmt}' is not a known pixel format; use one of {', '.join(FORMATS)}")
    if not isinstance(src, np.ndarray):
        raise ValueError(f"src: expected a numpy array, got {type(src).__name__}")
    if src.dtype != np.uint8:
        raise ValueError(f"src: dtype {src.dtype}, expected uint8")
    if src.size == 0:
        raise ValueError(f"src: the image is empty (shape {src.shape})")
    shape = src.shape
    if fmt in ("RGB", "BGR", "RGBA"):
        want = 4 if fmt == "RGBA" else 3
        if src.ndim != 3 or shape[2] != want:
            raise ValueError(f"src: shape {shape} has {shape[2] if src.ndim == 3 else 1} channel(s); "
                             f"{fmt} needs (H, W, {want})")
        return shape[0], shape[1]
    if fmt == "GRAY":
        if not (src.ndim == 2 or (src.ndim == 3 and shape[2] == 1)):
            raise ValueError(f"src: shape {shape}; GRAY needs (H, W) or (H, W, 1)")
        return shape[0], shape[1]
    if fmt == "YUYV":
        if not (src.ndim == 2 or (src.ndim == 3 and shape[2] == 2)):
            raise ValueError(f"src: shape {shape}; YUYV needs (H, 2*W) bytes or (H, W, 2)")
        width = shape[1] // 2 if src.ndim == 2 else shape[1]
        if src.ndim == 2 and shape[1] % 2 or width % 2:
            raise ValueError(f"src: YUYV width {width} must be even (two pixels share U and V)")
        return shape[0], width
    # NV12: a (3H/2, W) byte plane: Y rows, then interleaved UV rows at half resolution.
    if src.ndim != 2 or shape[0] % 3 or (shape[0] * 2 // 3) % 2 or shape[1] % 2:
        raise ValueError(f"src: shape {shape}; NV12 needs (3*H/2, W) with H and W even")
    return shape[0] * 2 // 3, shape[1]


def _bilinear(n_in: int, n_out: int, offset: int) -> Taps:
    scale = n_in / n_out
    start, index, weight = [0], [], []
    for o in range(n_out):
        pos = (o + 0.5) * scale - 0.5
        base = math.floor(pos)
        lerp = pos - base
        lower, upper = max(base, 0), min(math.ceil(pos), n_in - 1)
        index += [lower + offset, upper + offset]
        weight += [1.0 - lerp, lerp]
        start.append(len(index))
    return Taps(np.array(start, np.int32), np.array(index, np.int32), np.array(weight, np.float32))


def _nearest(n_in: int, n_out: int, offset: int) -> Taps:
    scale = n_in / n_out
    index = [min(int(math.floor((o + 0.5) * scale)), n_in - 1) + offset for o in range(n_out)]
    return Taps(np.arange(n_out + 1, dtype=np.int32), np.array(index, np.int32), np.ones(n_out, np.float32))


def _area(n_in: int, n_out: int, offset: int) -> Taps:
    scale = n_in / n_out
    start, index, weight = [0], [], []
    for o in range(n_out):
        lo, hi = o * scale, (o + 1) * scale
        first, last = int(math.floor(lo)), min(int(math.ceil(hi)), n_in)
        span = hi - lo
        for i in range(first, last):
            cover = min(hi, i + 1) - max(lo, i)
            if cover > 1e-12:
                index.append(i + offset)
                weight.append(cover / span)
        start.append(len(index))
    return Taps(np.array(start, np.int32), np.array(index, np.int32), np.array(weight, np.float32))


_TAPS = {"bilinear": _bilinear, "nearest": _nearest, "area": _area}


def _coefficients(out_c: int, mean: tuple[float, ...], std: tuple[float, ...], scale: float,
                  zero_point: int) -> tuple[np.ndarray, np.ndarray]:
    means = np.resize(np.asarray(mean, np.float64), out_c)
    stds = np.resize(np.asarray(std, np.float64), out_c)
    if np.any(stds == 0):
        raise ValueError("std: must not be 0")
    if not scale > 0:
        raise ValueError(f"scale: {scale} must be positive")
    alpha = 1.0 / (stds * scale)
    beta = zero_point - means * alpha
    return alpha.astype(np.float32), beta.astype(np.float32)


def _saturate(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return values.astype(dtype)
    t = np.trunc(values)
    q = t + np.where(np.abs(values - t) >= 0.5, np.sign(values), 0)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


@lru_cache(maxsize=64)
def _plan(fmt: str, src_h: int, src_w: int, roi: tuple[int, int, int, int], out_h: int, out_w: int,
          out_c: int, out_dtype: np.dtype, resize: str, letterbox: bool, pad_value: float,
          mean: tuple[float, ...], std: tuple[float, ...], scale: float, zero_point: int, color: str) -> Plan:
    x, y, w, h = roi
    if letterbox:
        ratio = min(out_w / w, out_h / h)
        iw, ih = max(1, min(out_w, round(w * ratio))), max(1, min(out_h, round(h * ratio)))
        inner = ((out_w - iw) // 2, (out_h - ih) // 2, iw, ih)
    else:
        inner = (0, 0, out_w, out_h)
    alpha, beta = _coefficients(out_c, mean, std, scale, zero_point)
    pad = _saturate(np.float32(pad_value) * alpha + beta, out_dtype)
    return Plan(fmt, src_h, src_w, roi, out_h, out_w, out_c, out_dtype, inner,
                _TAPS[resize](h, inner[3], y), _TAPS[resize](w, inner[2], x), alpha, beta, pad,
                color == "BGR" and out_c == 3)


def make_plan(src: np.ndarray, fmt: str, out: np.ndarray, *, roi: tuple[int, int, int, int] | None = None,
              resize: str = "bilinear", letterbox: bool = False, pad_value: float = 0.0,
              mean: float | tuple[float, ...] = 0.0, std: float | tuple[float, ...] = 1.0,
              scale: float = 1.0, zero_point: int = 0, color: str = "RGB") -> Plan:
    """Validate the arguments (ValueError naming the argument) and return the cached plan."""
    src_h, src_w = frame_size(src, fmt)
    if not isinstance(out, np.ndarray) or out.dtype not in DTYPE_CODES:
        raise ValueError(f"out: dtype {getattr(out, 'dtype', type(out).__name__)}, expected uint8, int8 or float32")
    shape = out.shape[1:] if out.ndim in (3, 4) and out.shape[0] == 1 else out.shape
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or shape[2] not in (1, 3) or shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"out: shape {out.shape}; expected (H, W, 3), (H, W, 1) or (H, W), optionally with a batch of 1")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out: must be a writeable C-contiguous array (an interpreter input view is)")
    if resize not in RESIZES:
        raise ValueError(f"resize: '{resize}' is not one of {', '.join(RESIZES)}")
    if color not in ("RGB", "BGR", "GRAY"):
        raise ValueError(f"color: '{color}' is not one of RGB, BGR, GRAY")
    roi = (0, 0, src_w, src_h) if roi is None else tuple(int(v) for v in roi)
    if len(roi) != 4:
        raise ValueError(f"roi: {roi} must be (x, y, width, height)")
    rx, ry, rw, rh = roi
    if rw <= 0 or rh <= 0 or rx < 0 or ry < 0 or rx + rw > src_w or ry + rh > src_h:
        raise ValueError(f"roi: {roi} is empty or outside the {src_w}x{src_h} image")
    if out.dtype.kind in "iu":
        info = np.iinfo(out.dtype)
        if not info.min <= zero_point <= info.max:
            raise ValueError(f"zero_point: {zero_point} is outside {out.dtype}")
    means = tuple(float(m) for m in np.atleast_1d(mean))
    stds = tuple(float(s) for s in np.atleast_1d(std))
    return _plan(fmt, src_h, src_w, roi, shape[0], shape[1], shape[2], out.dtype, resize, bool(letterbox),
                 float(pad_value), means, stds, float(scale), int(zero_point), color)
