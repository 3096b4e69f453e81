"""Every stage of the agent runs under the supervisor: a thread per stage whose ``run(stop)``
should return only once ``stop`` is set. An exception (or a return while it should run) is
logged with its traceback, counted, and the stage is marked ``failed`` and started again after
a backoff (0.1 s doubling to 10 s, reset once it has run for 30 s). ``healthy()`` is False
while any stage is not running: the systemd watchdog is not fed then, and ``edgeloop status``
shows which stage and why.
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


@dataclass
class Stage:
    name: str
    run: Callable[[threading.Event], None]
    state: str = "starting"  # running, failed (waiting to start again), stopped
    restarts: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error,
                "last_error_at": self.last_error_at or None}


class Supervisor:
    def __init__(self) -> None:
        self.stages: dict[str, Stage] = {}
        self._lock = threading.Lock()

    def start(self, name: str, run: Callable[[threading.Event], None]) -> Stage:
        """Start ``run`` as the stage ``name`` (a stage of that name must be stopped first)."""
        stage = Stage(name, run)
        with self._lock:
            old = self.stages.get(name)
            if old is not None and old.thread is not None and old.thread.is_alive():
                raise RuntimeError(f"stage '{name}' is running")
            if old is not None:  # a stage replaced (a new configuration) keeps its history
                stage.restarts, stage.last_error, stage.last_error_at = old.restarts, old.last_error, old.last_error_at
            self.stages[name] = stage
        stage.thread = threading.Thread(target=self._supervise, args=(stage,), name=f"agent-{name}", daemon=True)
        stage.thread.start()
        return stage

    def _supervise(self, stage: Stage) -> None:
        backoff = BACKOFF_MIN_S
        while not stage.stop.is_set():
            started = time.monotonic()
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
