"""Vectors as the index stores them: float32, int8 with a stored scale, or sign bits.

int8: ``q = clip(round(x * scale), -127, 127)`` with one scale per collection, chosen from the
first vectors stored so that 99.9 % of their components fit (a few outliers clip instead of
every component losing resolution). Binary: one bit per component, set when it is > 0
(sqlite-vec's ``vec_quantize_binary``); candidates are re-ranked with the float vectors."""

from __future__ import annotations

import numpy as np

from .errors import BadVector

STORAGES = ("float", "int8", "binary")
METRICS = ("cosine", "l2")


def as_vectors(vectors: object, dim: int, normalize: bool) -> np.ndarray:
    """A (n, dim) float32 array, checked: BadVector names the row and the problem."""
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadVector(f"vectors are not numbers ({exc})", "pass a list or array of floats") from exc
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        got = arr.shape[-1] if arr.ndim >= 1 and arr.size else 0
        raise BadVector(f"vector has {got} dimensions, the collection has {dim}",
                        f"embed with the collection's model, or create a collection of dimension {got}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise BadVector(f"vector {row} contains NaN or infinite values",
                        "check the embedding model's output; nothing was stored")
    if normalize:
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms == 0).any():
            raise BadVector(f"vector {int(np.argmax(norms[:, 0] == 0))} is all zeros and has no direction",
                            "a cosine collection needs non-zero vectors")
        arr = arr / norms
    return np.ascontiguousarray(arr, dtype=np.float32)


def int8_scale(vectors: np.ndarray) -> float:
    """The scale that maps 99.9 % of the components into [-127, 127]."""
    top = float(np.quantile(np.abs(vectors), 0.999)) if vectors.size else 1.0
    return 127.0 / top if top > 0 else 127.0


def to_int8(vectors: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(vectors * scale), -127, 127).astype(np.int8)


def pairwise(metric: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances between every row of ``a`` and every row of ``b``: (len(a), len(b))."""
    if metric == "cosine":
        return 1.0 - a @ b.T
    return (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]


def kmeans(vectors: np.ndarray, n: int, metric: str, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """``n`` centroids (float32) by Lloyd's iterations from a random pick of the vectors;
    for cosine, the centroids are renormalized (spherical k-means). Empty cells are reseeded."""
    rng = np.random.default_rng(seed)
    centroids = vectors[rng.choice(len(vectors), n, replace=False)].copy()
    for _ in range(iterations):
        nearest = pairwise(metric, vectors, centroids).argmin(axis=1)
        order = np.argsort(nearest, kind="stable")
        counts = np.bincount(nearest, minlength=n)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sums = np.zeros_like(centroids)
        filled = counts > 0
        sums[filled] = np.add.reduceat(vectors[order], starts[filled], axis=0)
        empty = counts == 0
        centroids = np.where(empty[:, None], vectors[rng.choice(len(vectors), n)], sums / np.maximum(counts, 1)[:, None])
        if metric == "cosine":
            centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return centroids.astype(np.float32)


def distances(metric: str, candidates: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Exact distances of float candidates to the query: cosine distance (1 - cos, vectors
    already normalized) or Euclidean."""
    if metric == "cosine":
        return 1.0 - candidates @ query
    return np.linalg.norm(candidates - query, axis=1)
