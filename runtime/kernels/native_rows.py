"""The source layout the compiled paths read: rows of packed bytes, any row stride."""

from __future__ import annotations

import numpy as np


def standard_rows(src: np.ndarray) -> np.ndarray:
    """``src`` itself when the bytes within each row are packed (a vertical flip or a
    row crop stays free); otherwise a C-contiguous copy."""
    if src.ndim == 3:
        packed = src.strides[2] == 1 and src.strides[1] == src.shape[2]
    else:
        packed = src.strides[1] == 1
    return src if packed else np.ascontiguousarray(src)
