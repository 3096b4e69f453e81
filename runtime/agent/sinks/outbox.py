"""Records to the durable outbox (a ``sync.RecordSink``: the sync worker, or an ``Outbox``).

The hot path calls ``put`` (or ``enqueue``/``enqueue_many``, the outbox's own names, for the
closed loop): the record is queued in this process and the call returns. The sink's stage
(``run``) hands what is queued to the store every ``FLUSH_S`` (or at once past 512 records) with
``enqueue_then``, at most ``MAX_IN_FLIGHT`` batches unconfirmed; durability is confirmed when
the store's group commit calls back (``confirmed``).

A kill -9 loses at most what was queued or in flight and not yet confirmed: the records of
the last flush interval plus one commit (bounded by the queues' rules; measured by
``edgeloop bench agent``, ``kill_loss_*``). A full disk (``OutboxFull``) or a sync worker
that died gives the batch back to the front of the queue and tries again after a pause, said
in the log once per episode and counted; the camera never stops for it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable

from edgeloop.runtime.errors import EdgeloopError

from ..seams import Record
from .queue import BoundedQueues, QueueRule

log = logging.getLogger("edgeloop.agent")

KEY = "outbox"
FLUSH_S = 0.005
MAX_BATCH = 4096
MAX_IN_FLIGHT = 2
RETRY_S = 0.5

# What a full queue does, per stream: the bulk keeps its newest; hard examples keep what waits,
# at most 2 a second (a model that fits the scene badly would make every frame one).
RULES = {
    "inferences": QueueRule(50_000, "drop_oldest"),
    "events": QueueRule(20_000, "drop_oldest"),
    "telemetry": QueueRule(2_000, "drop_oldest"),
    "mcu-events": QueueRule(5_000, "drop_oldest"),
    "hard-examples": QueueRule(256, "drop_newest", max_per_s=2.0),
}


class OutboxSink:
    def __init__(self, store: Any, rules: dict[str, QueueRule] = RULES) -> None:
        self.store = store
        self.queue: BoundedQueues[tuple[Any, str | None]] = BoundedQueues(rules)
        self.confirmed: dict[str, int] = {}
        self.failed_batches = 0
        self.last_error = ""
        self._in_flight = 0
        self._unconfirmed = 0
        self._lock = threading.Condition()
        self._trouble = False
        self._retry_at = 0.0

    # -- the hot path --------------------------------------------------------------------

    def put(self, record: Record) -> None:
        body = record.body
        if callable(body):  # made only if the stream's rules take it (a rate-limited hard example)
            self.queue.put(record.stream, None, lambda: (body(), record.trace))  # type: ignore[arg-type]
        else:
            self.queue.put(record.stream, (body, record.trace))

    def enqueue(self, stream: str, body: Any, *, trace: str | None = None, **_: Any) -> None:
        self.queue.put(stream, (body, trace))

    def enqueue_many(self, items: Iterable[tuple[str, Any]], *, trace: str | None = None, **_: Any) -> None:
        for stream, body in items:
            self.queue.put(stream, (body, trace))

    # -- the stage ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.queue.wait(FLUSH_S)
            self.flush_once()

    def flush_once(self) -> int:
        """Hand one batch to the store if a slot is free; returns how many records went."""
        if time.monotonic() < self._retry_at:
            return 0
        with self._lock:
            if self._in_flight >= MAX_IN_FLIGHT:
                self._lock.wait(0.05)
                return 0
        batch = self.queue.take(MAX_BATCH)
        if not batch:
            return 0
        with self._lock:
            self._in_flight += 1
            self._unconfirmed += len(batch)
        items = [(stream, body, trace) for stream, (body, trace) in batch]
        try:
            self.store.enqueue_then(items, lambda result: self._settled(batch, result))
        except EdgeloopError as exc:  # not even sent (the worker just died): back to the queue
            self._settled(batch, exc)
        return len(batch)

    def _settled(self, batch: list[tuple[str, Any]], result: Any) -> None:
        with self._lock:
            self._in_flight -= 1
            self._unconfirmed -= len(batch)
            self._lock.notify_all()
        if isinstance(result, BaseException):
            self.failed_batches += 1
            self.last_error = f"{type(result).__name__}: {result}"
            if not self._trouble:
                log.error("outbox: %d record(s) not stored yet (%s); they wait in memory and are retried "
                          "every %.1f s", len(batch), self.last_error, RETRY_S)
            self._trouble = True
            self._retry_at = time.monotonic() + RETRY_S
            self.queue.give_back(batch)
            return
        if self._trouble:
            log.warning("outbox: storing again")
            self._trouble = False
        for stream, _ in batch:
            self.confirmed[stream] = self.confirmed.get(stream, 0) + 1

    def pending(self) -> int:
        """Records accepted and not yet confirmed durable (queued or in flight)."""
        return len(self.queue) + self._unconfirmed

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Hand on everything queued and wait for it to be confirmed (at stop)."""
        deadline = time.monotonic() + timeout_s
        self._retry_at = 0.0
        while self.pending() and time.monotonic() < deadline:
            if not self.flush_once():
                with self._lock:
                    self._lock.wait(0.01)
        return self.pending() == 0

    def stats(self) -> dict[str, Any]:
        streams = self.queue.stats()
        for stream, st in streams.items():
            st["confirmed"] = self.confirmed.get(stream, 0)
        return {"streams": streams, "pending": self.pending(), "in_flight_batches": self._in_flight,
                "failed_batches": self.failed_batches, "last_error": self.last_error,
                "oldest_queued_s": round(self.queue.oldest_age_s(), 3)}
