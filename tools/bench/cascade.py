"""The cascade (draft model first, the target when the draft is unsure) against each model
alone, on the shared photos and augmented crops of them: accuracy and mean latency.

Labels: the ImageNet classes each photo shows (``TRUTH``); the digit drawing is left out
(no ImageNet class). Crops keep 60-90 % of each side, half of them mirrored."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

TRUTH = {"bird.bmp": {20}, "cat.bmp": {282, 283, 286}, "grace_hopper.bmp": {653}, "parrot.jpg": {89},
         "sunflower.bmp": {986}}  # chickadee; tabby/tiger/Egyptian cat; military uniform; macaw; daisy


def labelled_inputs(shared: Path, crops_per_photo: int, seed: int = 0) -> list[tuple[Any, set[int]]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for name, truth in TRUTH.items():
        img = Image.open(shared / "images" / name).convert("RGB")
        out.append((img, truth))
        for _ in range(crops_per_photo):
            s = rng.uniform(0.6, 0.9)
            w, h = int(img.width * s), int(img.height * s)
            x, y = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
            crop = img.crop((x, y, x + w, y + h))
            out.append((crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop, truth))
    return out


def cascade_report(draft: Any, target: Any, shared: Path, threshold: float = 0.6,
                   crops_per_photo: int = 20) -> dict[str, Any]:
    from edgeloop.runtime.router import Cascade

    inputs = labelled_inputs(shared, crops_per_photo)
    cascade = Cascade(draft, target, threshold)
    rows: dict[str, dict[str, list[float]]] = {k: {"ok": [], "ms": []} for k in ("draft", "target", "cascade")}
    for source, truth in inputs:
        for name, run in (("draft", lambda s: draft.classify(s)), ("target", lambda s: target.classify(s)),
                          ("cascade", lambda s: cascade.serve(s)[0])):
            start = time.perf_counter()
            result = run(source)
            rows[name]["ms"].append((time.perf_counter() - start) * 1000.0)
            rows[name]["ok"].append(float(result.top[0].index in truth))
    report: dict[str, Any] = {"inputs": len(inputs), "threshold": threshold,
                              "draft_share": round(cascade.counts["draft"] / len(inputs), 3)}
    for name, r in rows.items():
        report[name] = {"accuracy": round(float(np.mean(r["ok"])), 3), "mean_ms": round(float(np.mean(r["ms"])), 3)}
    return report
