"""One collection of the on-device index: an ``items`` table that is the source of truth
(id, label, metadata, the float vector, optionally the raw source and a document) and a
sqlite-vec ``vec0`` table built from it, queried with ``MATCH … AND k = ?``.

Modes: ``float`` (exact within vec0), ``int8`` and ``binary`` (vec0 finds candidates in the
compact form, the float vectors re-rank them). Every write is one transaction over both
tables, so a crash leaves each vector either fully present with its metadata or absent.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import apsw
import numpy as np

from . import quantize
from .errors import BadQuery, BadVector, RetrievalError

MAX_K = 4096  # sqlite-vec's limit on k
NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
COLUMN_TYPES = {"text": str, "integer": int, "float": float, "boolean": bool}
RESERVED = {"id", "rowid", "label", "embedding", "distance", "k", "vector", "source", "document"}
OVERSAMPLE = {"float": 1, "int8": 4, "binary": 10}  # candidates per wanted neighbour, re-ranked
CONVERT = {"float": "?", "int8": "vec_int8(?)", "binary": "vec_quantize_binary(?)"}  # SQL taking our bytes


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name) or (kind != "collection" and name in RESERVED):
        raise RetrievalError(f"{kind} name {name!r} is not allowed",
                             "use lower-case letters, digits and _, starting with a letter"
                             + ("" if kind == "collection" else f", and none of {', '.join(sorted(RESERVED))}"))
    return name


class Neighbour(NamedTuple):
    id: str
    distance: float
    label: str | None
    metadata: dict[str, Any]
    document: str | None
    aux: dict[str, Any]


@dataclass
class Spec:
    """What a collection is; stored in the ``collections`` table."""

    name: str
    dim: int
    metric: str = "cosine"
    storage: str = "float"
    model: str | None = None
    model_version: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # filterable column -> type
    partition: tuple[str, str] | None = None  # (column, type): vec0 partition key
    keep_sources: bool = True
    int8_scale: float | None = None
    center: bytes | None = None  # float32 mean of the vectors: int8 and binary store x - center
    fitted: int = 0  # how many vectors the center, scale and cells were chosen from
    cells: int = 0  # > 0: vectors are grouped in up to this many k-means cells; a query probes a few
    centroids: bytes | None = None  # float32 (cells, dim)
    version: int = 0  # bumped by every write; deltas carry it

    def validate(self) -> "Spec":
        check_name("collection", self.name)
        if not isinstance(self.dim, int) or not 1 <= self.dim <= 8192:
            raise RetrievalError(f"dimension {self.dim!r} is out of range", "use 1 to 8192")
        if self.storage == "binary" and self.dim % 8:
            raise RetrievalError(f"binary storage needs a dimension divisible by 8, not {self.dim}",
                                 "use float or int8 storage")
        if self.metric not in quantize.METRICS:
            raise RetrievalError(f"metric {self.metric!r} is not one of {', '.join(quantize.METRICS)}",
                                 "use cosine for embeddings")
        if self.storage not in quantize.STORAGES:
            raise RetrievalError(f"storage {self.storage!r} is not one of {', '.join(quantize.STORAGES)}",
                                 "use float, int8 or binary")
        if not isinstance(self.cells, int) or not 0 <= self.cells <= MAX_CELLS:
            raise RetrievalError(f"cells = {self.cells!r} is out of range", f"use 0 (no cells) to {MAX_CELLS}")
        if self.cells and self.partition:
            raise RetrievalError("cells and a partition key cannot be combined (both use vec0's partition key)",
                                 "choose one")
        for col, kind in [*self.metadata.items(), *([self.partition] if self.partition else [])]:
            check_name("column", col)
            if kind not in COLUMN_TYPES:
                raise RetrievalError(f"column {col!r} has type {kind!r}",
                                     f"use one of {', '.join(COLUMN_TYPES)}")
        return self

    def row(self) -> tuple[Any, ...]:
        return (self.name, self.dim, self.metric, self.storage, self.model, self.model_version,
                json.dumps(self.metadata), json.dumps(self.partition), int(self.keep_sources),
                self.int8_scale, self.center, self.fitted, self.cells, self.centroids, self.version)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "Spec":
        name, dim, metric, storage, model, version_, meta, part, keep, scale, center, fitted, cells, cents, version = row
        p = json.loads(part)
        return cls(name, dim, metric, storage, model, version_, json.loads(meta), tuple(p) if p else None,
                   bool(keep), scale, center, fitted, cells, cents, version)

    def compact(self, vectors: np.ndarray) -> np.ndarray:
        """What vec0 stores for these float vectors. int8 and binary are taken around the
        collection's center: embeddings after a ReLU are all >= 0, and their sign bits
        would all be 1 without it."""
        if self.storage == "float":
            return vectors
        centered = vectors - np.frombuffer(self.center, np.float32) if self.center else vectors
        if self.storage == "int8":
            return quantize.to_int8(centered, self.int8_scale or 1.0)
        return np.ascontiguousarray(centered, dtype=np.float32)  # vec_quantize_binary takes the signs

    def needs_fit(self, count: int) -> bool:
        """The center, scale and cells are chosen again while the collection is young and has
        doubled since (a center taken from a handful of vectors would be a poor one); then they stay."""
        if self.storage == "float" and not self.cells:
            return False
        until = REFIT_CELLS_UNTIL if self.cells else REFIT_UNTIL
        return self.fitted == 0 or (self.fitted < until and count >= 2 * self.fitted)

    def fit(self, vectors: np.ndarray, count: int) -> None:
        """Choose from ``vectors``, a sample of the ``count`` the collection holds."""
        center = vectors.mean(axis=0).astype(np.float32)
        self.fitted = count
        if self.storage != "float":
            self.center = center.tobytes()
        if self.storage == "int8":
            self.int8_scale = quantize.int8_scale(vectors - center)
        if self.cells:
            # At least ~32 vectors a cell: a young collection gets fewer cells, more as it grows.
            n = max(1, min(self.cells, len(vectors) // 32))
            self.centroids = quantize.kmeans(vectors, n, self.metric).tobytes()

    def cells_of(self, vectors: np.ndarray, probes: int = 1) -> np.ndarray:
        """The ``probes`` nearest cells of each vector, nearest first: (n, probes)."""
        centroids = np.frombuffer(self.centroids, np.float32).reshape(-1, self.dim)  # type: ignore[arg-type]
        d = quantize.pairwise(self.metric, vectors, centroids)
        probes = min(probes, len(centroids))
        part = np.argpartition(d, probes - 1, axis=1)[:, :probes]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1)
        return np.take_along_axis(part, order, axis=1)


REFIT_UNTIL = 4096
FIT_SAMPLE = 16384  # vectors the center, scale and cells are chosen from
REFIT_CELLS_UNTIL = 65536
MAX_CELLS = 4096
SPEC_COLUMNS = ("name, dim, metric, storage, model, model_version, metadata, partition, keep_sources, int8_scale, "
                "center, fitted, cells, centroids, version")
SPEC_MARKS = ",".join("?" * 15)


def create_tables(db: apsw.Connection, spec: Spec) -> None:
    n = spec.name
    db.execute(f"""CREATE TABLE IF NOT EXISTS "items_{n}" (
        rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, label TEXT, metadata TEXT NOT NULL,
        part, aux TEXT NOT NULL, document TEXT, vector BLOB NOT NULL, source BLOB, source_type TEXT,
        version INTEGER NOT NULL)""")
    db.execute(f'CREATE TABLE IF NOT EXISTS "tombstones_{n}" (id TEXT PRIMARY KEY, version INTEGER NOT NULL)')
    create_vec_table(db, spec)


def chunk_size(spec: Spec) -> int:
    """Vectors per vec0 chunk: as many as fit in 512 KB, a power of two from 64 to 4096. Larger
    chunks scan faster (binary 20k x 384: 2.2 ms at 4096, 4.0 ms at 256), but every insert
    rewrites part of its chunk's blob, and big float chunks made inserts 13x slower."""
    per_vector = {"float": 4 * spec.dim, "int8": spec.dim, "binary": spec.dim // 8}[spec.storage]
    size = 64
    while size < 4096 and 2 * size * per_vector <= 512 * 1024:
        size *= 2
    return size


def create_vec_table(db: apsw.Connection, spec: Spec) -> None:
    kind = {"float": "float", "int8": "int8", "binary": "bit"}[spec.storage]
    columns = []
    if spec.partition:
        columns.append(f"{spec.partition[0]} {spec.partition[1]} partition key")
    if spec.cells:
        columns.append("cell integer partition key")
    metric = "" if spec.storage == "binary" else f" distance_metric={spec.metric}"
    columns.append(f"embedding {kind}[{spec.dim}]{metric}")
    columns.append("label text")
    columns += [f"{col} {kind_}" for col, kind_ in spec.metadata.items()]
    db.execute(f'CREATE VIRTUAL TABLE IF NOT EXISTS "vec_{spec.name}" USING vec0({", ".join(columns)}, '
               f"chunk_size={chunk_size(spec)})")


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: "Collection", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


class Collection:
    """Vectors with ids, labels, metadata and (optionally) their sources. Get one from
    ``VectorIndex.create`` or ``VectorIndex.collection``; it shares the index's connection."""

    def __init__(self, db: apsw.Connection, spec: Spec, lock: threading.RLock | None = None) -> None:
        self._db = db
        self.spec = spec
        self._lock = lock or threading.RLock()
        n = spec.name
        self._items, self._vec, self._tomb = f'"items_{n}"', f'"vec_{n}"', f'"tombstones_{n}"'
        self._filters = {"label": "text", **spec.metadata}
        if spec.partition:
            self._filters[spec.partition[0]] = spec.partition[1]

    @property
    def name(self) -> str:
        return self.spec.name

    @_locked
    def __len__(self) -> int:
        return self._db.execute(f"SELECT count(*) FROM {self._items}").fetchone()[0]

    # -- writing ---------------------------------------------------------------------------

    def add(self, id: str, vector: Any, *, label: str | None = None, metadata: dict[str, Any] | None = None,
            document: str | None = None, source: bytes | None = None, source_type: str | None = None,
            partition: Any = None, aux: dict[str, Any] | None = None) -> None:
        """Store or replace one item (see ``upsert``)."""
        self.upsert([id], [vector], labels=[label], metadata=[metadata or {}], documents=[document],
                    sources=[source], source_types=[source_type], partitions=[partition], aux=[aux or {}])

    @_locked
    def upsert(self, ids: Sequence[str], vectors: Any, *, labels: Sequence[str | None] | None = None,
               metadata: Sequence[dict[str, Any]] | None = None, documents: Sequence[str | None] | None = None,
               sources: Sequence[bytes | None] | None = None, source_types: Sequence[str | None] | None = None,
               partitions: Sequence[Any] | None = None, aux: Sequence[dict[str, Any]] | None = None) -> int:
        """Store or replace items by id, all in one transaction; returns how many. Sources
        (raw image or document bytes) stay in this file: exports never carry them."""
        spec = self.spec
        vecs = quantize.as_vectors(vectors, spec.dim, spec.metric == "cosine")
        n = len(ids)
        if len(vecs) != n:
            raise BadVector(f"{len(vecs)} vectors for {n} ids", "pass one vector per id")
        if len(set(ids)) != n or not all(isinstance(i, str) and i for i in ids):
            raise RetrievalError("ids must be non-empty strings, each once per call", "deduplicate the batch")
        labels = labels or [None] * n
        metadata = metadata or [{}] * n
        partitions = partitions or [None] * n
        if spec.partition and any(p is None for p in partitions):
            raise RetrievalError(f"collection '{spec.name}' is partitioned by '{spec.partition[0]}'",
                                 "give every item a partition value")
        meta_values = [self._metadata_row(m, k) for k, m in enumerate(metadata)]
        keep = spec.keep_sources
        documents = documents or [None] * n
        sources = sources if keep and sources else [None] * n
        source_types = source_types if keep and source_types else [None] * n
        aux_json = [json.dumps(a or {}) for a in (aux or [{}] * n)]
        with self._db:
            spec.version += 1
            self._db.execute("UPDATE collections SET version = ? WHERE name = ?", (spec.version, spec.name))
            existing = self._rowids(ids)
            top = self._db.execute(f"SELECT coalesce(max(rowid), 0) FROM {self._items}").fetchone()[0]
            rowids = []
            for i in ids:
                if i not in existing:
                    top += 1
                rowids.append(existing.get(i, top))
            self._db.executemany(
                f"INSERT OR REPLACE INTO {self._items} (rowid, id, label, metadata, part, aux, document, vector, "
                "source, source_type, version) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(rowids[k], ids[k], labels[k], json.dumps(metadata[k] or {}), partitions[k], aux_json[k],
                  documents[k], vecs[k].tobytes(), sources[k], source_types[k], spec.version) for k in range(n)])
            if existing:
                self._db.executemany(f"DELETE FROM {self._vec} WHERE rowid = ?", [(r,) for r in existing.values()])
                self._db.executemany(f"DELETE FROM {self._tomb} WHERE id = ?", [(i,) for i in existing])
            # The highest rowid stands in for the count (count(*) reads the whole table).
            if spec.needs_fit(top):
                self._refit()
            else:
                self._insert_vec(rowids, vecs, labels, meta_values, partitions)
        return n

    def _refit(self) -> None:
        """Choose the center (and int8 scale) from the stored vectors, then rebuild vec0 with it."""
        spec = self.spec
        sample = self._db.execute(f"SELECT vector FROM {self._items} ORDER BY random() LIMIT ?",
                                  (FIT_SAMPLE,)).fetchall()
        count = self._db.execute(f"SELECT count(*) FROM {self._items}").fetchone()[0]
        spec.fit(np.frombuffer(b"".join(r[0] for r in sample), np.float32).reshape(len(sample), spec.dim), count)
        self._db.execute(f"UPDATE collections SET ({SPEC_COLUMNS}) = ({SPEC_MARKS}) WHERE name = ?",
                         (*spec.row(), spec.name))
        self._db.execute(f"DROP TABLE IF EXISTS {self._vec}")
        create_vec_table(self._db, spec)
        self._index_all()

    def _insert_vec(self, rowids: Sequence[int], vecs: np.ndarray, labels: Sequence[str | None],
                    meta_values: Sequence[tuple[Any, ...]], partitions: Sequence[Any]) -> None:
        spec = self.spec
        cols = ["rowid", "embedding", "label", *spec.metadata]
        if spec.partition:
            cols.append(spec.partition[0])
        if spec.cells:
            cols.append("cell")
            # No centroids yet (nothing fitted): cell 0, until the first fit re-indexes.
            cells = spec.cells_of(vecs)[:, 0].tolist() if spec.centroids else [0] * len(rowids)
        stored = spec.compact(vecs)
        marks = ", ".join(["?", CONVERT[spec.storage], *["?"] * (len(cols) - 2)])
        rows = []
        for k, rowid in enumerate(rowids):
            row = [rowid, stored[k].tobytes(), labels[k] or "", *meta_values[k]]  # vec0 text holds no NULL
            if spec.partition:
                row.append(partitions[k])
            if spec.cells:
                row.append(cells[k])
            rows.append(row)
        self._db.executemany(f"INSERT INTO {self._vec} ({', '.join(cols)}) VALUES ({marks})", rows)

    def _metadata_row(self, meta: dict[str, Any], k: int) -> tuple[Any, ...]:
        unknown = set(meta) - set(self.spec.metadata)
        if unknown:
            raise RetrievalError(f"item {k}: metadata {', '.join(sorted(unknown))} is not a column of "
                                 f"'{self.spec.name}'", f"declare it when creating the collection "
                                 f"(columns: {', '.join(self.spec.metadata) or 'none'})")
        missing = [col for col in self.spec.metadata if meta.get(col) is None]
        if missing:  # vec0 metadata columns hold no NULLs
            raise RetrievalError(f"item {k}: metadata {', '.join(missing)} missing",
                                 "give every item a value for each metadata column")
        return tuple(self._typed(col, meta[col], f"item {k}") for col in self.spec.metadata)

    def _typed(self, col: str, value: Any, where: str) -> Any:
        kind = self._filters[col]
        want = COLUMN_TYPES[kind]
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise BadQuery(f"{where}: '{col}' is {kind}, not {type(value).__name__} ({value!r})",
                           f"pass a {kind} value")
        return int(value) if kind == "boolean" else value

    def _rowids(self, ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            part = list(ids[start:start + 500])
            found.update(self._db.execute(
                f"SELECT id, rowid FROM {self._items} WHERE id IN ({','.join('?' * len(part))})", part))
        return found

    @_locked
    def delete(self, ids: Iterable[str]) -> int:
        """Remove items by id (a tombstone remembers each for the next delta)."""
        ids = list(ids)
        with self._db:
            rows = self._rowids(ids)
            if not rows:
                return 0
            self.spec.version += 1
            self._db.execute("UPDATE collections SET version = ? WHERE name = ?", (self.spec.version, self.name))
            self._db.executemany(f"DELETE FROM {self._vec} WHERE rowid = ?", [(r,) for r in rows.values()])
            self._db.executemany(f"DELETE FROM {self._items} WHERE rowid = ?", [(r,) for r in rows.values()])
            self._db.executemany(f"INSERT OR REPLACE INTO {self._tomb} VALUES (?, ?)",
                                 [(i, self.spec.version) for i in rows])
        return len(rows)

    # -- reading ---------------------------------------------------------------------------

    @_locked
    def oldest(self, n: int) -> list[str]:
        """The ids of the ``n`` items stored first (to keep a collection bounded)."""
        return [r[0] for r in self._db.execute(f"SELECT id FROM {self._items} ORDER BY rowid LIMIT ?", (n,))]

    @_locked
    def query(self, vector: Any, k: int = 10, *, where: dict[str, Any] | None = None,
              oversample: int | None = None, probes: int | None = None) -> list[Neighbour]:
        """The ``k`` nearest items, nearest first, optionally filtered on metadata columns,
        the label and the partition key (equality). Distances are exact (float) in every mode.
        A collection with cells searches the ``probes`` cells nearest the query (default: a
        sixteenth of them, at least 2)."""
        spec = self.spec
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise BadQuery(f"k = {k!r} is out of range", f"use 1 to {MAX_K}")
        q = quantize.as_vectors(vector, spec.dim, spec.metric == "cosine")[0]
        clauses, args = [], []
        for col, value in (where or {}).items():
            if col not in self._filters:
                raise BadQuery(f"cannot filter on '{col}'",
                               f"filter on one of: {', '.join(self._filters)}")
            clauses.append(f" AND {col} = ?")
            args.append(self._typed(col, value, "filter"))
        if spec.cells and spec.centroids is not None:
            have = len(spec.centroids) // (4 * spec.dim)
            cells = spec.cells_of(q[None], probes or max(2, have // 16))[0].tolist()
            clauses.append(f" AND cell IN ({','.join('?' * len(cells))})")
            args += cells
        wanted = min(MAX_K, k * (oversample or OVERSAMPLE[spec.storage]))
        hits = self._db.execute(
            f"SELECT rowid, distance FROM {self._vec} WHERE embedding MATCH {CONVERT[spec.storage]} "
            f"AND k = ?{''.join(clauses)}", (spec.compact(q[None])[0].tobytes(), wanted, *args)).fetchall()
        if not hits:
            return []
        # With cells, each probed cell gave its own nearest: keep the nearest overall.
        hits = sorted(hits, key=lambda h: h[1])[:wanted]
        rows = self._rows([r for r, _ in hits])
        if spec.storage == "float":
            ranked = [(d, r) for r, d in hits]
        else:  # re-rank the compact candidates with their float vectors
            order = [r for r, _ in hits]
            floats = np.frombuffer(b"".join(rows[r][5] for r in order), np.float32).reshape(len(order), spec.dim)
            exact = quantize.distances(spec.metric, floats, q)
            ranked = sorted(zip(exact.tolist(), order))
        out = []
        for dist, rowid in ranked[:k]:
            rid, label, meta, document, aux, _ = rows[rowid]
            out.append(Neighbour(rid, float(dist), label, json.loads(meta), document, json.loads(aux)))
        return out

    def _rows(self, rowids: list[int]) -> dict[int, tuple[Any, ...]]:
        marks = ",".join("?" * len(rowids))
        return {r[0]: r[1:] for r in self._db.execute(
            f"SELECT rowid, id, label, metadata, document, aux, vector FROM {self._items} WHERE rowid IN ({marks})",
            rowids)}

    @_locked
    def get(self, id: str) -> dict[str, Any] | None:
        row = self._db.execute(f"SELECT id, label, metadata, document, aux, vector, source, source_type, part "
                               f"FROM {self._items} WHERE id = ?", (id,)).fetchone()
        if row is None:
            return None
        rid, label, meta, document, aux, vector, source, source_type, part = row
        return {"id": rid, "label": label, "metadata": json.loads(meta), "document": document,
                "aux": json.loads(aux), "vector": np.frombuffer(vector, np.float32).copy(), "source": source,
                "source_type": source_type, "partition": part}

    @_locked
    def stats(self) -> dict[str, Any]:
        spec = self.spec
        count, sources = self._db.execute(
            f"SELECT count(*), count(source) FROM {self._items}").fetchone()
        labels = dict(self._db.execute(f"SELECT coalesce(label, ''), count(*) FROM {self._items} GROUP BY 1"))
        return {"name": spec.name, "dim": spec.dim, "metric": spec.metric, "storage": spec.storage,
                "model": spec.model, "model_version": spec.model_version, "items": count,
                "with_sources": sources, "labels": labels, "version": spec.version,
                "metadata": spec.metadata, "partition": spec.partition}

    @_locked
    def changes(self, since: int = 0) -> tuple[list[tuple[str, bytes, str | None, dict[str, Any]]], list[str]]:
        """Items written after version ``since`` (id, float32 vector bytes, label, metadata) and
        the ids deleted after it."""
        rows = [(rid, vector, label, json.loads(meta)) for rid, vector, label, meta in self._db.execute(
            f"SELECT id, vector, label, metadata FROM {self._items} WHERE version > ? ORDER BY rowid", (since,))]
        deletes = [r[0] for r in self._db.execute(f"SELECT id FROM {self._tomb} WHERE version > ?", (since,))]
        return rows, deletes

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction around several calls: all of them are applied, or none."""
        with self._lock, self._db:
            yield

    # -- rebuilding --------------------------------------------------------------------------

    @_locked
    def reindex(self) -> int:
        """Rebuild the vec0 table from the items (after corruption, or to change nothing but
        the index). Returns the number of vectors indexed."""
        with self._db:
            self._db.execute(f"DROP TABLE IF EXISTS {self._vec}")
            create_vec_table(self._db, self.spec)
            return self._index_all()

    def _index_all(self) -> int:
        total = 0
        cursor = self._db.execute(f"SELECT rowid, label, metadata, part, vector FROM {self._items} ORDER BY rowid")
        while True:
            chunk = list(itertools.islice(cursor, 2000))
            if not chunk:
                break
            rowids = [r[0] for r in chunk]
            vecs = np.frombuffer(b"".join(r[4] for r in chunk), np.float32).reshape(len(chunk), self.spec.dim)
            metas = [self._metadata_row(json.loads(r[2]), k) for k, r in enumerate(chunk)]
            self._insert_vec(rowids, vecs, [r[1] for r in chunk], metas, [r[3] for r in chunk])
            total += len(chunk)
        return total

    @_locked
    def rebuild(self, embed: Callable[[bytes, str | None], Any], model: str, model_version: str) -> dict[str, int]:
        """Re-embed every item from its stored source with another model (or version), in one
        transaction. Items without a source cannot be re-embedded and are removed (counted)."""
        spec = self.spec
        rows = self._db.execute(f"SELECT rowid, source, source_type FROM {self._items}").fetchall()
        fresh = {rowid: np.asarray(embed(source, kind), np.float32).ravel()
                 for rowid, source, kind in rows if source is not None}
        dims = {v.size for v in fresh.values()}
        if len(dims) > 1:
            raise BadVector(f"the new model gave vectors of {sorted(dims)} dimensions", "check the embed function")
        dim = dims.pop() if dims else spec.dim
        with self._db:
            dropped = [r for r, s, _ in rows if s is None]
            self._db.executemany(f"DELETE FROM {self._items} WHERE rowid = ?", [(r,) for r in dropped])
            if fresh:
                vecs = quantize.as_vectors(np.stack(list(fresh.values())), dim, spec.metric == "cosine")
                spec.version += 1
                self._db.executemany(f"UPDATE {self._items} SET vector = ?, version = ? WHERE rowid = ?",
                                     [(v.tobytes(), spec.version, r) for r, v in zip(fresh, vecs)])
            spec.dim, spec.model, spec.model_version = dim, model, model_version
            spec.center, spec.int8_scale, spec.fitted, spec.centroids = None, None, 0, None
            if fresh and spec.needs_fit(len(fresh)):
                self._refit()
            else:
                self._db.execute(f"UPDATE collections SET ({SPEC_COLUMNS}) = ({SPEC_MARKS}) WHERE name = ?",
                                 (*spec.row(), spec.name))
                self._db.execute(f"DROP TABLE IF EXISTS {self._vec}")
                create_vec_table(self._db, spec)
                self._index_all()
        return {"reembedded": len(fresh), "dropped": len(dropped)}
