"""A bundle's golden set run on this device's backend and delegate: the release machine's
answers, within their bounds, and the true labels, at the share the release asks for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .tensors import dequantize

MAX_GOLDEN = 1024


@dataclass(frozen=True)
class GoldenSet:
    inputs: np.ndarray  # (N, *input shape): tensors as fed
    labels: np.ndarray  # (N,): the true top-1
    expected: np.ndarray  # (N, classes): the scores at release, dequantized

    @classmethod
    def load(cls, path: Path) -> "GoldenSet":
        try:
            with np.load(path, allow_pickle=False) as z:
                inputs, labels, expected = z["inputs"], z["labels"], z["expected"]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"golden set {path} cannot be read: {exc}",
                             "release the bundle again (golden.npz: inputs, labels, expected)") from None
        if not 0 < len(inputs) <= MAX_GOLDEN or len(labels) != len(inputs) or len(expected) != len(inputs) \
                or expected.ndim != 2 or not np.isfinite(expected).all():
            raise InputError(f"golden set {path}: {len(inputs)} inputs, {len(labels)} labels, expected "
                             f"{expected.shape}: they do not fit together", "release the bundle again")
        return cls(inputs, labels.astype(np.int64), expected.astype(np.float32))

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez_compressed(f, inputs=self.inputs, labels=self.labels, expected=self.expected)


@dataclass(frozen=True)
class GoldenReport:
    passed: bool
    top1_share: float
    max_abs: float
    reason: str | None  # why it failed


def scores(model: Any, tensor: np.ndarray) -> np.ndarray:
    """The model's class scores for one input tensor, dequantized."""
    n = model.entry.output.index
    return dequantize(model.run(tensor[None] if tensor.ndim == len(model.inputs[0].shape) - 1 else tensor)[n],
                      model.outputs[n].quantization).reshape(-1).astype(np.float32)


def check(model: Any, golden: GoldenSet, min_top1: float, max_abs: float | None) -> GoldenReport:
    """Run every golden input; passed when the top-1 matches the label often enough and every
    score is within ``max_abs`` of the release's (when given)."""
    hits, worst = 0, 0.0
    for tensor, label, expected in zip(golden.inputs, golden.labels, golden.expected):
        got = scores(model, tensor)
        if got.shape != expected.shape:
            return GoldenReport(False, 0.0, float("inf"),
                                f"the model answers {got.size} scores, the golden set expects {expected.size}")
        hits += int(np.argmax(got)) == int(label)
        worst = max(worst, float(np.max(np.abs(got - expected))))
    share = hits / len(golden.labels)
    if share < min_top1:
        return GoldenReport(False, share, worst, f"golden top-1 {share:.3f} < {min_top1:.3f}")
    if max_abs is not None and worst > max_abs:
        return GoldenReport(False, share, worst, f"golden scores off by {worst:.4f} > {max_abs:.4f}")
    return GoldenReport(True, share, worst, None)
