"""One thread that commits the enqueues of many outboxes.

An outbox of its own has a writer thread. A gateway that speaks for a hundred devices (and the
fleet simulator) would have a hundred, each waking for every enqueue and waiting for the
interpreter lock after every SQLite call: on two cores that contention cost more than the
writes (measured with 250 devices in one process). A ``SharedWriter`` commits each outbox's
pending enqueues in turn on one thread; what arrives while it is busy with the others goes in
the next commit of that outbox, so commits group by themselves.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .outbox import Outbox

log = logging.getLogger("edgeloop.outbox")


class SharedWriter:
    """``writer = SharedWriter()``; ``Outbox(path, device, writer=writer)`` for each device;
    close the outboxes, then ``writer.stop()``."""

    def __init__(self, name: str = "outbox-shared-writer") -> None:
        self._cond = threading.Condition()
        self._ready: dict["Outbox", None] = {}  # insertion-ordered: first come, first committed
        self._running = True
        self.commits = 0
        self.errors = 0  # a failure outside an outbox's own error handling, logged; the writer goes on
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def ready(self, box: "Outbox") -> None:
        """``box`` has enqueues to commit (any thread)."""
        with self._cond:
            running = self._running
            if running and box not in self._ready:
                self._ready[box] = None
                self._cond.notify()
        if not running:  # stopped before its outboxes were closed: commit here, lose nothing
            box._flush()

    def stats(self) -> dict[str, Any]:
        return {"alive": self._thread.is_alive(), "commits": self.commits, "errors": self.errors}

    def stop(self) -> None:
        """After the outboxes it serves are closed (a close commits what is still pending)."""
        with self._cond:
            self._running = False
            self._cond.notify()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ready and self._running:
                    self._cond.wait()
                if not self._ready:
                    return
                boxes = list(self._ready)
                self._ready.clear()
            for box in boxes:
                try:
                    box._flush()
                    self.commits += 1
                except Exception:  # one outbox's failure must not stop the others' commits
                    self.errors += 1
                    log.exception("outbox: the shared writer's commit for %s failed; it goes on", box.path)
