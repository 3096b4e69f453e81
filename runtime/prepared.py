"""A camera frame converted once: ``PreparedFrame`` preprocesses its pixels into a model's input
tensor the first time that model's input spec asks (the fused kernel, straight from the source
buffer) and hands the same tensor to every later use: the ladder's model rungs, the cache key,
a retry on another rung with the same input. A model with another input spec gets its own
conversion, once.

``LoadedModel.prepare`` and the cache rung take it like any other source."""

from __future__ import annotations

from typing import Any

import numpy as np


class PreparedFrame:
    __slots__ = ("pixels", "fmt", "_tensors", "_key")

    def __init__(self, pixels: np.ndarray, fmt: str) -> None:
        self.pixels = pixels  # HxW (GRAY) or HxWxC, uint8
        self.fmt = fmt
        self._tensors: dict[Any, np.ndarray] = {}
        self._key: bytes | None = None

    def tensor_for(self, model: Any) -> np.ndarray:
        """Input 0 of ``model`` for this frame (converted on the first call for its input spec)."""
        k = model.frame_spec_key
        tensor = self._tensors.get(k)
        if tensor is None:
            spec = model.inputs[0]
            tensor = np.empty(spec.shape, spec.dtype)
            model.frame_into(self.pixels, self.fmt, tensor)
            self._tensors[k] = tensor
            if self._key is None:
                from .watchdog.rungs import input_key

                self._key = input_key(tensor)
        return tensor

    @property
    def cache_key(self) -> bytes:
        """The key near-identical inputs share: from the first model tensor made, else the pixels."""
        if self._key is None:
            from .watchdog.rungs import input_key

            self._key = input_key(self.pixels)
        return self._key

    def brightness(self) -> float:
        """Mean luma / 255 over at most ~64x64 samples (the drift feature)."""
        p = self.pixels
        step = max(1, max(p.shape[0], p.shape[1]) // 64)
        s = p[::step, ::step].astype(np.float32)
        if s.ndim == 3 and s.shape[2] >= 3:
            r, g, b = (s[..., 0], s[..., 1], s[..., 2]) if self.fmt != "BGR" else (s[..., 2], s[..., 1], s[..., 0])
            s = 0.299 * r + 0.587 * g + 0.114 * b
        elif s.ndim == 3:
            s = s[..., 0]
        return float(s.mean() / 255.0)
