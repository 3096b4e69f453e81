"""A candidate version's probation on live traffic, after its golden set passed on this device.

``ProbationTap`` sits between the router and the candidate's ladder and notes each answer
(latency, which rung gave it). ``Probation.judge()`` is asked now and then; it says nothing
until it can decide, and then passes or fails with a reason code:

- ``stepdowns``: the ladder stepped down more often than ``max_stepdowns`` (at once);
- ``delegate``: ``require_delegate`` and the model runs on the CPU (at once);
- ``errors``: more than ``max_error_rate`` of the answers did not come from the candidate's own
  model (a failure, a hang or a late answer passed down the ladder), once ``min_requests`` came;
- ``p95``: the window's p95 latency over ``p95_ms``;
- ``agreement``: the old version, run in shadow on a sample, agreed less than ``min_agreement``;
- ``traffic``: fewer than ``min_requests`` in ``TRAFFIC_WAIT`` windows (nothing to judge on).

A window ends after ``window_s`` with at least ``min_requests`` answers.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop.sync.bundle import ProbationSpec

TRAFFIC_WAIT = 10  # windows without enough requests before the probation gives up
MIN_SHADOW_RUNS = 10  # shadow comparisons before agreement is judged


@dataclass(frozen=True)
class Verdict:
    passed: bool
    code: str  # "passed", or the reason code of the failure
    text: str


class ProbationTap:
    """The router's slot for a candidate: its ladder, with every answer noted."""

    def __init__(self, ladder: Any, keep: int = 100_000) -> None:
        self.ladder = ladder
        self.answers: deque[tuple[float, str]] = deque(maxlen=keep)  # (latency ms, rung)

    def serve(self, source: Any, inline: bool = False) -> Any:
        served = self.ladder.serve(source, inline=True) if inline else self.ladder.serve(source)
        self.answers.append((served.latency_ms, served.rung))  # deque.append: safe across threads
        return served


class Probation:
    def __init__(self, spec: ProbationSpec, tap: ProbationTap, model: Any, shadow: Any = None,
                 clock: Any = time.monotonic) -> None:
        """``shadow``: a callable giving the old version's shadow figures ({runs, agree}), or None."""
        self.spec = spec
        self.tap = tap
        self.model = model
        self.shadow = shadow
        self.clock = clock
        self.started = clock()
        self._events_at_start = len(tap.ladder.events)
        self._carried_downs = 0
        self._shadow_at_start = dict(shadow()) if shadow is not None else {}

    def follow(self, tap: ProbationTap, model: Any) -> None:
        """Go on with another tap (the camera rebuilt on the candidate), the answers kept."""
        self._carried_downs = self.figures()["stepdowns"]
        self.tap, self.model = tap, model
        self._events_at_start = len(tap.ladder.events)

    def figures(self) -> dict[str, Any]:
        """What the probation has seen so far (in the reported document and ``edgeloop status``)."""
        answers = list(self.tap.answers)
        top = self.tap.ladder.rungs[0].name
        n = len(answers)
        off_model = sum(1 for _, rung in answers if rung != top)
        p95 = float(np.percentile([ms for ms, _ in answers], 95)) if answers else None
        rungs = self.tap.ladder.rungs
        names = [r.name for r in rungs]
        downs = self._carried_downs + sum(1 for e in self.tap.ladder.events[self._events_at_start:]
                    if e["to"] in names and e["from"] in names and names.index(e["to"]) > names.index(e["from"]))
        out: dict[str, Any] = {"elapsed_s": round(self.clock() - self.started, 2), "requests": n,
                               "error_rate": round(off_model / n, 4) if n else None,
                               "p95_ms": round(p95, 3) if p95 is not None else None, "stepdowns": downs}
        if self.shadow is not None:
            now = self.shadow()
            runs = now.get("runs", 0) - self._shadow_at_start.get("runs", 0)
            agree = now.get("agree", 0) - self._shadow_at_start.get("agree", 0)
            out["shadow_runs"] = runs
            out["agreement"] = round(agree / runs, 4) if runs else None
        return out

    def judge(self) -> Verdict | None:
        """None while undecided; a Verdict once it passes or fails."""
        s, f = self.spec, self.figures()
        if f["stepdowns"] > s.max_stepdowns:
            return Verdict(False, "stepdowns", f"the ladder stepped down {f['stepdowns']} time(s), "
                                               f"at most {s.max_stepdowns} allowed")
        if s.require_delegate and getattr(self.model, "delegate", None) is None:
            return Verdict(False, "delegate", "the bundle requires a delegate and the model runs on the CPU"
                                              + (f" ({self.model.fallback})" if getattr(self.model, "fallback", None)
                                                 else ""))
        n = f["requests"]
        if n and n >= s.min_requests and f["error_rate"] > s.max_error_rate:
            return Verdict(False, "errors", f"{f['error_rate']:.1%} of {n} answers did not come from the new "
                                            f"model, at most {s.max_error_rate:.1%} allowed")
        if f["elapsed_s"] < s.window_s or n < max(1, s.min_requests):
            if f["elapsed_s"] >= TRAFFIC_WAIT * s.window_s:
                return Verdict(False, "traffic", f"{n} request(s) in {f['elapsed_s']:.0f} s, "
                                                 f"{s.min_requests} needed to judge")
            return None
        if s.p95_ms is not None and f["p95_ms"] > s.p95_ms:
            return Verdict(False, "p95", f"p95 {f['p95_ms']:.2f} ms over {n} answers > {s.p95_ms:g} ms")
        if s.min_agreement > 0 and self.shadow is not None:
            if f["shadow_runs"] < MIN_SHADOW_RUNS:
                if f["elapsed_s"] >= TRAFFIC_WAIT * s.window_s:
                    return Verdict(False, "traffic", f"{f['shadow_runs']} shadow comparison(s) in "
                                                     f"{f['elapsed_s']:.0f} s, {MIN_SHADOW_RUNS} needed")
                return None
            if f["agreement"] < s.min_agreement:
                return Verdict(False, "agreement", f"agreed with the old version on {f['agreement']:.1%} of "
                                                   f"{f['shadow_runs']}, {s.min_agreement:.1%} needed")
        return Verdict(True, "passed", f"{n} answers in {f['elapsed_s']:.1f} s: p95 {f['p95_ms']} ms, "
                                       f"error rate {f['error_rate']:.2%}, {f['stepdowns']} step-down(s)")
