"""Vectors to the local retrieval index (through the sync worker's ``index_add``, which does
not wait for the write). ``put`` queues in this process; the sink's stage sends what waits
every ``FLUSH_S``, one call per collection. A full queue drops its oldest vectors, counted."""

from __future__ import annotations

import threading
from typing import Any

from edgeloop.runtime.errors import EdgeloopError

from ..seams import IndexVector
from .queue import BoundedQueues, QueueRule

KEY = "index"
FLUSH_S = 0.05


class IndexSink:
    def __init__(self, worker: Any, max_items: int = 2_000) -> None:
        self.worker = worker
        self.queue: BoundedQueues[IndexVector] = BoundedQueues({}, QueueRule(max_items, "drop_oldest"), wake_at=256)
        self.sent = 0
        self.errors = 0
        self.last_error = ""

    def put(self, vector: IndexVector) -> None:
        self.queue.put(vector.collection, vector)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.queue.wait(FLUSH_S)
            self.flush_once()

    def flush_once(self) -> None:
        batch = self.queue.take(4096)
        groups: dict[tuple[str, str, str], list[IndexVector]] = {}
        for _, v in batch:
            groups.setdefault((v.collection, v.model, v.version), []).append(v)
        for (collection, model, version), vectors in groups.items():
            try:
                self.worker.index_add(collection, model, version, [v.id for v in vectors],
                                      [v.vector for v in vectors], [v.label for v in vectors])
                self.sent += len(vectors)
            except EdgeloopError as exc:  # the worker just died: these vectors are lost, counted
                self.errors += len(vectors)
                self.last_error = str(exc)

    def stats(self) -> dict[str, Any]:
        return {"queued": len(self.queue), "sent": self.sent, "errors": self.errors,
                "dropped": sum(self.queue.dropped.values())}
