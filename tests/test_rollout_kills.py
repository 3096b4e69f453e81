"""Kill -9 in every state of a rollout: a real agent process SIGKILLs itself the moment a
transition is durable (the state machine's own write, then SIGKILL: nothing after it runs),
and a new agent starts on the same data folder with the rollout document still retained.
A download, a verification or a staging resumes and commits; a candidate that was switching,
on probation or being rolled back is rolled back (never a half-switched model: the route, the
serving version and the state agree); a commit stays committed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import replace

import pytest

from conftest import running_agent, wait_for
from edgeloop.sync.rollout_doc import RolloutDoc
from edgeloop.sync.rollout_state import RolloutStore
from test_rollout_agent import PROBATION, agent_config, fleet, release  # noqa: F401 (fleet: a fixture)

CHILD = r"""
import os, signal, sys, time
from edgeloop.sync import rollout_state

real_move = rollout_state.RolloutStore.move

def move(self, to, **changes):
    state = real_move(self, to, **changes)
    if to == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)  # the transition is on disk; nothing after it runs
    return state

rollout_state.RolloutStore.move = move

from edgeloop.models.store import ModelStore
from edgeloop.runtime.agent import Agent, load_config
from edgeloop.runtime.engine import Engine, EngineConfig

agent = Agent(load_config(sys.argv[1]), Engine(EngineConfig(num_threads=1), ModelStore())).start()
time.sleep(60)
print("never killed", flush=True)
"""


def config_file(config, path) -> None:
    r, cam = config.rollout, config.camera
    path.write_text(
        f'device = "{config.device}"\nfleet = "{config.fleet}"\ngroup = "{config.group}"\n'
        f'broker = "{config.broker}"\ndata_dir = "{config.data_dir}"\nmetrics_port = -1\nstatus_every_s = 60\n'
        f"[camera]\nfps = {cam.fps}\n[mcu]\nenabled = false\n"
        f'[rollout]\nrepo_url = "{r.repo_url}"\nroot = "{r.root}"\nretry_s = {r.retry_s}\n')


# (the state killed in, the bundle, what the next start ends in, the version serving then)
CASES = [
    ("downloading", "digits_v2", "committed", "1.1.0"),
    ("verified", "digits_v2", "committed", "1.1.0"),
    ("staged", "digits_v2", "committed", "1.1.0"),
    ("switching", "digits_v2", "rolled_back", "1.0.0"),
    ("probation", "digits_v2", "rolled_back", "1.0.0"),
    ("committed", "digits_v2", "committed", "1.1.0"),
    ("rolling_back", "digits_slow", "rolled_back", "1.0.0"),
    ("rolled_back", "digits_slow", "rolled_back", "1.0.0"),
]


@pytest.mark.parametrize("killed_in, bundle, ends, serving", CASES, ids=[c[0] for c in CASES])
def test_a_kill_9_in_any_state_resumes_or_rolls_back(tmp_path, broker, fleet, killed_in, bundle, ends, serving):  # noqa: F811
    repo, server, root, ops = fleet
    probation = replace(PROBATION, window_s=1.0, p95_ms=1.0 if bundle == "digits_slow" else PROBATION.p95_ms)
    version = release(repo, tmp_path, bundle, probation=probation)
    config = agent_config(tmp_path, broker.port, server, root)
    path = tmp_path / "agent.toml"
    config_file(config, path)
    ops.rollout("cams", RolloutDoc("r1", "digits", version, 100.0, "r1"))
    child = subprocess.run([sys.executable, "-c", CHILD, str(path), killed_in], capture_output=True, text=True,
                           timeout=90)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr[-3000:]
    with running_agent(config) as agent:
        wait_for(lambda: agent.rollout.store.state.state == ends and agent.inferences > 5, 30,
                 f"{ends} after a kill in {killed_in} (now {agent.rollout.store.state.state})")
        state = agent.rollout.store.state
        status = agent.status(fast=True)
        primary = status["route"]["digits"]["primary"]
        assert state.serving_version == serving
        assert status["models"][primary]["version"] == serving  # what the router answers from is what the state says
        if ends == "rolled_back" and killed_in in ("switching", "probation"):
            assert "restarted during" in state.reason and any(k.startswith(version) for k in agent.rollout.store.bad_versions())
        n = agent.inferences
        wait_for(lambda: agent.inferences > n + 10, 10, "serving on")
        # and the reported document tells which
        wait_for(lambda: ops.last("cam-1").get("state") == ends and ops.last("cam-1").get("active") == serving, 10,
                 "the reported document")
    again = RolloutStore(config.data_path / "rollout" / "state.db")
    assert again.state.state == ends and again.state.transitions < 24
    again.close()


def test_a_kill_9_in_the_middle_of_a_download_resumes_from_the_part_file(tmp_path, broker, fleet):  # noqa: F811
    repo, server, root, ops = fleet
    version = release(repo, tmp_path, "digits_v2", probation=replace(PROBATION, window_s=1.0))
    config = agent_config(tmp_path, broker.port, server, root)
    path = tmp_path / "agent.toml"
    config_file(config, path)
    ops.rollout("cams", RolloutDoc("r1", "digits", version, 100.0, "r1"))
    model = next(p for p in repo.targets_dir.rglob("*digits_v2.tflite"))
    length = model.stat().st_size
    server.knobs.slow_bps = length / 3.0  # about 3 s for the model file
    part = config.data_path / "rollout" / "slots" / "b" / "digits_v2.tflite.part"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "never"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    state = part.with_name(part.name + ".json")

    def durable() -> int:
        try:
            return json.loads(state.read_text())["offset"]
        except (OSError, ValueError):
            return 0

    try:  # the offset is made durable once a second on a slow link
        wait_for(lambda: durable() > length // 5, 60, "a part of the model fetched and durable")
    finally:
        child.kill()
        child.wait(10)
    have = part.stat().st_size
    server.knobs.slow_bps = None
    with running_agent(config) as agent:
        wait_for(lambda: agent.rollout.store.state.state == "committed", 30, "the resumed rollout committed")
        assert agent.rollout.store.state.attempts == 2
    sent = sum(n for p, n in server.sent.items() if p.endswith("digits_v2.tflite"))
    assert sent < length + length // 4, f"{sent} bytes sent for a {length}-byte file: it started over"
    assert have > 0 and not part.exists()
