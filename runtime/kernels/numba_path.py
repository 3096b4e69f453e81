"""The numba path, for the kernels where compiled loops beat numpy: preprocess and NMS.

Imported only when chosen (numba costs start-up time on small devices); compiled
functions are cached on disk (``cache=True``). Same float32 operations, in the same
order, as the reference; no fastmath, so no reassociation or contraction.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .native_rows import standard_rows as _standard_rows
from .plan import DTYPE_CODES, FORMAT_CODES, Plan

NAME = "numba"
F = np.float32


@njit(cache=True, inline="always")
def _clamp255(v):
    return F(0.0) if v < F(0.0) else (F(255.0) if v > F(255.0) else v)


@njit(cache=True)
def _pixel(src, uvp, fmt, out_c, swap, y, x, out):
    # src is 2-d: (rows, bytes per row), whatever the format.
    if fmt == 3:  # GRAY
        g = F(src[y, x])
        if out_c == 1:
            out[0] = g
            return
        r, gg, b = g, g, g
    elif fmt == 0:  # RGB
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
        out[0] = F(0.299) * r + F(0.587) * gg + F(0.114) * b
    elif swap:
        out[0], out[1], out[2] = b, gg, r
    else:
        out[0], out[1], out[2] = r, gg, b


@njit(cache=True)
def _store(dst, i, dtype, v):
    if dtype == 2:
        dst[i] = v
        return
    t = np.trunc(v)
    q = t + (np.sign(v) if abs(v - t) >= F(0.5) else F(0.0))
    if dtype == 0:
        dst[i] = min(max(q, F(0.0)), F(255.0))
    else:
        dst[i] = min(max(q, F(-128.0)), F(127.0))


@njit(cache=True)
def _preprocess(src, uvp, fmt, out_c, swap, dst, out_h, out_w, dtype, inner, ys, yi, yw, xs, xi, xw,
                alpha, beta, pad):
    ix, iy, iw, ih = inner[0], inner[1], inner[2], inner[3]
    for p in range(out_h * out_w):
        py, px = p // out_w, p % out_w
        if py < iy or py >= iy + ih or px < ix or px >= ix + iw:
            for c in range(out_c):
                dst[p * out_c + c] = pad[c]
    pix = np.zeros(3, F)
    t = np.zeros(3, F)
    o = np.zeros(3, F)
    for oy in range(ih):
        row_out = ((iy + oy) * out_w + ix) * out_c
        for ox in range(iw):
            o[:] = F(0.0)
            for j in range(xs[ox], xs[ox + 1]):
                t[:] = F(0.0)
                for k in range(ys[oy], ys[oy + 1]):
                    _pixel(src, uvp, fmt, out_c, swap, yi[k], xi[j], pix)
                    for c in range(out_c):
                        t[c] += yw[k] * pix[c]
                for c in range(out_c):
                    o[c] += xw[j] * t[c]
            for c in range(out_c):
                _store(dst, row_out + ox * out_c + c, dtype, o[c] * alpha[c] + beta[c])


def preprocess(src: np.ndarray, plan: Plan, out: np.ndarray) -> None:
    fmt = FORMAT_CODES[plan.fmt]
    # One compiled signature for every format: rows of packed bytes (a copy only when
    # pixels within a row are not packed; any row stride, negative included, is free).
    src = _standard_rows(src).reshape(src.shape[0], -1)
    uv = src[plan.src_h:] if plan.fmt == "NV12" else src
    y, x = plan.ytaps, plan.xtaps
    _preprocess(src, uv, fmt, plan.out_c, plan.swap_rb, out.reshape(-1), plan.out_h, plan.out_w,
                DTYPE_CODES[plan.out_dtype], np.array(plan.inner, np.int64), y.start, y.index, y.weight,
                x.start, x.index, x.weight, plan.alpha, plan.beta, plan.pad)


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
    order = np.lexsort((np.arange(scores.size), -scores.astype(np.float64)))
    cls = np.zeros(1, np.int32) if classes is None else np.ascontiguousarray(classes, np.int32)
    keep = np.empty(max(min(max_detections, scores.size), 1), np.int64)
    n = _nms(boxes, scores, cls, classes is not None, order, F(iou_threshold), F(score_threshold),
             max_detections, keep)
    return keep[:n].copy()
