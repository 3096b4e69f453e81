"""A hard example for a camera answer less confident than ``camera.hard_below``: its record,
the drift features, the embedding when the primary model answered, and the raw image only
when ``camera.upload_raw`` allows."""

from __future__ import annotations

from typing import Any

from ..seams import Action, Inference, Record

KEY = "hard_example"
APPLIES = "camera"


def decide(inference: Inference, config: Any) -> list[Action]:
    top = inference.top
    if top is None or top.score >= config.camera.hard_below:
        return []
    example: dict[str, Any] = {**inference.record(), "features": dict(inference.features)}
    if inference.embedding is not None:
        example["embedding"] = inference.embedding.astype("float16").tobytes()
    if config.camera.upload_raw and inference.frame is not None:
        example["image"] = inference.frame.raw()
    return [Record("hard-examples", example, inference.trace)]
