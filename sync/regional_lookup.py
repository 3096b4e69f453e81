"""Nearest neighbours, local first, then the regional index within the caller's deadline.

``RegionalLookup.nearest(vector, k, timeout_s)`` searches the device's own collection; when its
best match is farther than ``close`` it asks the regional index over MQTT 5 request/response
(the ``nearest`` task of ``edgeloop regional run --answer-nearest``) with the time left, and
caches the answer.

The freshness rule: a regional answer is reused for a later query whose vector is within
``near`` (cosine distance) of the one asked, for ``fresh_s`` seconds after it came; after that
the region is asked again. When the region does not answer in time, or the link is down, the
local answer is returned, marked with the reason: never a silent fallback. Only the query's
vector and the model's name leave the device.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop.runtime.errors import ConfigError
from edgeloop.runtime.retrieval import Collection
from edgeloop.runtime.watchdog.rungs import RungFailed, RungTimeout

from .offload import Offloader

NEAREST_TASK = "nearest"


@dataclass
class Nearest:
    """``source``: "local", "regional" or "regional-cache"; ``note``: why the region was not
    used, when it was wanted and not reached."""

    source: str
    neighbours: list[dict[str, Any]]
    note: str = ""
    age_s: float = 0.0  # of a cached regional answer


@dataclass
class _Cached:
    vector: np.ndarray
    at: float
    neighbours: list[dict[str, Any]] = field(default_factory=list)


class RegionalLookup:
    def __init__(self, collection: Collection, offloader: Offloader | None, *, close: float = 0.15,
                 near: float = 0.02, fresh_s: float = 600.0, cache_size: int = 512) -> None:
        spec = collection.spec
        if offloader is not None and (not spec.model or not spec.model_version):
            raise ConfigError(f"collection '{spec.name}' names no embedding model and version",
                              "the regional index keeps vectors by model: create the collection with model= "
                              "and model_version=")
        self.collection, self.offloader = collection, offloader
        self.close, self.near, self.fresh_s, self.cache_size = close, near, fresh_s, cache_size
        self._cache: OrderedDict[int, _Cached] = OrderedDict()
        self._next = 0
        self.asked = self.cached = self.unreached = 0

    def nearest(self, vector: Any, k: int = 5, timeout_s: float = 0.1) -> Nearest:
        start = time.monotonic()
        query = np.asarray(vector, np.float32).ravel()
        local = [{"id": n.id, "label": n.label, "distance": n.distance, "device": None}
                 for n in self.collection.query(query, k=k)]
        if local and local[0]["distance"] <= self.close:
            return Nearest("local", local)
        hit = self._lookup(query)
        if hit is not None:
            self.cached += 1
            return Nearest("regional-cache", hit.neighbours, age_s=time.monotonic() - hit.at)
        if self.offloader is None:
            return Nearest("local", local, note="no regional index configured")
        left = timeout_s - (time.monotonic() - start)
        if left <= 0.001:
            self.unreached += 1
            return Nearest("local", local, note="no time left to ask the regional index")
        spec = self.collection.spec
        try:
            self.asked += 1
            answer = self.offloader.request(NEAREST_TASK, query, left, params={
                "model": spec.model, "model_version": spec.model_version, "k": k})
        except (RungFailed, RungTimeout) as exc:
            self.unreached += 1
            return Nearest("local", local, note=str(exc))
        neighbours = list(answer.get("neighbours", []))
        self._keep(query, neighbours)
        return Nearest("regional", neighbours)

    def _lookup(self, query: np.ndarray) -> _Cached | None:
        now = time.monotonic()
        for key in [key for key, c in self._cache.items() if now - c.at > self.fresh_s]:
            del self._cache[key]  # past the freshness rule
        if not self._cache:
            return None
        keys = list(self._cache)
        vectors = np.stack([self._cache[key].vector for key in keys])
        q = query / (np.linalg.norm(query) or 1.0)
        distances = 1.0 - vectors @ q
        best = int(np.argmin(distances))
        if distances[best] > self.near:
            return None
        self._cache.move_to_end(keys[best])
        return self._cache[keys[best]]

    def _keep(self, query: np.ndarray, neighbours: list[dict[str, Any]]) -> None:
        self._cache[self._next] = _Cached(query / (np.linalg.norm(query) or 1.0), time.monotonic(), neighbours)
        self._next += 1
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        return {"asked": self.asked, "from_cache": self.cached, "unreached": self.unreached,
                "cached_answers": len(self._cache), "fresh_s": self.fresh_s, "near": self.near}
