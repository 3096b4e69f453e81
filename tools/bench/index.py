"""``edgeloop bench index``: the retrieval index against exact numpy search, in one run.

For random unit vectors and, separately, clustered vectors that look like real embeddings
(centres with members spread around them; queries are members with a little noise), each
storage mode is built in its own file and measured: ``insert_per_s`` (batches of 1,000, one
transaction each), query ``p50_ms``/``p95_ms`` for k=10 (the ``MATCH … AND k = ?`` query,
re-rank included), ``recall_at_10`` against exact search, and ``bytes_per_vector`` (the whole
file, float vectors for re-ranking included, divided by N). The ``*_cells`` modes group the
vectors into 64 k-means cells and search the 4 nearest the query. ``numpy_p50_ms`` is exact
search over the same float32 matrix in memory. ``best`` is the fastest mode (p95) with recall >= 0.95
on the clustered set, with its speed-up over float vec0 and its ratio to numpy.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

MODES = ("float", "int8", "binary", "float_cells", "int8_cells", "binary_cells")
CELLS = 64  # the *_cells modes: k-means cells, the 4 nearest probed (the default, a sixteenth)
QUERIES = 50
BATCH = 1000


def datasets(n: int, dim: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)

    def unit(a: np.ndarray) -> np.ndarray:
        return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)

    rand = unit(rng.standard_normal((n, dim), dtype=np.float32))
    rand_q = unit(rng.standard_normal((QUERIES, dim), dtype=np.float32))
    # Clustered, non-negative like pooled CNN features: 1 centre per 100 members.
    centres = np.abs(rng.standard_normal((max(1, n // 100), dim), dtype=np.float32))
    members = unit(centres[rng.integers(0, len(centres), n)] + 0.6 * np.abs(rng.standard_normal((n, dim), dtype=np.float32)))
    picks = rng.integers(0, n, QUERIES)
    clus_q = unit(members[picks] + 0.02 * rng.standard_normal((QUERIES, dim), dtype=np.float32))
    return {"random": (rand, rand_q), "clustered": (members, clus_q)}


def _percentiles(samples: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(samples) * 1000, [50, 95])
    return round(float(p50), 3), round(float(p95), 3)


def _exact(x: np.ndarray, queries: np.ndarray) -> tuple[list[set[int]], list[float]]:
    truth, times = [], []
    for q in queries:
        start = time.perf_counter()
        d = x @ q
        top = np.argpartition(-d, 10)[:10]
        top = top[np.argsort(-d[top])]
        times.append(time.perf_counter() - start)
        truth.append(set(top.tolist()))
    return truth, times


def _mode(workdir: Path, mode: str, x: np.ndarray, queries: np.ndarray, truth: list[set[int]],
          progress: Callable[[str], None]) -> dict[str, Any]:
    from edgeloop.runtime.retrieval import VectorIndex

    path = workdir / f"{mode}.db"
    n, dim = x.shape
    with VectorIndex(path) as index:
        c = index.create("bench", dim, storage=mode.removesuffix("_cells"), cells=CELLS if mode.endswith("_cells") else 0)
        ids = [str(i) for i in range(n)]
        start = time.perf_counter()
        for b in range(0, n, BATCH):
            c.upsert(ids[b:b + BATCH], x[b:b + BATCH])
        insert = n / (time.perf_counter() - start)
        progress(f"{mode}: {n} inserted, {insert:,.0f}/s")
        for q in queries[:3]:  # warm the page cache
            c.query(q, 10)
        times, recall = [], []
        for q, want in zip(queries, truth):
            start = time.perf_counter()
            got = c.query(q, 10)
            times.append(time.perf_counter() - start)
            recall.append(len({int(h.id) for h in got} & want) / 10)
        index._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    p50, p95 = _percentiles(times)
    return {"insert_per_s": round(insert, 1), "p50_ms": p50, "p95_ms": p95,
            "recall_at_10": round(float(np.mean(recall)), 4),
            "bytes_per_vector": round(path.stat().st_size / n, 1)}


def bench_index(n: int = 100_000, dim: int = 384, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    result: dict[str, Any] = {"n": n, "dim": dim, "k": 10, "queries": QUERIES}
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-index-") as tmp:
        for name, (x, queries) in datasets(n, dim).items():
            truth, numpy_times = _exact(x, queries)
            numpy_times = _exact(x, queries)[1]  # the second pass, warm like the modes' queries
            p50, p95 = _percentiles(numpy_times)
            row: dict[str, Any] = {"numpy_p50_ms": p50, "numpy_p95_ms": p95}
            for mode in MODES:
                sub = Path(tmp) / name
                sub.mkdir(exist_ok=True)
                row[mode] = _mode(sub, mode, x, queries, truth, lambda m: progress(f"{name} {m}"))
            result[name] = row
    clustered = result["clustered"]
    good = [m for m in MODES if clustered[m]["recall_at_10"] >= 0.95]
    if good:
        best = min(good, key=lambda m: clustered[m]["p95_ms"])
        result["best"] = {"mode": best, "p95_ms": clustered[best]["p95_ms"],
                          "recall_at_10": clustered[best]["recall_at_10"],
                          "speedup_vs_float_vec0": round(clustered["float"]["p50_ms"] / clustered[best]["p50_ms"], 2),
                          "ratio_to_numpy": round(clustered[best]["p50_ms"] / clustered["numpy_p50_ms"], 2)}
    return result
