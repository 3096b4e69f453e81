"""Index deltas: what a device shares of its index, and what it takes from the regional edge.

A delta carries ids, float32 vectors, labels and the metadata keys the caller chose, plus the
ids deleted, between two collection versions, tied to the embedding model and version that
made the vectors. It never carries sources or documents: raw data stays on the device.
Import applies a delta in one transaction, and refuses one made by another model or version.
"""

from __future__ import annotations

from typing import Any, Sequence

import msgpack
import numpy as np

from .collection import Collection
from .errors import BadDelta, RetrievalError

KIND = "edgeloop.index-delta"
VERSION = 1
MAX_DELTA_BYTES = 256 * 1024 * 1024


def export_delta(collection: Collection, *, since: int = 0, metadata_keys: Sequence[str] = ()) -> bytes:
    """The changes after version ``since`` (0: everything) as msgpack bytes."""
    return export_delta_chunks(collection, since=since, metadata_keys=metadata_keys)[1][0]


def export_delta_chunks(collection: Collection, *, since: int = 0, metadata_keys: Sequence[str] = (),
                        labels: bool = True, max_bytes: int = 0) -> tuple[int, list[bytes]]:
    """(the collection's version, the changes after ``since`` as deltas of at most about
    ``max_bytes`` each; 0: one delta). Each chunk is a whole delta stamped with that version,
    the deletes in the last; ``labels=False`` leaves the labels out (ids and vectors only)."""
    spec = collection.spec
    unknown = set(metadata_keys) - set(spec.metadata)
    if unknown:
        raise RetrievalError(f"metadata {', '.join(sorted(unknown))} is not a column of '{spec.name}'",
                             f"choose from: {', '.join(spec.metadata) or 'none'}")
    with collection.atomic():  # the rows and the version they are stamped with, as one
        rows, deletes = collection.changes(since)
        version = collection.spec.version
    items = [{"id": rid, "vector": vector, "label": label if labels else None,
              "metadata": {k: meta[k] for k in metadata_keys if k in meta}} for rid, vector, label, meta in rows]
    if max_bytes:
        per_chunk = max(1, (max_bytes - 1024) // (64 + 4 * spec.dim))
        per_deletes = max(1, (max_bytes - 1024) // 128)  # an id takes well under 128 bytes
        groups = [(items[n:n + per_chunk], []) for n in range(0, len(items), per_chunk)] + \
                 [([], deletes[n:n + per_deletes]) for n in range(0, len(deletes), per_deletes)]
    else:
        groups = [(items, deletes)]
    return version, [msgpack.packb({"v": VERSION, "kind": KIND, "collection": spec.name, "model": spec.model,
                                    "model_version": spec.model_version, "dim": spec.dim, "metric": spec.metric,
                                    "since": since, "version": version, "items": chunk, "deletes": gone},
                                   use_bin_type=True) for chunk, gone in groups or [([], [])]]


def read_delta(data: bytes) -> dict[str, Any]:
    """Decode and check a delta's shape; BadDelta names what is wrong."""
    if len(data) > MAX_DELTA_BYTES:
        raise BadDelta(f"delta is {len(data)} bytes, over the {MAX_DELTA_BYTES}-byte limit", "send smaller deltas")
    try:
        delta = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BadDelta(f"delta does not decode: {exc}", "check the sender") from exc
    if not isinstance(delta, dict) or delta.get("kind") != KIND:
        raise BadDelta("this is not an edgeloop index delta", "export one with `edgeloop index export`")
    if delta.get("v") != VERSION:
        raise BadDelta(f"delta format {delta.get('v')!r} is not {VERSION}", "upgrade the older side")
    for key, kind in (("collection", str), ("dim", int), ("items", list), ("deletes", list), ("version", int)):
        if not isinstance(delta.get(key), kind):
            raise BadDelta(f"delta field '{key}' is missing or not {kind.__name__}", "check the sender")
    for n, item in enumerate(delta["items"]):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not isinstance(item.get("vector"), bytes):
            raise BadDelta(f"delta item {n} lacks an id or a vector", "check the sender")
        if len(item["vector"]) != 4 * delta["dim"]:
            raise BadDelta(f"delta item {n}: vector of {len(item['vector']) // 4} dimensions, the delta says "
                           f"{delta['dim']}", "check the sender")
    return delta


def import_into(index: Any, data: bytes, storage: str = "float") -> tuple[str, dict[str, int]]:
    """Apply a delta to its collection in ``index`` (a ``VectorIndex``), creating the collection
    from the delta (model, version, dimension, metric, metadata columns) when it is new."""
    delta = read_delta(data)
    name = delta["collection"]
    if name not in index.names():
        columns: dict[str, str] = {}
        for item in delta["items"]:
            for key, value in (item.get("metadata") or {}).items():
                columns.setdefault(key, {bool: "boolean", int: "integer", float: "float"}.get(type(value), "text"))
        index.create(name, delta["dim"], metric=delta.get("metric", "cosine"), storage=storage,
                     model=delta.get("model"), model_version=delta.get("model_version"), metadata=columns)
    return name, import_delta(index.collection(name), data)


def import_delta(collection: Collection, data: bytes) -> dict[str, int]:
    """Apply a delta atomically; refuses one for another collection, model or model version."""
    delta = read_delta(data)
    spec = collection.spec
    if delta["collection"] != spec.name:
        raise BadDelta(f"delta is for collection '{delta['collection']}', not '{spec.name}'",
                       "import it into the collection it was exported from")
    if (delta.get("model"), delta.get("model_version")) != (spec.model, spec.model_version) or delta["dim"] != spec.dim:
        raise BadDelta(f"delta was made by {delta.get('model')} {delta.get('model_version')} "
                       f"({delta['dim']} dimensions); '{spec.name}' holds {spec.model} {spec.model_version} "
                       f"({spec.dim})", "rebuild one side with the same embedding model first")
    items = delta["items"]
    with collection.atomic():
        if items:
            collection.upsert([i["id"] for i in items],
                              np.frombuffer(b"".join(i["vector"] for i in items), np.float32).reshape(len(items), spec.dim),
                              labels=[i.get("label") for i in items], metadata=[i.get("metadata") or {} for i in items])
        deleted = collection.delete(delta["deletes"]) if delta["deletes"] else 0
    return {"upserted": len(items), "deleted": deleted}
