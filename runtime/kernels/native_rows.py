"""Shared by the compiled paths: the source layout they read, and NMS candidate order."""

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


def candidate_order(scores: np.ndarray, score_threshold: float) -> np.ndarray:
    """Indices of the scores above the threshold, best first, ties to the lower index."""
    above = np.flatnonzero(scores > np.float32(score_threshold))
    return above[np.lexsort((above, -scores[above].astype(np.float64)))].astype(np.int64)
