"""The numba path, for the kernels where compiled loops beat numpy: preprocess and NMS.

Imported only when chosen (numba costs start-up time on small devices); compiled
functions are cached on disk (``cache=True``). Same float32 operations, in the same
order, as the reference; no fastmath, so no reassociation or contraction.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from .native_rows import candidate_order, standard_rows as _standard_rows
from .plan import DTYPE_CODES, FORMAT_CODES, Plan

NAME = "numba"
F = np.float32


@njit(cache=True, inline="always")  # numba IR inlining: a call per pixel costs 10x
def _clamp255(v):
    return F(0.0) if v < F(0.0) else (F(255.0) if v > F(255.0) else v)


@njit(cache=True, inline="always")  # numba IR inlining: a call per pixel costs 10x
def _px(src, uvp, fmt, out_c, y, x):
    """Source pixel (y, x) as float32 (r, g, b), or (luma, 0, 0) for one output channel.
    ``src`` is 2-d: rows of bytes, whatever the format."""
    if fmt == 3:  # GRAY
        g = F(src[y, x])
        return g, g, g
    if fmt == 0:  # RGB
        r, gg, b = F(src[y, 3 * x]), F(src[y, 3 * x + 1]), F(src[y, 3 * x + 2])
    elif fmt == 1:  # BGR
        r, gg, b = F(src[y, 3 * x + 2]), F(src[y, 3 * x + 1]), F(src[y, 3 * x])
    elif fmt == 2:  # RGBA
        r, gg, b = F(src[y, 4 * x]), F(src[y, 4 * x + 1]), F(src[y, 4 * x + 2])
    else:
        if fmt == 4:  # YUYV
            yy = F(src[y, 2 * x])
            m = 4 * (x >> 1)
            u, v = F(src[y, m + 1]), F(src[y, m + 3])
        else:  # NV12
            yy = F(src[y, x])
            c0 = x & ~1
            u, v = F(uvp[y >> 1, c0]), F(uvp[y >> 1, c0 + 1])
        c = (yy - F(16.0)) * F(1.164)
        d = u - F(128.0)
        e = v - F(128.0)
        r = _clamp255(c + F(1.596) * e)
        gg = _clamp255(c - F(0.392) * d - F(0.813) * e)
        b = _clamp255(c + F(2.017) * d)
    if out_c == 1:
        return F(0.299) * r + F(0.587) * gg + F(0.114) * b, F(0.0), F(0.0)
    return r, gg, b


@njit(cache=True, inline="always")  # numba IR inlining: a call per pixel costs 10x
def _quant(dtype, v):
    # As the C path: clamp (so the int conversion is defined), truncate, step away from zero.
    if dtype == 2:
        return v
    lo, hi = (F(0.0), F(255.0)) if dtype == 0 else (F(-128.0), F(127.0))
    v = min(max(v, lo), hi)
    t = F(np.int32(v))
    frac = v - t
    if frac >= F(0.5):
        return t + F(1.0)
    if frac <= F(-0.5):
        return t - F(1.0)
    return t


@njit(cache=True, inline="always")  # numba IR inlining: a call per pixel costs 10x
def _store3(dst, at, dtype, out_c, o0, o1, o2, swap, alpha, beta):
    if out_c == 1:
        dst[at] = _quant(dtype, o0 * alpha[0] + beta[0])
        return
    if swap:
        o0, o2 = o2, o0
    dst[at] = _quant(dtype, o0 * alpha[0] + beta[0])
    dst[at + 1] = _quant(dtype, o1 * alpha[1] + beta[1])
    dst[at + 2] = _quant(dtype, o2 * alpha[2] + beta[2])


@lru_cache(maxsize=None)
def _kernel(fmt: int):
    """The preprocess loop compiled for one pixel format: ``fmt`` is a closure constant, so
    the format switch in ``_px`` folds away (a runtime switch there costs 10x)."""

    @njit(cache=True)
    def kernel(src, uvp, out_c, swap, dst, out_h, out_w, dtype, inner, ys, yi, yw, xs, xi, xw,
               alpha, beta, pad, x_lo, x_hi):
        ix, iy, iw, ih = inner[0], inner[1], inner[2], inner[3]
        for py in range(out_h):
            inside_row = iy <= py < iy + ih
            for px in range(out_w):
                if inside_row and ix <= px < ix + iw:
                    continue
                for c in range(out_c):
                    dst[(py * out_w + px) * out_c + c] = pad[c]
        # Many horizontal taps (area): column sums per output row first, like the C path.
        buffered = xs[iw] > x_hi - x_lo
        acc = np.zeros((x_hi - x_lo, 3), F)
        for oy in range(ih):
            at = ((iy + oy) * out_w + ix) * out_c
            if buffered:
                acc[:, :] = F(0.0)
                for k in range(ys[oy], ys[oy + 1]):
                    w = yw[k]
                    for x in range(x_lo, x_hi):
                        p0, p1, p2 = _px(src, uvp, fmt, out_c, yi[k], x)
                        acc[x - x_lo, 0] += w * p0
                        acc[x - x_lo, 1] += w * p1
                        acc[x - x_lo, 2] += w * p2
            for ox in range(iw):
                o0 = o1 = o2 = F(0.0)
                for j in range(xs[ox], xs[ox + 1]):
                    if buffered:
                        t0, t1, t2 = acc[xi[j] - x_lo, 0], acc[xi[j] - x_lo, 1], acc[xi[j] - x_lo, 2]
                    else:
                        t0 = t1 = t2 = F(0.0)
                        for k in range(ys[oy], ys[oy + 1]):
                            p0, p1, p2 = _px(src, uvp, fmt, out_c, yi[k], xi[j])
                            t0 += yw[k] * p0
                            t1 += yw[k] * p1
                            t2 += yw[k] * p2
                    w = xw[j]
                    o0 += w * t0
                    o1 += w * t1
                    o2 += w * t2
                _store3(dst, at + ox * out_c, dtype, out_c, o0, o1, o2, swap, alpha, beta)

    return kernel


def preprocess(src: np.ndarray, plan: Plan, out: np.ndarray) -> None:
    fmt = FORMAT_CODES[plan.fmt]
    # One compiled signature for every format: rows of packed bytes (a copy only when
    # pixels within a row are not packed; any row stride, negative included, is free).
    src = _standard_rows(src).reshape(src.shape[0], -1)
    uv = src[plan.src_h:] if plan.fmt == "NV12" else src
    y, x = plan.ytaps, plan.xtaps
    _kernel(fmt)(src, uv, plan.out_c, plan.swap_rb, out.reshape(-1), plan.out_h, plan.out_w,
                DTYPE_CODES[plan.out_dtype], np.array(plan.inner, np.int64), y.start, y.index, y.weight,
                x.start, x.index, x.weight, plan.alpha, plan.beta, plan.pad, int(x.index.min()),
                int(x.index.max()) + 1)


@njit(cache=True)
def _nms(boxes, scores, classes, use_classes, order, iou_threshold, score_threshold, max_detections, keep):
    kept = 0
    for i in order:
        if scores[i] <= score_threshold or kept == max_detections:
            break
        suppressed = False
        for k in range(kept):
            j = keep[k]
            if use_classes and classes[i] != classes[j]:
                continue
            ih = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            iw = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            ih = ih if ih > F(0.0) else F(0.0)
            iw = iw if iw > F(0.0) else F(0.0)
            inter = ih * iw
            union = ((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
                     + (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1]) - inter)
            overlap = inter / union if union > F(0.0) else F(0.0)
            if overlap > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            keep[kept] = i
            kept += 1
    return kept


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, iou_threshold: float,
        score_threshold: float, max_detections: int) -> np.ndarray:
    boxes = np.ascontiguousarray(boxes, np.float32)
    scores = np.ascontiguousarray(scores, np.float32)
    order = candidate_order(scores, score_threshold)
    cls = np.zeros(1, np.int32) if classes is None else np.ascontiguousarray(classes, np.int32)
    keep = np.empty(max(min(max_detections, scores.size), 1), np.int64)
    n = _nms(boxes, scores, cls, classes is not None, order, F(iou_threshold), F(score_threshold),
             max_detections, keep)
    return keep[:n].copy()
