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
    upload_raw = config.camera.upload_raw

    def example() -> dict[str, Any]:  # made only if the stream takes it (it is rate-limited)
        body: dict[str, Any] = {**inference.record(), "features": dict(inference.features)}
        embedding = inference.embedding
        if embedding is not None:
            body["embedding"] = embedding.astype("float16").tobytes()
        if upload_raw and inference.frame is not None:
            body["image"] = inference.frame.raw()
        return body

    return [Record("hard-examples", example, inference.trace)]
