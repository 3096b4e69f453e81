"""A bounded in-process queue per stream, the hot path's side of every sink.

``put`` appends under a lock and returns (about a microsecond); a full stream follows its
rule: ``drop_oldest`` (keep the newest: inferences, telemetry) or ``drop_newest`` (keep what is
queued: hard examples); a stream may also be held to ``max_per_s`` (a token bucket: hard
examples are for curation, not one per frame). Drops are counted per stream, by reason. ``take`` hands everything queued, in
arrival order per stream, to the sink's stage; ``give_back`` returns a batch that could not be
stored to the front, within the same bounds."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class QueueRule:
    max_items: int = 10_000
    on_full: str = "drop_oldest"  # or "drop_newest"
    max_per_s: float | None = None  # a rate past which new items are dropped (a burst of one second)


class BoundedQueues(Generic[T]):
    def __init__(self, rules: dict[str, QueueRule], default: QueueRule = QueueRule(), wake_at: int = 512) -> None:
        self.rules = rules
        self.default = default
        self.wake_at = wake_at  # this many waiting wake the stage before its flush interval
        self._queues: dict[str, deque[tuple[float, T]]] = {}
        self.dropped: dict[str, int] = {}
        self.accepted: dict[str, int] = {}
        self.over_rate: dict[str, int] = {}
        self._tokens: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._size = 0
        self._cond = threading.Condition(threading.Lock())

    def put(self, key: str, item: T, build: Callable[[], T] | None = None) -> bool:
        """Queue ``item`` (or what ``build()`` makes, called only once the rules admit it); False
        when the rule dropped it (the newest) instead."""
        with self._cond:
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = deque()
                self.dropped.setdefault(key, 0)
                self.accepted.setdefault(key, 0)
            rule = self.rules.get(key, self.default)
            if rule.max_per_s is not None and not self._take_token(key, rule.max_per_s):
                self.over_rate[key] = self.over_rate.get(key, 0) + 1
                return False
            if len(q) >= rule.max_items:
                self.dropped[key] += 1
                if rule.on_full == "drop_newest":
                    return False
                q.popleft()
                self._size -= 1
            q.append((time.monotonic(), build() if build is not None else item))
            self.accepted[key] += 1
            self._size += 1
            if self._size >= self.wake_at:
                self._cond.notify()
        return True

    def _take_token(self, key: str, rate: float) -> bool:
        now = time.monotonic()
        tokens, when = self._tokens.get(key, (rate, now))
        tokens = min(rate, tokens + (now - when) * rate)  # a burst of up to one second's worth
        if tokens < 1.0:
            self._tokens[key] = (tokens, now)
            return False
        self._tokens[key] = (tokens - 1.0, now)
        return True

    def wait(self, timeout_s: float) -> None:
        """Until something waits and ``timeout_s`` passed, or ``wake_at`` items wait."""
        with self._cond:
            if self._size < self.wake_at:
                self._cond.wait(timeout_s)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def take(self, max_items: int) -> list[tuple[str, T]]:
        out: list[tuple[str, T]] = []
        with self._cond:
            for key, q in self._queues.items():
                while q and len(out) < max_items:
                    out.append((key, q.popleft()[1]))
            self._size -= len(out)
        return out

    def give_back(self, batch: list[tuple[str, T]]) -> None:
        """Put a batch that was not stored back at the front; the rules still bound it."""
        now = time.monotonic()
        with self._cond:
            for key, item in reversed(batch):
                q = self._queues.setdefault(key, deque())
                rule = self.rules.get(key, self.default)
                if len(q) >= rule.max_items:
                    self.dropped[key] = self.dropped.get(key, 0) + 1
                    continue
                q.appendleft((now, item))
                self._size += 1

    def __len__(self) -> int:
        return self._size

    def oldest_age_s(self) -> float:
        with self._cond:
            firsts = [q[0][0] for q in self._queues.values() if q]
        return time.monotonic() - min(firsts) if firsts else 0.0

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {key: {"queued": len(q), "accepted": self.accepted.get(key, 0), "dropped": self.dropped.get(key, 0),
                          "over_rate": self.over_rate.get(key, 0)} for key, q in self._queues.items()}
