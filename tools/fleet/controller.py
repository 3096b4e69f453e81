"""The fleet controller: widens a group's rollout through its steps (5 -> 25 -> 100 % by default)
while the cohort commits, and aborts it (the document cancelled: devices on probation roll back,
devices that committed go back to ``previous``) when too many fail. A device in the cohort
that has not committed ``stage_timeout_s`` after the step began, or by the rollout's deadline,
counts as failed: a bricked device does not hold a rollout up for ever.

``decide`` is the whole policy, on plain inputs; ``Controller`` runs it against the broker."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from edgeloop.sync.rollout_doc import RolloutDoc, in_cohort

from .view import FleetView, is_failure

log = logging.getLogger("edgeloop.fleet")


@dataclass(frozen=True)
class Plan:
    steps: tuple[float, ...] = (5.0, 25.0, 100.0)
    success: float = 0.9  # of the cohort committed: the next step
    abort: float = 0.2  # of the cohort failed (or timed out): the rollout is cancelled
    stage_timeout_s: float = 1800.0


@dataclass(frozen=True)
class Decision:
    action: str  # wait, widen, abort, done
    pct: float
    why: str
    cohort: int = 0
    committed: int = 0
    failed: int = 0


def next_step(plan: Plan, pct: float) -> float | None:
    return next((s for s in plan.steps if s > pct), None)


def decide(doc: RolloutDoc, reports: dict[str, dict[str, Any]], plan: Plan, now: float) -> Decision:
    """What to do with ``doc`` given the group's reports (device -> reported document)."""
    if doc.cancelled:
        return Decision("wait", doc.pct, "cancelled")
    cohort = [d for d in reports if in_cohort(d, doc)]
    age = now - (doc.issued or now)
    late = age > plan.stage_timeout_s or (doc.deadline is not None and now > doc.deadline)
    committed = failed = 0
    for device in cohort:
        r = reports[device]
        if r.get("state") == "committed" and r.get("active") == doc.version:
            committed += 1
        elif is_failure(r, doc) or late:
            failed += 1
    n = len(cohort)
    counts = dict(cohort=n, committed=committed, failed=failed)
    if n and failed / n > plan.abort:
        return Decision("abort", doc.pct, f"{failed} of {n} devices failed (over {plan.abort:.0%})", **counts)
    if n == 0 or committed / n >= plan.success:
        step = next_step(plan, doc.pct)
        if step is None:
            if committed + failed < n:  # the last step: done once every device has finished
                return Decision("wait", doc.pct, f"{committed} of {n} committed, {n - committed - failed} "
                                                 "still under way", **counts)
            return Decision("done", doc.pct, f"{committed} of {n} committed at {doc.pct:g} %", **counts)
        why = "no device in the cohort yet" if n == 0 else f"{committed} of {n} committed"
        return Decision("widen", step, why, **counts)
    return Decision("wait", doc.pct, f"{committed} committed, {failed} failed, {n - committed - failed} pending "
                                     f"of {n}", **counts)


class Controller:
    def __init__(self, view: FleetView, group: str, plan: Plan, clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.group = group
        self.plan = plan
        self.clock = clock
        self.decisions: list[Decision] = []

    def tick(self) -> Decision | None:
        doc = self.view.docs.get(self.group)
        if doc is None:
            return None
        decision = decide(doc, self.view.group_reports(self.group), self.plan, self.clock())
        if not self.decisions or decision != self.decisions[-1]:
            self.decisions.append(decision)
            log.info("fleet: %s %s at %g %%: %s (%s)", self.group, doc.version, doc.pct, decision.action, decision.why)
        if decision.action == "widen":
            self.view.publish(self.group, replace(doc, pct=decision.pct, issued=self.clock()))
        elif decision.action == "abort":
            self.view.publish(self.group, replace(doc, cancelled=True, issued=self.clock()))
        return decision

    def run(self, stop: Any, every_s: float = 1.0) -> Decision | None:
        """Until the rollout is done or aborted (or ``stop`` is set); the last decision."""
        last = None
        while not stop.is_set():
            last = self.tick() or last
            if last is not None and last.action in ("done", "abort"):
                return last
            stop.wait(every_s)
        return last
