"""``edgeloop bench kernels``: every kernel on every available path, side by side.

Preprocess runs on 640x480 and 1920x1080 RGB frames into a 224x224x3 uint8 tensor with
MobileNet's input quantization, next to Pillow's resize + numpy quantize (the outside
reference: ``pil_ms``, ``speedup_vs_pil`` = pil_ms / the fastest path). Postprocess
kernels run on what models produce: 1001 class scores, 2,000 candidate boxes,
17 keypoint heatmaps, a 1024-d embedding. Medians of interleaved blocks, warm (``*_ms``)
and cold (``*_cold_ms``, the first run of a block): see ``median_ms``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from edgeloop.runtime import kernels

from . import BLOCK

SIZES = ((640, 480), (1920, 1080))
OUT = (224, 224)
QUANT = {"mean": 127.5, "std": 127.5, "scale": 1 / 128, "zero_point": 128}


def median_ms(fns: dict[str, Callable[[], Any]], seconds: float) -> dict[str, float]:
    """Median times, measured round-robin in blocks so noise hits each function alike.

    ``name`` is the median of the 2nd..last run of each block (the frame and tables warm in
    cache, as TFLite's benchmark_model repeats one input); ``name_cold`` the median of the
    first run of each block, after the other functions ran (as a new camera frame arrives).
    """
    for fn in fns.values():
        fn()  # warm-up (numba compiles or loads its cache here)
    warm: dict[str, list[float]] = {name: [] for name in fns}
    cold: dict[str, list[float]] = {name: [] for name in fns}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or min(len(t) for t in cold.values()) < 10:
        for name, fn in fns.items():
            for n in range(BLOCK):
                start = time.perf_counter()
                fn()
                (cold if n == 0 else warm)[name].append((time.perf_counter() - start) * 1000.0)
    out = {name: round(float(np.median(t)), 4) for name, t in warm.items()}
    out.update({f"{name}_cold": round(float(np.median(t)), 4) for name, t in cold.items()})
    return out


def pillow_quantize(image: Any) -> np.ndarray:
    from PIL import Image

    pixels = np.asarray(image.resize(OUT, Image.Resampling.BILINEAR), np.float32)
    real = (pixels - QUANT["mean"]) / QUANT["std"]
    return np.clip(np.round(real / QUANT["scale"]) + QUANT["zero_point"], 0, 255).astype(np.uint8)


def _row(timings: dict[str, float], paths: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {f"{p}_ms": timings.get(p) for p in ("c", "numba", "numpy")}
    row.update({f"{p}_cold_ms": timings.get(f"{p}_cold") for p in ("c", "numba", "numpy")})
    row["fastest"] = min((p for p in paths), key=lambda p: timings[p])
    return row


def bench_kernels(seconds: float = 0.5, invoke_ms: float | None = None) -> dict[str, Any]:
    from PIL import Image

    rng = np.random.default_rng(0)
    report: dict[str, Any] = {"paths": kernels.available_paths(), "kernels": {}}
    for resize in ("bilinear", "area"):
        rows: dict[str, Any] = {}
        paths = kernels.paths_for("preprocess")
        for w, h in SIZES:
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            image = Image.fromarray(frame)
            out = np.empty((1, *OUT, 3), np.uint8)
            fns = {p: (lambda p=p: kernels.preprocess(frame, "RGB", out, resize=resize, path=p, **QUANT))
                   for p in paths}
            fns["pil"] = lambda: pillow_quantize(image)
            t = median_ms(fns, seconds)
            row = _row(t, paths)
            row["pil_ms"] = t["pil"]
            row["pil_cold_ms"] = t["pil_cold"]
            row["speedup_vs_pil"] = round(t["pil"] / t[row["fastest"]], 2)
            row["speedup_vs_pil_cold"] = round(t["pil_cold"] / t[row["fastest"] + "_cold"], 2)
            if invoke_ms:
                row["share_of_invoke"] = round(t[row["fastest"]] / invoke_ms, 3)
                row["share_of_invoke_cold"] = round(t[row["fastest"] + "_cold"] / invoke_ms, 3)
            rows[f"{w}x{h}"] = row
        report["kernels"][f"preprocess_{resize}"] = rows
    for fmt in ("YUYV", "NV12"):
        rows = {}
        for w, h in SIZES:
            frame = rng.integers(0, 256, (h, 2 * w) if fmt == "YUYV" else (h * 3 // 2, w), dtype=np.uint8)
            out = np.empty((1, *OUT, 3), np.uint8)
            paths = kernels.paths_for("preprocess")
            t = median_ms({p: (lambda p=p: kernels.preprocess(frame, fmt, out, path=p, **QUANT)) for p in paths},
                          seconds)
            rows[f"{w}x{h}"] = _row(t, paths)
        report["kernels"][f"preprocess_{fmt.lower()}_bilinear"] = rows

    scores_u8 = rng.integers(0, 256, 1001).astype(np.uint8)
    logits = rng.standard_normal(1001).astype(np.float32)
    centre = rng.uniform(0, 1, (2000, 2))
    size = rng.uniform(0.02, 0.2, (2000, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
    box_scores = rng.uniform(0, 1, 2000).astype(np.float32)
    classes = rng.integers(0, 10, 2000).astype(np.int32)
    heat = rng.standard_normal((64, 48, 17)).astype(np.float32)
    vector = rng.standard_normal(1024).astype(np.float32)
    post: dict[str, tuple[str, Callable[[str], Any]]] = {
        "dequantize": ("1001 uint8 scores", lambda p: kernels.dequantize(scores_u8, 0.00390625, 0, path=p)),
        "softmax": ("1001 logits", lambda p: kernels.softmax(logits, path=p)),
        "topk": ("top 5 of 1001", lambda p: kernels.topk(logits, 5, path=p)),
        "nms": ("2000 boxes, 10 classes, IoU 0.5, 100 kept",
                lambda p: kernels.nms(boxes, box_scores, classes=classes, iou_threshold=0.5, path=p)),
        "keypoints": ("64x48x17 heatmaps", lambda p: kernels.keypoints(heat, path=p)),
        "l2_normalize": ("1024-d", lambda p: kernels.l2_normalize(vector, path=p)),
        "quantize_int8": ("1024-d", lambda p: kernels.quantize_int8(vector, path=p)),
        "binarize": ("1024-d", lambda p: kernels.binarize(vector, path=p)),
    }
    for name, (what, call) in post.items():
        paths = kernels.paths_for(name)
        t = median_ms({p: (lambda p=p: call(p)) for p in paths}, seconds / 4)
        report["kernels"][name] = {"input": what, **_row(t, paths)}
    return report
