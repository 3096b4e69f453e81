"""Typed inference results and the pure functions that decode output tensors into them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import kernels
from .errors import InputError
from .tensors import TensorSpec, dequantize


@dataclass(frozen=True)
class Class:
    index: int
    label: str | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "score": round(self.score, 6)}


@dataclass(frozen=True)
class Classification:
    """Top-k classes, best first, with dequantized scores; ``embedding`` from the same invoke
    when the model's manifest names an embedding output."""

    top: tuple[Class, ...]
    # The embedding output as it came, decoded when first asked for (most answers never are:
    # the agent indexes every n-th frame); (tensor, spec) or an Embedding.
    raw_embedding: Any = field(default=None, compare=False, repr=False)

    @property
    def embedding(self) -> "Embedding | None":
        raw = self.raw_embedding
        if raw is None or isinstance(raw, Embedding):
            return raw
        decoded = embed(*raw)
        object.__setattr__(self, "raw_embedding", decoded)
        return decoded

    @property
    def best(self) -> Class:
        return self.top[0]

    def to_dict(self) -> dict[str, Any]:
        return {"top": [c.to_dict() for c in self.top]}


@dataclass(frozen=True)
class Embedding:
    """An L2-normalized float32 vector."""

    vector: np.ndarray

    def cosine(self, other: "Embedding") -> float:
        return float(np.dot(self.vector, other.vector))

    def to_dict(self) -> dict[str, Any]:
        return {"embedding": {"dim": int(self.vector.size), "vector": self.vector.round(6).tolist()}}


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax, normalized
    index: int
    label: str | None
    score: float


@dataclass(frozen=True)
class Detections:
    items: tuple[Detection, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"detections": [{"box": [round(v, 5) for v in d.box], "index": d.index,
                                "label": d.label, "score": round(d.score, 6)} for d in self.items]}


@dataclass(frozen=True)
class RawOutputs:
    """The output tensors as the model produced them (not dequantized)."""

    tensors: tuple[np.ndarray, ...]
    specs: tuple[TensorSpec, ...] = field(default=())

    def dequantized(self) -> list[np.ndarray]:
        return [dequantize(t, s.quantization) for t, s in zip(self.tensors, self.specs)]

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": [{"shape": list(t.shape), "dtype": t.dtype.name} for t in self.tensors]}


Result = Classification | Embedding | Detections | RawOutputs


def read_labels(path: Path) -> list[str]:
    """Plain lines (index = line number) or ``"<index> <label>"`` lines."""
    try:
        lines = [ln.rstrip("\r\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels {path}: {exc}", "give a UTF-8 text file, one label per line") from exc
    pairs = [ln.split(maxsplit=1) for ln in lines if ln.strip()]
    if pairs and all(len(p) == 2 and p[0].isdigit() for p in pairs):
        table = {int(i): label for i, label in pairs}
        return [table.get(i, str(i)) for i in range(max(table) + 1)]
    return lines


def _label(labels: Sequence[str] | None, index: int) -> str | None:
    return labels[index] if labels is not None and 0 <= index < len(labels) else None


def classify(output: np.ndarray, spec: TensorSpec, labels: Sequence[str] | None, top_k: int) -> Classification:
    scores = dequantize(output, spec.quantization).reshape(-1)
    # Ties go to the lower index, so results are stable across runs and backends.
    best = kernels.topk(scores, max(1, min(top_k, scores.size)))
    return Classification(tuple(Class(int(i), _label(labels, int(i)), float(scores[i])) for i in best))


def embed(output: np.ndarray, spec: TensorSpec) -> Embedding:
    return Embedding(kernels.l2_normalize(dequantize(output, spec.quantization).reshape(-1)))


def detect(outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec], labels: Sequence[str] | None,
           min_score: float = 0.0) -> Detections:
    """Decode the four outputs of TFLite_Detection_PostProcess: boxes, classes, scores, count."""
    if len(outputs) < 4:
        raise InputError(f"detection decoding needs 4 outputs (boxes, classes, scores, count), "
                         f"the model has {len(outputs)}", "set output.decode = \"raw\" for this model")
    boxes, classes, scores, count = (dequantize(o, s.quantization) for o, s in zip(outputs[:4], specs[:4]))
    n = int(count.reshape(-1)[0])
    boxes = boxes.reshape(-1, 4)
    items = []
    for i in range(min(n, boxes.shape[0])):
        score = float(scores.reshape(-1)[i])
        if score >= min_score:
            cls = int(classes.reshape(-1)[i])
            items.append(Detection(tuple(float(v) for v in boxes[i]), cls, _label(labels, cls), score))
    return Detections(tuple(items))
