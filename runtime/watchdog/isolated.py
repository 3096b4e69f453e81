"""Isolated mode: a model in a worker process, tensors in shared memory.

For delegates that can wedge a whole process (a driver stuck in an ioctl), a thread cannot be
abandoned safely: the process is. ``IsolatedModelRung`` starts a child that loads the model,
tells its tensor specs, and then, for each request, reads the input from a shared-memory block
the parent filled, invokes, and writes the outputs into shared-memory blocks the parent reads.
Only a one-byte-ish "go"/"done" goes through the pipe. A child that does not answer within
``hang_s`` is killed and a new one started; the request goes to the next rung.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from multiprocessing import shared_memory
from typing import Any, Sequence

import numpy as np

from .rungs import Rung, RungFailed, RungTimeout


def _child(conn: Any, model_ref: str, manifests: Sequence[str], backend: str, threads: int) -> None:
    """The worker process: load, report specs, then serve until told to stop."""
    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(backend=backend, num_threads=threads), ModelStore(list(manifests)))
    model = engine.load(model_ref)
    conn.send((model.inputs, model.outputs, model.entry))
    names = conn.recv()  # the parent's shared-memory blocks: input, then outputs
    blocks = [shared_memory.SharedMemory(name=n) for n in names]
    views = [np.ndarray(s.shape, s.dtype, buffer=b.buf) for s, b in zip([*model.inputs[:1], *model.outputs], blocks)]
    fault = None
    while True:
        message = conn.recv()
        if message == "stop":
            break
        if isinstance(message, tuple) and message[0] == "fault":  # test hook: wedge this process
            fault = message[1]
            continue
        if fault == "hang":
            time.sleep(3600)
        try:
            outputs = model.run(views[0])
            for view, out in zip(views[1:], outputs):
                view[...] = out
            conn.send("done")
        except Exception as exc:  # the error goes back; the worker stays
            conn.send(f"error: {type(exc).__name__}: {exc}")
    for b in blocks:
        b.close()
    engine.close()


class IsolatedModelRung(Rung):
    """``model_ref``: a registered name (with ``manifests``) or a .tflite path."""

    def __init__(self, name: str, model_ref: str, *, manifests: Sequence[str] = (), backend: str = "auto",
                 threads: int = 1, hang_s: float = 1.0, degraded: bool = False, top_k: int = 5,
                 start_timeout_s: float = 60.0) -> None:
        self.name = name
        self.degraded = degraded
        self.hang_s = hang_s
        self.top_k = top_k
        self.expected_s: float | None = None
        self.restarts = 0
        self._args = (model_ref, list(manifests), backend, threads)
        self._start_timeout_s = start_timeout_s
        self._ctx = mp.get_context("spawn")  # no inherited interpreter state or locks
        self._lock = threading.Lock()  # one request at a time through the child
        self._blocks: list[shared_memory.SharedMemory] = []
        self._start()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_child, args=(child, *self._args), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(self._start_timeout_s):
            self._proc.kill()
            raise RungFailed(f"'{self.name}': the worker process did not start")
        self.inputs, self.outputs, self.entry = parent.recv()
        from edgeloop.runtime import results

        self.labels = results.read_labels(self.entry.output.labels) if self.entry.output.labels else None
        if not self._blocks:
            self._blocks = [shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(s.shape)) * s.dtype.itemsize))
                            for s in [self.inputs[0], *self.outputs]]
        parent.send([b.name for b in self._blocks])
        specs = [self.inputs[0], *self.outputs]
        self._views = [np.ndarray(s.shape, s.dtype, buffer=b.buf) for s, b in zip(specs, self._blocks)]

    def _restart(self) -> None:
        self._proc.kill()
        self._proc.join(5)
        self.restarts += 1
        self._start()

    def inject(self, fault: str) -> None:
        """Test hook: ``"hang"`` wedges the worker process on its next request."""
        self._conn.send(("fault", fault))

    def serve(self, source: Any, timeout_s: float) -> Any:
        from edgeloop.runtime import results
        from edgeloop.runtime.image_input import image_to_input

        array = source if isinstance(source, np.ndarray) else image_to_input(source, self.inputs[0], self.entry.input)
        if not self._lock.acquire(timeout=max(0.0, timeout_s)):  # busy, or a new worker is starting
            raise RungTimeout(f"'{self.name}' worker process busy or restarting")
        try:
            start = time.monotonic()
            self._views[0][...] = array
            self._conn.send("go")
            if not self._conn.poll(max(0.0, min(timeout_s, self.hang_s))):
                # Wedged (or merely slow past the request's time): a process cannot be trusted
                # after that; kill it and start another in the background of the next request.
                threading.Thread(target=self._restart_locked, daemon=True).start()
                raise RungTimeout(f"'{self.name}' worker process did not answer within "
                                  f"{min(timeout_s, self.hang_s) * 1000:.1f} ms; restarting it")
            reply = self._conn.recv()
            if reply != "done":
                raise RungFailed(f"'{self.name}': {reply}")
            outputs = [view.copy() for view in self._views[1:]]
            took = time.monotonic() - start
        finally:
            self._lock.release()
        self.observe(took)
        n = self.entry.output.index
        return results.classify(outputs[n], self.outputs[n], self.labels, self.top_k)

    def _restart_locked(self) -> None:
        with self._lock:
            self._restart()

    def close(self) -> None:
        try:
            self._conn.send("stop")
            self._proc.join(2)
        except (OSError, ValueError):
            pass
        if self._proc.is_alive():
            self._proc.kill()
        for b in self._blocks:
            b.close()
            b.unlink()
