"""Tensor descriptions and quantization by a model's own parameters.

Pure functions on numpy arrays; per-tensor and per-channel quantization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class Quantization:
    """Affine quantization: ``real = scale * (q - zero_point)``.

    Per-tensor when ``scales`` has one element; per-channel along ``axis`` otherwise.
    """

    scales: np.ndarray
    zero_points: np.ndarray
    axis: int = 0

    @property
    def per_channel(self) -> bool:
        return self.scales.size > 1

    @property
    def scale(self) -> float:
        return float(self.scales[0])

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0])

    def _broadcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.per_channel:
            return self.scales[:1].astype(np.float64), self.zero_points[:1].astype(np.float64)
        shape = [1] * ndim
        shape[self.axis] = -1
        return (self.scales.astype(np.float64).reshape(shape),
                self.zero_points.astype(np.float64).reshape(shape))

    def to_dict(self) -> dict[str, Any]:
        if self.per_channel:
            return {"scales": self.scales.tolist(), "zero_points": self.zero_points.tolist(),
                    "axis": self.axis}
        return {"scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    quantization: Quantization | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "quantization": self.quantization.to_dict() if self.quantization else None,
        }

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> "TensorSpec":
        """Build from an interpreter's ``get_input_details()`` entry."""
        params = details.get("quantization_parameters") or {}
        scales = np.asarray(params.get("scales", ()), dtype=np.float32)
        zeros = np.asarray(params.get("zero_points", ()), dtype=np.int64)
        quant: Quantization | None = None
        if scales.size and np.any(scales != 0):
            if zeros.size != scales.size:
                zeros = np.resize(zeros if zeros.size else np.zeros(1, np.int64), scales.size)
            quant = Quantization(scales, zeros, int(params.get("quantized_dimension", 0)))
        else:
            scale, zero = details.get("quantization", (0.0, 0))
            if scale:
                quant = Quantization(np.array([scale], np.float32), np.array([zero], np.int64))
        return cls(
            index=int(details["index"]),
            name=str(details.get("name", "")),
            shape=tuple(int(d) for d in details["shape"]),
            dtype=np.dtype(details["dtype"]),
            quantization=quant,
        )


def quantize(real: np.ndarray, quant: Quantization, dtype: np.dtype) -> np.ndarray:
    """Real values to the integer type ``dtype``, rounding half away from zero and saturating."""
    scales, zeros = quant._broadcast(np.ndim(real))
    x = np.asarray(real, dtype=np.float64) / scales
    # TFLite rounds half away from zero (std::round); np.round would round half to even.
    q = np.sign(x) * np.floor(np.abs(x) + 0.5) + zeros
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, quant: Quantization | None) -> np.ndarray:
    """Integer tensor to float32 by its own parameters; float tensors pass through."""
    if quant is None:
        return np.asarray(q, dtype=np.float32)
    scales, zeros = quant._broadcast(np.ndim(q))
    return ((np.asarray(q, dtype=np.float64) - zeros) * scales).astype(np.float32)
