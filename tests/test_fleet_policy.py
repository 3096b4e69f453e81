"""The fleet controller's policy and the fleet view's summary, on plain inputs (the whole loop
runs against a real broker in test_fleet_rollout and test_fleet_cli)."""

from __future__ import annotations

from dataclasses import replace

from edgeloop.sync.rollout_doc import RolloutDoc, in_cohort
from edgeloop.tools.fleet.controller import Plan, decide
from edgeloop.tools.fleet.view import summary

NOW = 1_800_000_000.0
DEVICES = [f"d-{n:03d}" for n in range(200)]
DOC = RolloutDoc("r1", "digits", "1.1.0", 25.0, "salt", previous="1.0.0", issued=NOW - 10)
COHORT = [d for d in DEVICES if in_cohort(d, DOC)]


def reports(committed: int = 0, failed: int = 0, rolled_back: int = 0) -> dict[str, dict]:
    out = {d: {"state": "idle", "active": "1.0.0", "at": NOW} for d in DEVICES}
    for i, d in enumerate(COHORT):
        if i < committed:
            out[d] = {"state": "committed", "active": "1.1.0", "rollout": "r1", "target": "1.1.0", "at": NOW}
        elif i < committed + failed:
            out[d] = {"state": "failed", "active": "1.0.0", "rollout": "r1", "target": "1.1.0", "reason": "404", "at": NOW}
        elif i < committed + failed + rolled_back:
            out[d] = {"state": "rolled_back", "active": "1.0.0", "rollout": "r1", "target": "1.1.0", "reason": "p95",
                      "at": NOW}
        else:
            out[d] = {"state": "probation", "active": "1.1.0", "rollout": "r1", "target": "1.1.0", "pending": "1.1.0",
                      "at": NOW}
    return out


def test_widens_only_at_the_success_threshold_and_aborts_past_the_error_threshold():
    n = len(COHORT)
    assert 30 < n < 70
    plan = Plan(success=0.9, abort=0.2)
    assert decide(DOC, reports(committed=int(0.9 * n) - 1), plan, NOW).action == "wait"
    d = decide(DOC, reports(committed=-(-9 * n // 10)), plan, NOW)
    assert d.action == "widen" and d.pct == 100.0
    assert decide(DOC, reports(committed=n // 2, rolled_back=n // 5), plan, NOW).action == "wait"  # exactly 20 %: not over
    d = decide(DOC, reports(committed=n // 2, failed=n // 5, rolled_back=2), plan, NOW)
    assert d.action == "abort" and d.failed == n // 5 + 2


def test_done_only_when_every_device_of_the_last_step_has_finished_and_late_ones_count_as_failed():
    last = replace(DOC, pct=100.0)
    cohort = [d for d in DEVICES if in_cohort(d, last)]
    r = {d: {"state": "committed", "active": "1.1.0", "rollout": "r1", "target": "1.1.0", "at": NOW} for d in cohort}
    r[cohort[0]] = {"state": "probation", "active": "1.1.0", "rollout": "r1", "target": "1.1.0", "pending": "1.1.0"}
    assert decide(last, r, Plan(), NOW).action == "wait"
    late = decide(last, r, Plan(stage_timeout_s=5.0), NOW)  # the step began 10 s ago: the bricked one failed
    assert late.action == "done" and late.failed == 1
    assert decide(replace(last, deadline=NOW - 1), r, Plan(), NOW).failed == 1
    del r[cohort[0]]
    assert decide(last, r, Plan(), NOW).action == "done"


def test_an_empty_cohort_widens_and_a_cancelled_rollout_is_left_alone():
    tiny = replace(DOC, pct=0.01)
    few = {d: {"state": "idle"} for d in DEVICES[:5] if not in_cohort(d, tiny)}
    assert decide(tiny, few, Plan(), NOW).action == "widen"
    assert decide(replace(DOC, cancelled=True), reports(failed=50), Plan(), NOW).action == "wait"


def test_the_summary_counts_what_devices_report_and_names_the_silent_ones():
    r = reports(committed=3, failed=2, rolled_back=1)
    r["x-clockless"] = {"state": "idle", "active": "1.0.0", "at": 5.0, "received_live_at": NOW - 3}  # a Pi in 1970
    r["x-gone"] = {"state": "idle", "active": "1.0.0", "at": NOW - 1000}
    s = summary(DOC, r, now=NOW, stale_s=180)
    assert s["stale"] == ["x-gone"]
    ro = s["rollout"]
    assert (ro["committed"], ro["failed"], ro["rolled_back"], ro["target"]) == (3, 2, 1, "1.1.0")
    assert ro["in_progress"] == len(COHORT) - 6 and ro["cohort"] == len(COHORT)
    assert set(s["failures"].values()) == {"404", "p95"}
