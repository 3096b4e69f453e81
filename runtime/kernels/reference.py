"""The numpy reference of every kernel: the specification the C and numba paths must meet.

Written for clarity and exactness, vectorized where that keeps the operation
order of the contract (see ``plan.py``); not for speed.
"""

from __future__ import annotations

import numpy as np

from .plan import Plan, _saturate

F = np.float32


def to_rgb(src: np.ndarray, fmt: str) -> np.ndarray:
    """The frame as float32 (H, W, 3) RGB. YUV is BT.601 limited range, clamped to [0, 255]."""
    if fmt in ("RGB", "RGBA"):
        return src[..., :3].astype(F)
    if fmt == "BGR":
        return src[..., ::-1].astype(F)
    if fmt == "GRAY":
        g = src.reshape(src.shape[0], src.shape[1]).astype(F)
        return np.stack([g, g, g], axis=-1)
    if fmt == "YUYV":
        b = src.reshape(src.shape[0], -1)
        y = b[:, 0::2].astype(F)
        u = np.repeat(b[:, 1::4], 2, axis=1).astype(F)
        v = np.repeat(b[:, 3::4], 2, axis=1).astype(F)
    else:  # NV12
        h = src.shape[0] * 2 // 3
        y = src[:h].astype(F)
        uv = src[h:]
        u = np.repeat(np.repeat(uv[:, 0::2], 2, axis=0), 2, axis=1).astype(F)
        v = np.repeat(np.repeat(uv[:, 1::2], 2, axis=0), 2, axis=1).astype(F)
    return yuv_to_rgb(y, u, v)


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    c = (y - F(16)) * F(1.164)
    d = u - F(128)
    e = v - F(128)
    r = c + F(1.596) * e
    g = c - F(0.392) * d - F(0.813) * e
    b = c + F(2.017) * d
    return np.clip(np.stack([r, g, b], axis=-1), F(0), F(255))


def luma(rgb: np.ndarray) -> np.ndarray:
    return F(0.299) * rgb[..., 0] + F(0.587) * rgb[..., 1] + F(0.114) * rgb[..., 2]


def preprocess(src: np.ndarray, plan: Plan, out: np.ndarray) -> None:
    """Crop, convert, resize, normalize and quantize ``src`` into ``out`` per ``plan``."""
    pixels = to_rgb(src, plan.fmt)
    if plan.out_c == 1:
        pixels = (pixels[..., 0] if plan.fmt == "GRAY" else luma(pixels))[..., None]
    elif plan.swap_rb:
        pixels = pixels[..., ::-1]
    yi, yw = plan.ytaps.padded()
    xi, xw = plan.xtaps.padded()
    # Vertical taps first, then horizontal, each summed from zero in tap order.
    cols = np.zeros((yi.shape[0], pixels.shape[1], plan.out_c), F)
    for k in range(yi.shape[1]):
        cols += yw[:, k, None, None] * pixels[yi[:, k]]
    resized = np.zeros((yi.shape[0], xi.shape[0], plan.out_c), F)
    for k in range(xi.shape[1]):
        resized += xw[None, :, k, None] * cols[:, xi[:, k]]
    values = _saturate(resized * plan.alpha + plan.beta, plan.out_dtype)
    target = out.reshape(plan.out_h, plan.out_w, plan.out_c)
    target[...] = plan.pad
    ix, iy, iw, ih = plan.inner
    target[iy:iy + ih, ix:ix + iw] = values


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(F) - F(zero_point)) * F(scale)


def softmax(x: np.ndarray) -> np.ndarray:
    """Along the last axis, in float32."""
    x = np.asarray(x, F)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of a 1-d array, best first; ties go to the lower index."""
    order = np.lexsort((np.arange(scores.size), -scores.astype(np.float64)))
    return order[:k].astype(np.int64)


def iou(a: np.ndarray, b: np.ndarray) -> np.float32:
    """Intersection over union of two (ymin, xmin, ymax, xmax) boxes, float32."""
    ih = max(F(0), min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(F(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = F(ih * iw)
    union = F(F((a[2] - a[0]) * (a[3] - a[1])) + F((b[2] - b[0]) * (b[3] - b[1])) - inter)
    return F(inter / union) if union > 0 else F(0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, iou_threshold: float,
        score_threshold: float, max_detections: int) -> np.ndarray:
    """Greedy non-maximum suppression; class-aware when ``classes`` is given.

    Candidates above ``score_threshold`` in score order (ties: lower index first); a
    candidate is dropped when its IoU with a kept box of its class exceeds the threshold.
    """
    boxes = np.asarray(boxes, F)
    order = topk(np.asarray(scores, F), len(scores))
    keep: list[int] = []
    for i in order:
        if scores[i] <= score_threshold:
            break
        if len(keep) == max_detections:
            break
        if all(not (classes is None or classes[i] == classes[j]) or iou(boxes[i], boxes[j]) <= F(iou_threshold)
               for j in keep):
            keep.append(int(i))
    return np.array(keep, np.int64)


def keypoints(heatmaps: np.ndarray) -> np.ndarray:
    """(K, 3) rows of (y, x, score) from (H, W, K) float32 heatmaps.

    Peak by argmax (first in row-major order on ties), moved a quarter pixel towards
    the higher neighbour on each axis; coordinates normalized to [0, 1] by pixel centres.
    """
    h, w, k = heatmaps.shape
    hm = np.asarray(heatmaps, F)
    out = np.zeros((k, 3), F)
    for c in range(k):
        flat = int(np.argmax(hm[..., c]))
        y, x = divmod(flat, w)
        fy, fx = F(y), F(x)
        if 0 < x < w - 1:
            fx += F(0.25) * F(np.sign(hm[y, x + 1, c] - hm[y, x - 1, c]))
        if 0 < y < h - 1:
            fy += F(0.25) * F(np.sign(hm[y + 1, x, c] - hm[y - 1, x, c]))
        out[c] = ((fy + F(0.5)) / F(h), (fx + F(0.5)) / F(w), hm[y, x, c])
    return out


def l2_normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, F).reshape(-1)
    norm = F(np.sqrt(np.sum(v.astype(np.float64) ** 2)))
    return v / norm if norm > 0 else v.copy()


def quantize_int8(v: np.ndarray) -> np.ndarray:
    """A unit vector to int8 with scale 1/127 (zero point 0)."""
    return _saturate(np.asarray(v, F) * F(127), np.dtype(np.int8))


def binarize(v: np.ndarray) -> np.ndarray:
    """Sign bits (1 for > 0), packed most significant bit first, as uint8."""
    return np.packbits(np.asarray(v).reshape(-1) > 0)
