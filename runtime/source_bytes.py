"""Inputs as bytes and back: what the retrieval index keeps of a source (to re-embed it
later) and what offload sends to the regional edge. A file keeps its own bytes and format,
an image goes as PNG, an array as .npy, text as UTF-8."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np


def to_bytes(source: Any) -> tuple[bytes, str]:
    """(bytes, kind): kind is the file's suffix, "png", "npy", "text" or "bin"."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        return Path(source).read_bytes(), Path(source).suffix.lstrip(".").lower() or "bin"
    if hasattr(source, "save"):  # a PIL image
        buf = io.BytesIO()
        source.save(buf, format="PNG")
        return buf.getvalue(), "png"
    if isinstance(source, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, source, allow_pickle=False)
        return buf.getvalue(), "npy"
    if isinstance(source, str):
        return source.encode(), "text"
    if isinstance(source, bytes):
        return source, "bin"
    raise TypeError(f"cannot keep a {type(source).__name__} as a source")


def from_bytes(data: bytes, kind: str | None) -> Any:
    """An array for "npy", text for "text", else an RGB image (any format Pillow reads)."""
    if kind == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if kind == "text":
        return data.decode()
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")
