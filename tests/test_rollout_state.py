"""The rollout document (cohorts a device computes itself) and the persisted state machine
(real SQLite files, reopened as after a kill -9)."""

from __future__ import annotations

import json

import pytest

from edgeloop.sync.rollout_doc import RolloutDoc, RolloutDocError, cohort_point, in_cohort, parse_rollout
from edgeloop.sync.rollout_state import MAX_TRANSITIONS, RolloutStateError, RolloutStore


def doc(**kw) -> RolloutDoc:
    return parse_rollout(json.dumps({"id": "r1", "model": "digits", "version": "1.1.0", "pct": 5, **kw}).encode())


def test_cohorts_are_stable_nested_as_they_widen_and_near_the_percentage():
    devices = [f"cam-{n:05d}" for n in range(20000)]
    five = {d for d in devices if in_cohort(d, doc(pct=5))}
    twenty_five = {d for d in devices if in_cohort(d, doc(pct=25))}
    assert five <= twenty_five  # widening never drops a device already in
    assert abs(len(five) / len(devices) - 0.05) < 0.006 and abs(len(twenty_five) / len(devices) - 0.25) < 0.012
    assert all(in_cohort(d, doc(pct=100)) for d in devices[:500]) and not any(in_cohort(d, doc(pct=0)) for d in devices)
    other = {d for d in devices if in_cohort(d, doc(pct=5, salt="another"))}
    assert len(five & other) < len(five) * 0.2  # another rollout's canaries are other devices
    assert cohort_point("cam-1", "r1") == cohort_point("cam-1", "r1")


@pytest.mark.parametrize("payload, field", [
    (b"not json", "not JSON"), (b"[1]", "not a JSON object"), (b'{"id": "r", "model": "m", "version": "1"}', "pct"),
    (b'{"id": "r", "model": "m", "version": "1", "pct": 101}', "pct"),
    (b'{"id": "r", "model": "m", "version": "1", "pct": NaN}', "pct"),
    (b'{"id": "r/x", "model": "m", "version": "1", "pct": 1}', "'id'"),
    (b'{"id": "r", "model": "m", "version": "1", "pct": 1, "paused": "yes"}', "paused"),
    (b'{"id": "r", "model": "m", "version": "1", "pct": 1, "deadline": -5}', "deadline"),
    (b"{" + b" " * 5000 + b"}", "over"),
])
def test_a_malformed_rollout_document_is_refused_naming_the_field(payload, field):
    with pytest.raises(RolloutDocError) as err:
        parse_rollout(payload)
    assert field in str(err.value)


def test_the_document_round_trips():
    d = doc(previous="1.0.0", paused=True, deadline=1796500000)
    assert parse_rollout(d.to_json()) == d and d.salt == "r1"


def test_transitions_are_durable_and_only_the_allowed_ones(tmp_path):
    store = RolloutStore(tmp_path / "rollout.db", initial_version="1.0.0")
    store.move("downloading", rollout="r1", target="1.1.0", target_sha256="ab" * 32)
    store.move("verified")
    with pytest.raises(RolloutStateError):
        store.move("committed")
    store.close()
    again = RolloutStore(tmp_path / "rollout.db")  # as after a kill -9
    assert again.state.state == "verified" and again.state.target == "1.1.0" and again.state.transitions == 2
    assert again.recover().state == "verified"  # a download resumes


def test_a_restart_during_probation_rolls_back_to_the_previous_slot_and_marks_the_version_bad(tmp_path):
    store = RolloutStore(tmp_path / "rollout.db", initial_version="1.0.0")
    sha = "cd" * 32
    for step in ("downloading", "verified", "staged", "switching"):
        store.move(step, rollout="r1", target="1.1.0", target_sha256=sha, standby_version="1.1.0"
                   if step == "staged" else store.state.standby_version)
    s = store.move("probation", serving="b", serving_version="1.1.0", standby_version="1.0.0")
    assert s.serving == "b" and s.standby == "a"
    store.close()
    store = RolloutStore(tmp_path / "rollout.db")
    s = store.recover()
    assert (s.state, s.serving, s.serving_version, s.standby_version) == ("rolled_back", "a", "1.0.0", "1.1.0")
    assert "restarted during probation" in s.reason and store.is_bad("1.1.0", sha)
    assert store.is_bad("1.1.0", "ef" * 32) is None  # another bundle of the version may be tried


def test_a_restart_while_switching_keeps_the_old_slot(tmp_path):
    store = RolloutStore(tmp_path / "rollout.db", initial_version="1.0.0")
    for step in ("downloading", "verified", "staged", "switching"):
        store.move(step, rollout="r1", target="1.1.0", target_sha256="ab" * 32)
    s = RolloutStore(tmp_path / "rollout.db").recover()
    assert (s.state, s.serving, s.serving_version) == ("rolled_back", "a", "1.0.0")


def test_a_loop_of_transitions_is_broken(tmp_path):
    store = RolloutStore(tmp_path / "rollout.db")
    store.move("downloading", rollout="r1", target="1.1.0")
    while store.state.state != "failed":
        store.move("idle") if store.state.state == "downloading" else store.move("downloading")
        assert store.state.transitions <= MAX_TRANSITIONS + 1
    assert "loop" in store.state.reason
    store.move("downloading", rollout="r2", target="1.2.0")  # a new rollout starts counting again
    assert store.state.transitions == 1
