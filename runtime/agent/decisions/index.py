"""Into the local retrieval index: the embedding of every ``camera.index_every``-th camera
frame and of every alert, when the primary model answered (a fallback's embedding lives in
another space)."""

from __future__ import annotations

from typing import Any

from ..seams import Action, IndexVector, Inference
from .alert import is_alert

KEY = "index"
APPLIES = "camera"


def decide(inference: Inference, config: Any) -> list[Action]:
    every = config.camera.index_every
    if not every or inference.embedding is None:
        return []
    if not (is_alert(inference, config) or inference.extra.get("n", 1) % every == 0):
        return []
    top = inference.top
    return [IndexVector(inference.slot, inference.slot, inference.version, inference.trace, inference.embedding,
                        top.label if top else None)]
