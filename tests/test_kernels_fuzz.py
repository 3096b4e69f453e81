"""Property tests: random frames, formats, regions and shapes, every path against the reference.

The same file runs under AddressSanitizer (tests/test_asan.py), where an out-of-bounds
read or write in the C kernels stops the run.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeloop.runtime import kernels
from edgeloop.runtime.kernels import reference
from edgeloop.runtime.kernels.plan import make_plan

EXAMPLES = int(os.environ.get("EDGELOOP_FUZZ_EXAMPLES", "150"))
PATHS = [p for p in kernels.available_paths() if p in os.environ.get("EDGELOOP_FUZZ_PATHS", "c,numba,numpy")]


@st.composite
def cases(draw):
    fmt = draw(st.sampled_from(["RGB", "BGR", "RGBA", "GRAY", "YUYV", "NV12"]))
    even = fmt in ("YUYV", "NV12")
    h = draw(st.integers(1, 40)) * (2 if fmt == "NV12" else 1)
    w = draw(st.integers(1, 40)) * (2 if even else 1)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = {"RGB": (h, w, 3), "BGR": (h, w, 3), "RGBA": (h, w, 4), "GRAY": (h, w),
             "YUYV": (h, 2 * w), "NV12": (h * 3 // 2, w)}[fmt]
    src = rng.integers(0, 256, shape, dtype=np.uint8)
    if draw(st.booleans()) and fmt not in ("NV12",):
        src = src[::-1]  # negative row stride
    x0 = draw(st.integers(0, w - 1))
    y0 = draw(st.integers(0, h - 1))
    roi = (x0, y0, draw(st.integers(1, w - x0)), draw(st.integers(1, h - y0)))
    channels = draw(st.sampled_from([1, 3]))
    dtype = draw(st.sampled_from([np.uint8, np.int8, np.float32]))
    out_shape = (draw(st.integers(1, 48)), draw(st.integers(1, 48)), channels)
    options = {
        "roi": roi if draw(st.booleans()) else None,
        "resize": draw(st.sampled_from(["bilinear", "area", "nearest"])),
        "letterbox": draw(st.booleans()),
        "pad_value": float(draw(st.integers(0, 255))),
        "mean": draw(st.sampled_from([0.0, 127.5, 128.0])),
        "std": draw(st.sampled_from([1.0, 127.5, 255.0])),
        "scale": draw(st.sampled_from([1.0, 1 / 128, 0.0235, 1e-3])),
        "zero_point": draw(st.sampled_from([0, 3])) if dtype != np.uint8 else draw(st.sampled_from([0, 128, 255])),
        "color": "GRAY" if channels == 1 else draw(st.sampled_from(["RGB", "BGR"])),
    }
    return src, fmt, out_shape, np.dtype(dtype), options


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_path_matches_the_reference(case):
    src, fmt, out_shape, dtype, options = case
    # The output sits in a canary buffer: no path may touch the bytes around it.
    size = int(np.prod(out_shape)) * dtype.itemsize
    want = np.zeros(out_shape, dtype)
    reference.preprocess(src, make_plan(src, fmt, want, **options), want)
    for path in PATHS:
        canary = np.full(size + 128, 0x5A, np.uint8)
        out = canary[64:64 + size].view(dtype).reshape(out_shape)
        kernels.preprocess(src, fmt, out, path=path, **options)
        assert (canary[:64] == 0x5A).all() and (canary[64 + size:] == 0x5A).all(), path
        assert np.array_equal(out, want, equal_nan=True), path


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**32 - 1), st.sampled_from([None, 3]),
       st.floats(0.0, 1.0), st.integers(1, 50))
def test_nms_and_topk_match_the_reference(n, seed, n_classes, iou, max_det):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 1, (n, 2))
    size = rng.uniform(0, 0.4, (n, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
    scores = np.round(rng.uniform(0, 1, n), 1).astype(np.float32)
    classes = None if n_classes is None else rng.integers(0, n_classes, n).astype(np.int32)
    want = reference.nms(boxes, scores, classes, iou, 0.05, max_det)
    for path in kernels.paths_for("nms"):
        if path in PATHS:
            got = kernels.nms(boxes, scores, classes=classes, iou_threshold=iou, score_threshold=0.05,
                              max_detections=max_det, path=path)
            assert np.array_equal(got, want), path
    k = int(rng.integers(1, n + 1))
    for path in kernels.paths_for("topk"):
        if path in PATHS:
            assert np.array_equal(kernels.topk(scores, k, path=path), reference.topk(scores, k)), path
