"""Few-shot decisions on the device (imprinting): labelled examples go into a collection, a
new input takes the label of its nearest neighbours, or "unknown" when even the nearest is
farther than a threshold. The embedding function is pluggable: an image model through the
engine (``image_embedder``), or any callable for text or other data."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeloop.runtime.source_bytes import from_bytes, to_bytes

from .collection import Collection, Neighbour

UNKNOWN = "unknown"
DEFAULT_THRESHOLD = 0.3  # cosine distance; crops of one photo sit < 0.18 apart, other photos > 0.38 (see README)


@dataclass(frozen=True)
class Decision:
    label: str  # UNKNOWN when no neighbour is within the threshold
    distance: float  # to the nearest neighbour
    votes: dict[str, int]
    neighbours: list[Neighbour]

    @property
    def known(self) -> bool:
        return self.label != UNKNOWN


def embedding_identity(model: Any) -> tuple[str, str]:
    """(model, version) recorded with a collection: the manifest version of a registered
    model (its CPU and accelerator variants embed alike), else the file's sha256."""
    entry = model.entry
    return entry.name, entry.version if entry.registered else f"sha256:{model.artifact.sha256[:16]}"


def image_embedder(model: Any) -> Callable[[Any], np.ndarray]:
    """An embedding function from a loaded model (``Engine.load(...)``): paths, PIL images,
    arrays, and stored source bytes (for ``Collection.rebuild``)."""
    def embed(source: Any, kind: str | None = None) -> np.ndarray:
        if isinstance(source, bytes):
            source = from_bytes(source, kind)
        return model.embed(source).vector

    return embed


class Imprinter:
    def __init__(self, collection: Collection, embed: Callable[[Any], np.ndarray], *, k: int = 5,
                 threshold: float = DEFAULT_THRESHOLD) -> None:
        self.collection = collection
        self.embed = embed
        self.k = k
        self.threshold = threshold

    def add(self, label: str | None, source: Any, *, id: str | None = None, keep_source: bool = True) -> str:
        """Embed ``source`` and store it as an example of ``label``; returns its id."""
        vector = self.embed(source)
        item_id = id or f"{label or 'item'}-{os.urandom(6).hex()}"
        data, kind = to_bytes(source) if keep_source else (None, None)
        self.collection.add(item_id, vector, label=label, source=data, source_type=kind)
        return item_id

    def classify(self, source: Any) -> Decision:
        """The majority label among the ``k`` nearest examples within the threshold (ties go
        to the nearer examples); UNKNOWN when the nearest is beyond it."""
        neighbours = self.collection.query(self.embed(source), self.k)
        near = [n for n in neighbours if n.distance <= self.threshold and n.label]
        if not near:
            return Decision(UNKNOWN, neighbours[0].distance if neighbours else float("inf"), {}, neighbours)
        votes = Counter(n.label for n in near)
        best = max(votes.values())
        label = next(n.label for n in near if votes[n.label] == best)  # nearest among the tied
        return Decision(label, neighbours[0].distance, dict(votes), neighbours)  # type: ignore[arg-type]
