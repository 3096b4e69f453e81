"""``edgeloop bench MODEL --frame WxH``: frame in, top-k out, fused against naive.

Fused: ``LoadedModel.run_frame`` (the preprocess kernel writes straight into the
input tensor), invoke, dequantize + top-k kernels. Naive: the frame (a numpy array,
as a camera hands it over) to a Pillow image, Pillow resize, numpy quantize,
``set_tensor``, invoke, numpy softmax and argsort. Same model, same
interpreter settings, interleaved; ``pipeline_speedup`` = naive p50 / fused p50.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgeloop.runtime import kernels

from . import BLOCK, summarize


def parse_frame(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--frame: '{text}' is not WIDTHxHEIGHT (for example 640x480)") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"--frame: '{text}' must be positive")
    return w, h


def bench_pipeline(model: Any, frame_size: tuple[int, int], seconds: float, top_k: int = 5) -> dict[str, Any]:
    from PIL import Image

    w, h = frame_size
    spec = model.inputs[0]
    if len(spec.shape) != 4 or spec.shape[3] != 3 or spec.dtype != np.uint8 or spec.quantization is None:
        raise ValueError("--frame needs a model with a uint8 (1, H, W, 3) quantized image input")
    out_spec = model.outputs[0]
    q_out = out_spec.quantization
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    q_in = spec.quantization
    size = (spec.shape[2], spec.shape[1])
    interp = model._interpreter()  # the same interpreter serves both pipelines, in turn

    def fused() -> np.ndarray:
        scores = model.run_frame(frame, "RGB")[0].reshape(-1)
        if q_out is not None:
            scores = kernels.dequantize(scores, q_out.scale, q_out.zero_point)
        return kernels.topk(scores, top_k)

    def naive() -> np.ndarray:
        # The frame arrives as an array (as from a camera): Pillow needs its own image first.
        pixels = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR), np.float32)
        real = (pixels - 127.5) / 127.5
        x = np.clip(np.round(real / q_in.scale) + q_in.zero_point, 0, 255).astype(np.uint8)[None]
        native = interp._native
        native.set_tensor(spec.index, x)
        native.invoke()
        raw = native.get_tensor(out_spec.index).reshape(-1).astype(np.float32)
        if q_out is not None:
            raw = (raw - q_out.zero_point) * q_out.scale
        e = np.exp(raw - raw.max())
        return np.argsort(-(e / e.sum()), kind="stable")[:top_k]

    for _ in range(5):
        fused()
        naive()
    times: dict[str, list[float]] = {"fused": [], "naive": []}
    deadline = time.perf_counter() + 2 * seconds
    while time.perf_counter() < deadline or len(times["fused"]) < 50:
        for name, fn in (("fused", fused), ("naive", naive)):
            for _ in range(BLOCK):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000.0)
    fused_s, naive_s = summarize(times["fused"], "pipeline_"), summarize(times["naive"], "naive_")
    return {"frame": f"{w}x{h}", "runs": len(times["fused"]), "kernel_path": kernels.path_for("preprocess"),
            **fused_s, **naive_s,
            "pipeline_speedup": round(naive_s["naive_p50_ms"] / fused_s["pipeline_p50_ms"], 3)}
