"""The rungs of a degradation ladder: a model on deadline-bound worker threads, a cache of
recent answers, a configured default. Each raises ``RungTimeout`` or ``RungFailed`` when it
cannot answer in time."""

from __future__ import annotations

import _thread
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np


class RungTimeout(Exception):
    """The rung did not answer within the time it was given."""


class RungFailed(Exception):
    """The rung answered with an error, or cannot answer this input."""


class RungMiss(RungFailed):
    """The rung has no answer for this input (the cache, the index's neighbours): the next rung
    answers, and it is no sign of trouble: the ladder does not step down for it."""


class Rung:
    name = "rung"
    degraded = False  # answers from this rung are marked degraded
    expected_s: float | None = 0.0  # how long it usually takes (the ladder keeps time for it); None: not known yet

    def serve(self, source: Any, timeout_s: float) -> Any:
        raise NotImplementedError

    def observe(self, took_s: float) -> None:
        """Fold one answer's time into ``expected_s`` (an exponential average)."""
        self.expected_s = took_s if self.expected_s is None else 0.9 * self.expected_s + 0.1 * took_s

    def close(self) -> None:
        pass


class _Job:
    __slots__ = ("source", "done", "result", "error", "abandoned")

    def __init__(self, source: Any) -> None:
        self.source = source
        self.done = _thread.allocate_lock()  # held until the answer is in: the cheapest hand-off
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned = False


class ModelRung(Rung):
    """A loaded model (``infer(source)``) served by worker threads. A worker whose call outlives
    ``hang_s`` is abandoned and replaced: its interpreter (one per thread) goes with it and is
    never used again. More than ``max_stuck`` abandoned workers at once, or ``max_queue`` jobs
    waiting, and the rung refuses at once (``RungFailed``) instead of growing threads or a
    queue, until they come back.

    ``serve_inline`` runs the model on the caller's own thread instead: no hand-off to a worker
    (55-70 µs a call here, more than a small model's invoke), but no deadline either. A caller
    that can be replaced (a supervised stage) uses it; a call that outlives ``hang_s`` is
    reported to ``on_hang`` (the ladder steps down) and its thread is counted as stuck."""

    def __init__(self, name: str, model: Any, *, workers: int = 1, hang_s: float = 1.0, max_stuck: int = 4,
                 max_queue: int = 16, degraded: bool = False, top_k: int = 5) -> None:
        self.name = name
        self.model = model
        self.degraded = degraded
        self.hang_s = hang_s
        self.max_stuck = max_stuck
        self.max_queue = max_queue  # jobs waiting for a worker (timed-out ones included) before refusing
        self.top_k = top_k
        self.expected_s: float | None = None
        self.abandoned = 0  # workers given up on, ever
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy: dict[threading.Thread, float] = {}  # worker -> when its current call began
        self._stuck: set[threading.Thread] = set()
        self._workers = 0
        self._inline: set[threading.Thread] = set()  # callers running the model themselves
        self.on_hang: Any = None  # called (with the reason) when a call outlives hang_s
        self._closed = False
        for _ in range(workers):
            self._spawn()
        threading.Thread(target=self._watch, name=f"{name}-watch", daemon=True).start()

    def _spawn(self) -> None:
        self._workers += 1
        threading.Thread(target=self._work, name=f"{self.name}-worker", daemon=True).start()

    def _work(self) -> None:
        me = threading.current_thread()
        busy, stuck = self._busy, self._stuck
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.abandoned:
                continue
            start = time.monotonic()
            busy[me] = start
            try:
                job.result = self.model.infer(job.source, self.top_k)
            except Exception as exc:  # the model's error goes to the waiting request
                job.error = exc
            job.done.release()
            del busy[me]
            if me in stuck:  # given up on while it hung: leave, interpreter and all
                with self._lock:
                    stuck.discard(me)
                    self._workers -= 1
                return
            self.observe(time.monotonic() - start)

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(min(0.05, self.hang_s / 4))
            now = time.monotonic()
            hung = []
            with self._lock:
                for worker, began in list(self._busy.items()):
                    if worker not in self._stuck and now - began > self.hang_s:
                        self._stuck.add(worker)
                        self.abandoned += 1
                        if worker in self._inline:
                            hung.append(worker.name)
                        else:
                            self._spawn()
            for name in hung:  # outside the lock: the ladder logs and records the step
                if self.on_hang is not None:
                    self.on_hang(f"'{self.name}' hung for more than {self.hang_s:g} s in {name}")

    def serve(self, source: Any, timeout_s: float) -> Any:
        if len(self._stuck) >= self.max_stuck:
            raise RungFailed(f"{len(self._stuck)} workers of '{self.name}' are stuck in invoke")
        if self._jobs.qsize() >= self.max_queue:  # never an unbounded queue, even while hung
            raise RungFailed(f"'{self.name}' has {self._jobs.qsize()} jobs waiting")
        job = _Job(source)
        self._jobs.put(job)
        if not job.done.acquire(timeout=max(0.0, timeout_s)):
            job.abandoned = True
            raise RungTimeout(f"'{self.name}' did not answer within {timeout_s * 1000:.1f} ms")
        if job.error is not None:
            raise RungFailed(f"'{self.name}': {type(job.error).__name__}: {job.error}")
        return job.result

    def serve_inline(self, source: Any) -> Any:
        """The model on this thread (see the class docstring); RungFailed for its errors and while
        too many calls are stuck, RungTimeout for an answer that came after it was given up on."""
        if len(self._stuck) >= self.max_stuck:
            raise RungFailed(f"{len(self._stuck)} calls of '{self.name}' are stuck in invoke")
        me = threading.current_thread()
        start = time.monotonic()
        with self._lock:
            self._inline.add(me)
            self._busy[me] = start
        try:
            result = self.model.infer(source, self.top_k)
        except Exception as exc:
            raise RungFailed(f"'{self.name}': {type(exc).__name__}: {exc}") from exc
        finally:
            with self._lock:
                self._busy.pop(me, None)
                self._inline.discard(me)
                was_stuck = me in self._stuck
                self._stuck.discard(me)
        if was_stuck:
            raise RungTimeout(f"'{self.name}' answered after {time.monotonic() - start:.1f} s, given up on")
        self.observe(time.monotonic() - start)
        return result

    def close(self) -> None:
        self._closed = True
        for _ in range(self._workers):
            self._jobs.put(None)


def input_key(source: Any) -> bytes:
    """A key that near-identical inputs share: an 8x8 grey thumbnail at 4 bits a pixel."""
    key = getattr(source, "cache_key", None)  # a PreparedFrame made it once, from its own tensor
    if key is not None:
        return key
    if isinstance(source, (str, Path)):
        from PIL import Image

        source = Image.open(source)
    if hasattr(source, "convert"):  # a PIL image
        thumb = np.asarray(source.convert("L").resize((8, 8)), np.float32)
    else:  # an array (H, W[, C]) or a batch of one: 8x8 samples of its first channel, cheap on the hot path
        a = np.asarray(source)
        while a.ndim > 3 or (a.ndim == 3 and a.shape[0] == 1 and a.shape[-1] not in (1, 3, 4)):
            a = a[0]
        a = a[..., 0] if a.ndim == 3 else a
        h, w = a.shape
        thumb = a[:: max(1, h // 8), :: max(1, w // 8)][:8, :8].astype(np.float32)
    return (thumb / 16).astype(np.uint8).tobytes() + bytes(thumb.shape)


class CacheRung(Rung):
    """The last answer the better rungs gave for a near-identical input."""

    name = "cache"
    degraded = True

    def __init__(self, size: int = 256) -> None:
        self._answers: OrderedDict[bytes, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def remember(self, source: Any, result: Any) -> None:
        key = input_key(source)
        with self._lock:
            self._answers[key] = result
            self._answers.move_to_end(key)
            while len(self._answers) > self._size:
                self._answers.popitem(last=False)

    def serve(self, source: Any, timeout_s: float) -> Any:
        with self._lock:
            result = self._answers.get(input_key(source))
        if result is None:
            raise RungMiss("no cached answer for this input")
        return result


class NeighbourRung(Rung):
    """The label of the nearest stored examples in the retrieval index (an ``Imprinter``):
    an answer for an input never seen, when something like it was; ``unknown`` fails over."""

    name = "neighbours"
    degraded = True

    def __init__(self, imprinter: Any) -> None:
        self.imprinter = imprinter
        self.expected_s = None

    def serve(self, source: Any, timeout_s: float) -> Any:
        start = time.monotonic()
        decision = self.imprinter.classify(source)
        self.observe(time.monotonic() - start)
        if not decision.known:
            raise RungMiss(f"nothing near enough in the index (nearest {decision.distance:.3f})")
        return decision


class DefaultRung(Rung):
    """A configured answer, always available, always marked degraded."""

    name = "default"
    degraded = True

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def serve(self, source: Any, timeout_s: float) -> Any:
        return self.answer
