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
    if not every or not (inference.extra.get("n", 1) % every == 0 or is_alert(inference, config)):
        return []
    embedding = inference.embedding  # decoded here, for the frames that go in only
    if embedding is None:
        return []
    top = inference.top
    # The collection is the model's name (a rollout's slot is model@version); the sync worker
    # puts another version's vectors in a collection beside the first version's.
    return [IndexVector(inference.model, inference.model, inference.version, inference.trace, embedding,
                        top.label if top else None)]
