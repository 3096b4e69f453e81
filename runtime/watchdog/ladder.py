"""The degradation ladder of one task: rungs from best to last resort, a deadline per request
and an SLO over a sliding window.

Each request starts at the current rung. A rung that times out (a hang), fails, or answers
too late for the time left passes the request down to the next rung, keeping back enough of
the deadline for that rung (its usual latency). The ladder itself steps down, for the next
requests, on a hang or an error of the current rung and when the window's p95 breaks the SLO.
While it is down, a prober tries the rung above off the hot path; after ``recover_s`` of
probes within the SLO it steps back up one rung (hysteresis). Every transition is logged
once, counted and passed to ``on_event`` with its reason; every answer says which rung gave it.
Beyond ``capacity`` requests in flight, requests are shed at once (``Served.shed``)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .rungs import CacheRung, Rung, RungFailed, RungMiss, RungTimeout
from .slo import LatencyWindow

log = logging.getLogger("edgeloop.watchdog")

MIN_BUDGET_S = 0.001  # a model rung given less than this is skipped, not blamed
SLO_CHECK_S = 0.05  # how often the window's p95 is judged


@dataclass(frozen=True)
class LadderConfig:
    deadline_s: float = 0.1
    slo_p95_s: float | None = None  # default: the deadline
    window_s: float = 2.0
    min_samples: int = 10
    recover_s: float = 3.0
    probe_every_s: float = 0.2
    capacity: int = 16


@dataclass(frozen=True)
class Served:
    result: Any
    rung: str  # which rung answered ("shed" when none was asked)
    degraded: bool
    latency_ms: float
    within_deadline: bool
    shed: bool = False


class Ladder:
    def __init__(self, task: str, rungs: list[Rung], config: LadderConfig = LadderConfig(),
                 on_event: Callable[[dict[str, Any]], None] | None = None, overflow: Rung | None = None) -> None:
        """``overflow``: where requests beyond ``capacity`` go instead of being shed (the regional
        edge through an ``OffloadRung``); shed when it cannot answer in time either."""
        if not rungs:
            raise ValueError("a ladder needs at least one rung")
        self.task = task
        self.rungs = rungs
        self.config = config
        self.slo_s = config.slo_p95_s or config.deadline_s
        self.on_event = on_event
        self.level = 0
        self.window = LatencyWindow(config.window_s)
        self.counts: dict[str, int] = {"requests": 0, "shed": 0, "late": 0, "transitions": 0,
                                       **{f"served_{r.name}": 0 for r in rungs}}
        self.events: list[dict[str, Any]] = []
        self._inflight = 0
        self._overflowing = 0
        self.overflow = overflow
        self._next_slo_check = 0.0
        self._lock = threading.Lock()
        self._last_source: Any = None
        self._cache = next((r for r in rungs if isinstance(r, CacheRung)), None)
        for i, rung in enumerate(rungs):
            if hasattr(rung, "on_hang"):  # an inline call that hung: step down for the next requests
                rung.on_hang = lambda reason, i=i: self._trouble(i, f"hang: {reason}")
        self._running = True
        self._prober = threading.Thread(target=self._probe_loop, name=f"{task}-prober", daemon=True)
        self._prober.start()

    # -- serving -----------------------------------------------------------------------

    def serve(self, source: Any, inline: bool = False) -> Served:
        """Answer one request. ``inline``: model rungs run on the caller's thread (a supervised
        caller that can be replaced when it hangs; see ``ModelRung.serve_inline``)."""
        start = time.monotonic()
        deadline = start + self.config.deadline_s
        with self._lock:
            self.counts["requests"] += 1
            full = self._inflight >= self.config.capacity
            if full and (self.overflow is None or self._overflowing >= self.config.capacity):
                self.counts["shed"] += 1
                return Served(None, "shed", True, 0.0, True, shed=True)
            if full:
                self._overflowing += 1
            else:
                self._inflight += 1
            level = self.level
        if full:
            return self._spill(source, start, deadline)
        self._last_source = source
        try:
            return self._serve(source, start, deadline, level, inline)
        finally:
            with self._lock:
                self._inflight -= 1

    def _serve(self, source: Any, start: float, deadline: float, level: int, inline: bool = False) -> Served:
        for i in range(level, len(self.rungs)):
            rung = self.rungs[i]
            left = deadline - time.monotonic()
            budget = left - self._reserve(i, left)
            if rung.expected_s != 0.0 and budget < MIN_BUDGET_S:
                continue  # no time left for a model: not its fault, and not a reason to step down
            try:
                if inline and hasattr(rung, "serve_inline"):
                    result = rung.serve_inline(source)
                else:
                    result = rung.serve(source, max(0.0, budget))
            except RungTimeout as exc:
                self._trouble(i, f"hang or timeout: {exc}")
                continue
            except RungMiss:  # no answer for this input: the next rung's turn, not a step down
                with self._lock:
                    self.counts[f"missed_{rung.name}"] = self.counts.get(f"missed_{rung.name}", 0) + 1
                continue
            except RungFailed as exc:
                self._trouble(i, f"error: {exc}")
                continue
            now = time.monotonic()
            took = now - start
            if i == self.level:
                self.window.add(took, now)
                if now >= self._next_slo_check:  # a percentile per request would cost more than the request
                    self._next_slo_check = now + SLO_CHECK_S
                    self._check_slo(i)
            if self._cache is not None and not rung.degraded:
                self._cache.remember(source, result)
            within = time.monotonic() <= deadline
            with self._lock:
                self.counts[f"served_{rung.name}"] += 1
                self.counts["late"] += not within
            return Served(result, rung.name, rung.degraded or i > 0, took * 1000.0, within)
        raise RuntimeError(f"ladder '{self.task}': no rung answered (give it a DefaultRung last)")

    def _reserve(self, i: int, left: float) -> float:
        """Time kept back from rung i for the rungs below it: 1.5x the slowest one's usual
        latency (a share of the deadline while it is not known yet), at most half of what is left."""
        below = [r.expected_s for r in self.rungs[i + 1:]]
        if not below:
            return 0.0
        need = max(0.4 * self.config.deadline_s if e is None else 1.5 * e for e in below)
        return min(0.5 * left, need)

    def _spill(self, source: Any, start: float, deadline: float) -> Served:
        """Beyond capacity: the overflow rung answers, or the request is shed."""
        assert self.overflow is not None
        try:
            result = self.overflow.serve(source, max(0.0, deadline - time.monotonic()))
        except (RungTimeout, RungFailed):
            with self._lock:
                self.counts["shed"] += 1
            return Served(None, "shed", True, (time.monotonic() - start) * 1000.0, True, shed=True)
        finally:
            with self._lock:
                self._overflowing -= 1
        name = self.overflow.name
        with self._lock:
            self.counts[f"served_{name}"] = self.counts.get(f"served_{name}", 0) + 1
        return Served(result, name, self.overflow.degraded, (time.monotonic() - start) * 1000.0,
                      time.monotonic() <= deadline)

    def _trouble(self, i: int, reason: str) -> None:
        if i == self.level and i < len(self.rungs) - 1:
            self._step(i + 1, reason)

    def _check_slo(self, i: int) -> None:
        p95 = self.window.percentile(95, self.config.min_samples)
        if p95 is not None and p95 > self.slo_s and i < len(self.rungs) - 1:
            self._step(i + 1, f"p95 {p95 * 1000:.1f} ms over {self.config.window_s:g} s > SLO "
                              f"{self.slo_s * 1000:.1f} ms")

    def _step(self, to: int, reason: str) -> None:
        with self._lock:
            if to == self.level:
                return
            was, self.level = self.level, to
            self.counts["transitions"] += 1
            # under the lock with the level: a reader that sees the new rung sees its event
            event = {"task": self.task, "from": self.rungs[was].name, "to": self.rungs[to].name,
                     "reason": reason, "at": time.time()}
            self.events.append(event)
        self.window.clear()  # the new rung is judged on its own latencies
        log.warning("watchdog: task '%s' %s %s -> %s: %s", self.task, "down" if to > was else "up",
                    event["from"], event["to"], reason)
        if self.on_event is not None:
            self.on_event(event)

    # -- recovery ----------------------------------------------------------------------

    def _probe_loop(self) -> None:
        healthy_since: float | None = None
        while self._running:
            time.sleep(self.config.probe_every_s)
            level, source = self.level, self._last_source
            if level == 0 or source is None:
                healthy_since = None
                continue
            above = self.rungs[level - 1]
            start = time.monotonic()
            try:
                above.serve(source, self.config.deadline_s)
                ok = time.monotonic() - start <= self.slo_s
            except (RungTimeout, RungFailed):
                ok = False
            now = time.monotonic()
            if not ok:
                healthy_since = None
            elif healthy_since is None:
                healthy_since = now
            elif now - healthy_since >= self.config.recover_s and self.level == level:
                self._step(level - 1, f"'{above.name}' healthy for {now - healthy_since:.1f} s")
                healthy_since = None

    def stats(self) -> dict[str, Any]:
        p95 = self.window.percentile(95)
        with self._lock:
            return {"task": self.task, "rung": self.rungs[self.level].name, "level": self.level,
                    "p95_ms": None if p95 is None else round(p95 * 1000, 3), "slo_ms": self.slo_s * 1000,
                    "deadline_ms": self.config.deadline_s * 1000, **self.counts}

    def close(self) -> None:
        self._running = False
        self._prober.join(2 * self.config.probe_every_s + 1)
        for rung in self.rungs:
            rung.close()
