"""The regional index: the devices' index deltas in pgvector (HNSW), one table per embedding
model, for the devices' queries that their own index cannot answer.

Deltas come up as outbox records on the ``index`` stream and are applied in the receiver's
commit, in the same transaction as the records themselves (``PostgresStore``). Applying is
idempotent and order-proof: each row keeps the version of the delta that wrote it, and an
older delta (a resend that arrives after a newer one) changes nothing; a delete leaves a
tombstone with its version, so an older delta cannot bring the item back.

A table per (model, model version, dimension): vectors of different models are not
comparable, and a query names the model that made its vector. ``device`` is part of the key:
two devices may use the same item id.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import msgpack
import numpy as np
import psycopg

from edgeloop.runtime.retrieval.delta import read_delta
from edgeloop.runtime.retrieval.errors import BadDelta


log = logging.getLogger("edgeloop.regional")

EF_SEARCH = 40  # HNSW candidates per query: recall against time (pgvector's default is 40)
MAX_K = 100
MAX_DIM = 2000  # pgvector's HNSW takes at most this many dimensions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS index_models (
    model text NOT NULL, model_version text NOT NULL, dim integer NOT NULL, metric text NOT NULL,
    tbl text NOT NULL UNIQUE, PRIMARY KEY (model, model_version, dim));
"""
_OPS = {"cosine": ("vector_cosine_ops", "<=>"), "l2": ("vector_l2_ops", "<->")}


class PgvectorMissing(Exception):
    """The server has no ``vector`` extension."""


class RegionalIndex:
    """On one PostgreSQL connection (the store's): ``ensure(conn)`` once, ``apply(cur, device,
    body)`` inside a commit, ``nearest(conn, …)`` for a query."""

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str, int], tuple[str, str]] = {}  # -> (table, metric)

    @staticmethod
    def ensure(conn: psycopg.Connection) -> None:
        """The extension and the registry (raises ``PgvectorMissing`` when the server lacks it)."""
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(4143)")
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute(_SCHEMA)
        except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile) as exc:
            raise PgvectorMissing(str(exc).strip().splitlines()[0]) from exc  # one line: no DETAIL/HINT

    def _table(self, cur: psycopg.Cursor, model: str, version: str, dim: int, metric: str) -> str:
        key = (model, version, dim)
        known = self._tables.get(key)
        if known is None:
            row = cur.execute("SELECT tbl, metric FROM index_models WHERE model = %s AND model_version = %s "
                              "AND dim = %s", key).fetchone()
            if row is None:
                tbl = "index_" + hashlib.sha256(f"{model}\0{version}\0{dim}".encode()).hexdigest()[:16]
                ops = _OPS[metric][0]
                cur.execute(f"CREATE TABLE IF NOT EXISTS {tbl} (device text NOT NULL, collection text NOT NULL, "
                            "id text NOT NULL, version bigint NOT NULL, deleted boolean NOT NULL DEFAULT false, "
                            f"label text, metadata jsonb, embedding vector({dim}), received double precision, "
                            "PRIMARY KEY (device, collection, id))")
                cur.execute(f"CREATE INDEX IF NOT EXISTS {tbl}_hnsw ON {tbl} USING hnsw (embedding {ops})")
                cur.execute("INSERT INTO index_models VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            (model, version, dim, metric, tbl))
                return tbl  # not remembered: this transaction may still roll back
            known = self._tables[key] = (row[0], row[1])
        return known[0]

    def apply(self, cur: psycopg.Cursor, device: str, body: bytes, received: float) -> str | None:
        """Apply one record's delta; None, or why it was refused (the commit goes on)."""
        try:
            data = msgpack.unpackb(body, raw=False)
            delta = read_delta(data if isinstance(data, bytes) else b"")
        except (BadDelta, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            return f"index delta refused: {getattr(exc, 'problem', exc)}"
        metric = delta.get("metric", "cosine")
        model, version = delta.get("model"), delta.get("model_version")
        if metric not in _OPS or not isinstance(model, str) or not model or not isinstance(version, str):
            return "index delta refused: it names no embedding model and version, or an unknown metric"
        if not 0 < delta["dim"] <= MAX_DIM:
            return f"index delta refused: {delta['dim']} dimensions (HNSW takes 1 to {MAX_DIM})"
        vectors = np.frombuffer(b"".join(item["vector"] for item in delta["items"]), np.float32)
        if not np.isfinite(vectors).all():
            return "index delta refused: a vector holds NaN or infinity"
        tbl = self._table(cur, model, version, delta["dim"], metric)
        collection, stamp = delta["collection"], delta["version"]
        rows = [(device, collection, item["id"], stamp, item.get("label"), json.dumps(item.get("metadata") or {}),
                 _literal(item["vector"]), received) for item in delta["items"]]
        if rows:
            cur.executemany(
                f"INSERT INTO {tbl} (device, collection, id, version, label, metadata, embedding, received) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s::vector, %s) ON CONFLICT (device, collection, id) DO UPDATE "
                "SET version = excluded.version, deleted = false, label = excluded.label, "
                "metadata = excluded.metadata, embedding = excluded.embedding, received = excluded.received "
                f"WHERE {tbl}.version < excluded.version", rows)
        gone = [(device, collection, rid, stamp, received) for rid in delta["deletes"] if isinstance(rid, str)]
        if gone:
            cur.executemany(
                f"INSERT INTO {tbl} (device, collection, id, version, deleted, received) VALUES (%s, %s, %s, %s, "
                "true, %s) ON CONFLICT (device, collection, id) DO UPDATE SET version = excluded.version, "
                f"deleted = true, label = NULL, metadata = NULL, embedding = NULL, received = excluded.received "
                f"WHERE {tbl}.version < excluded.version", gone)
        return None

    def nearest(self, conn: psycopg.Connection, model: str, version: str, vector: np.ndarray, k: int = 10,
                collection: str | None = None) -> list[dict[str, Any]]:
        """The ``k`` nearest live items over every device, for a vector of ``model`` ``version``."""
        vector = np.asarray(vector, np.float32).ravel()
        row = conn.execute("SELECT tbl, metric FROM index_models WHERE model = %s AND model_version = %s AND dim = %s",
                           (model, version, vector.size)).fetchone()
        if row is None:
            return []
        tbl, metric = row
        op = _OPS[metric][1]
        where = "NOT deleted" + (" AND collection = %s" if collection else "")
        with conn.transaction():
            conn.execute(f"SET LOCAL hnsw.ef_search = {max(EF_SEARCH, k)}")
            q = _literal(vector.tobytes())
            found = conn.execute(
                f"SELECT device, collection, id, label, embedding {op} %s::vector AS distance FROM {tbl} "
                f"WHERE {where} ORDER BY embedding {op} %s::vector LIMIT %s",
                (q, *([collection] if collection else []), q, min(k, MAX_K))).fetchall()
        return [{"device": d, "collection": c, "id": i, "label": lb, "distance": float(dist)}
                for d, c, i, lb, dist in found]


def _literal(vector: bytes) -> str:
    """pgvector's text form of float32 bytes."""
    return "[" + ",".join(repr(float(x)) for x in np.frombuffer(vector, np.float32)) + "]"


def nearest_answerer(store: Any) -> Any:
    """The responder's ``nearest`` task on ``store`` (a ``PostgresStore``): params ``model``,
    ``model_version``, ``k`` (1 to 100), optionally ``collection``; the input a vector (.npy)."""
    from edgeloop.runtime.retrieval.errors import BadQuery

    def answer(vector: Any, params: dict[str, Any]) -> dict[str, Any]:
        model, version, k = params.get("model"), params.get("model_version"), params.get("k", 10)
        collection = params.get("collection")
        if not isinstance(model, str) or not isinstance(version, str):
            raise BadQuery("a nearest query names the model and model_version that made its vector",
                           "send params {model, model_version, k}")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise BadQuery(f"k = {k!r} is out of range", f"use 1 to {MAX_K}")
        if collection is not None and not isinstance(collection, str):
            raise BadQuery("collection is a name", "send a string, or leave it out for every collection")
        v = np.asarray(vector)
        if v.dtype.kind not in "fiu" or v.size == 0 or v.size > MAX_DIM or not np.isfinite(v).all():
            raise BadQuery(f"the query is not a finite numeric vector of 1 to {MAX_DIM} values",
                           "send numpy.save bytes of a float32 vector (kind 'npy')")
        return {"neighbours": store.nearest(model, version, v.astype(np.float32), k, collection)}

    return answer
