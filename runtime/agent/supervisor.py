"""Every stage of the agent runs under the supervisor: a thread per stage whose ``run(stop)``
should return only once ``stop`` is set. An exception (or a return while it should run) is
logged with its traceback, counted, and the stage is marked ``failed`` and started again after
a backoff (0.1 s doubling to 10 s, reset once it has run for 30 s). ``healthy()`` is False
while any stage is not running: the systemd watchdog is not fed then, and ``edgeloop status``
shows which stage and why.

A stage started with ``stuck_s`` beats (``stop.beat()``) each time round its loop; one that has
not beaten for ``stuck_s`` (a thread wedged in a native call: a hung delegate) is given up on:
logged, counted as a restart, and started again on a new thread. The old thread is told to stop
and leaves when (if) its call returns.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("edgeloop.agent")

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 10.0
STEADY_S = 30.0  # a stage that ran this long starts again from the shortest backoff


class StageControl(threading.Event):
    """A stage's stop event, and its heartbeat."""

    def __init__(self) -> None:
        super().__init__()
        self.last_beat = time.monotonic()

    def beat(self) -> None:
        self.last_beat = time.monotonic()


@dataclass
class Stage:
    name: str
    run: Callable[[StageControl], None]
    state: str = "starting"  # running, failed (waiting to start again), stopped
    restarts: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    stuck_s: float | None = None
    stop: StageControl = field(default_factory=StageControl)
    thread: threading.Thread | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error,
                "last_error_at": self.last_error_at or None}


class Supervisor:
    def __init__(self) -> None:
        self.stages: dict[str, Stage] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._monitor: threading.Thread | None = None

    def start(self, name: str, run: Callable[[StageControl], None], stuck_s: float | None = None,
              replacing: bool = False) -> Stage:
        """Start ``run`` as the stage ``name`` (a stage of that name must be stopped first)."""
        stage = Stage(name, run, stuck_s=stuck_s)
        with self._lock:
            old = self.stages.get(name)
            if not replacing and old is not None and old.thread is not None and old.thread.is_alive():
                raise RuntimeError(f"stage '{name}' is running")
            if old is not None:  # a stage replaced (a new configuration) keeps its history
                stage.restarts, stage.last_error, stage.last_error_at = old.restarts, old.last_error, old.last_error_at
            self.stages[name] = stage
        stage.thread = threading.Thread(target=self._supervise, args=(stage,), name=f"agent-{name}", daemon=True)
        stage.thread.start()
        if stuck_s is not None and self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="agent-supervisor", daemon=True)
            self._monitor.start()
        return stage

    def _watch(self) -> None:
        while not self._closed.wait(0.1):
            now = time.monotonic()
            for stage in list(self.stages.values()):
                if stage.stuck_s is None or stage.state != "running" or stage.stop.is_set():
                    continue
                if now - stage.stop.last_beat > stage.stuck_s:
                    stage.stop.set()  # the old thread leaves when its call returns
                    stage.state = "stuck"
                    stage.restarts += 1
                    stage.last_error = f"stuck for more than {stage.stuck_s:g} s"
                    stage.last_error_at = time.time()
                    log.error("stage '%s' is stuck (no progress for %.1f s); starting it again on a new thread",
                              stage.name, now - stage.stop.last_beat)
                    self.start(stage.name, stage.run, stage.stuck_s, replacing=True)

    def _supervise(self, stage: Stage) -> None:
        backoff = BACKOFF_MIN_S
        while not stage.stop.is_set():
            started = time.monotonic()
            stage.stop.beat()
            stage.state = "running"
            try:
                stage.run(stage.stop)
                if stage.stop.is_set():
                    break
                raise RuntimeError("the stage returned while it should run")
            except Exception as exc:  # no stage dies silently: logged, counted, started again
                stage.state = "failed"
                stage.restarts += 1
                stage.last_error = f"{type(exc).__name__}: {exc}"
                stage.last_error_at = time.time()
                log.error("stage '%s' failed (%s); starting it again in %.1f s\n%s", stage.name, stage.last_error,
                          backoff, "".join(traceback.format_exception(exc)).rstrip())
            if time.monotonic() - started >= STEADY_S:
                backoff = BACKOFF_MIN_S
            if stage.stop.wait(backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        if self.stages.get(stage.name) is stage:
            stage.state = "stopped"

    def stop(self, name: str, timeout_s: float = 10.0) -> None:
        stage = self.stages.get(name)
        if stage is None:
            return
        stage.stop.set()
        if stage.thread is not None:
            stage.thread.join(timeout_s)
            if stage.thread.is_alive():
                log.error("stage '%s' did not stop within %.0f s", name, timeout_s)

    def stop_all(self, timeout_s: float = 10.0, order: list[str] | None = None) -> None:
        if order is None:
            self._closed.set()
        names = order or list(self.stages)
        for name in names:
            self.stages[name].stop.set()
        for name in names:
            self.stop(name, timeout_s)

    def healthy(self) -> bool:
        return all(s.state == "running" for s in self.stages.values() if s.state != "stopped")

    def unhealthy(self) -> list[str]:
        return [n for n, s in self.stages.items() if s.state not in ("running", "stopped")]

    def health(self) -> dict[str, dict[str, Any]]:
        return {name: stage.to_dict() for name, stage in self.stages.items()}
