"""Inputs as bytes and back: what the retrieval index keeps of a source (to re-embed it
later) and what offload sends to the regional edge. A file keeps its own bytes and format,
an image goes as PNG, an array as .npy, text as UTF-8."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError


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


MAX_PIXELS = 4096 * 4096  # an image larger than this is refused before it is decoded
MAX_ARRAY_BYTES = 64 << 20


def _array(data: bytes) -> np.ndarray:
    """A .npy array, its header checked first: the size it declares must fit the bytes given
    and ``MAX_ARRAY_BYTES`` (a header can declare terabytes in a few bytes)."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(buf)
    except (ValueError, OSError) as exc:
        raise InputError(f"the .npy bytes have no valid header ({exc})", "send numpy.save bytes") from None
    size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if dtype.hasobject or size > MAX_ARRAY_BYTES or size > len(data):
        raise InputError(f"the .npy array declares {shape} {dtype} ({size} bytes) in {len(data)} bytes",
                         f"send a plain numeric array of at most {MAX_ARRAY_BYTES >> 20} MiB")
    buf.seek(0)
    return np.load(buf, allow_pickle=False)


def from_bytes(data: bytes, kind: str | None) -> Any:
    """An array for "npy", text for "text", else an RGB image (any format Pillow reads).
    InputError for an image over ``MAX_PIXELS`` (checked from its header, before decoding: a
    140 KB PNG of 12000x12000 took 0.6 s to decode) or an array whose header does not fit."""
    if kind == "npy":
        return _array(data)
    if kind == "text":
        return data.decode()
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise InputError(f"the image is {width}x{height} ({width * height / 1e6:.0f} Mpx), over "
                         f"{MAX_PIXELS / 1e6:.1f} Mpx", "send an image of at most 4096x4096 pixels")
    return image.convert("RGB")
