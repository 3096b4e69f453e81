"""A fleet rollout end to end: 50 light agents (the device's real rollout driver, deployer and
camera part, each with its own MQTT client, state and slots) on one real Mosquitto, a real TUF
repository on a real HTTP server, and the fleet controller. A good version goes 5 -> 25 -> 100 %
and every device commits; a bad one stops at the canary, whose devices roll back, and no other
device fetches it."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import wait_for
from edgeloop.sync.mqtt_client import BrokerConfig
from edgeloop.sync.rollout_doc import RolloutDoc, in_cohort
from edgeloop.tools.fleet.controller import Controller, Plan
from edgeloop.tools.fleet.view import FleetView, summary
from edgeloop.tools.testing.bundle_server import BundleServer
from edgeloop.tools.testing.fleet_sim import LightAgent, close_all
from test_rollout_agent import PROBATION, release, signed_repo

DEVICES = [f"sim-{n:03d}" for n in range(50)]
SIM_PROBATION = PROBATION.__class__(window_s=1.0, min_requests=10, p95_ms=250.0, max_error_rate=0.2,
                                    max_stepdowns=2)


def canary_salt(pct: float, at_least: int) -> str:
    """A salt whose cohort at ``pct`` holds a few of the 50 devices (the same every run)."""
    for n in range(1000):
        salt = f"salt-{n}"
        probe = RolloutDoc("x", "digits", "0", pct, salt)
        if at_least <= sum(in_cohort(d, probe) for d in DEVICES) <= 2 * at_least:
            return salt
    raise AssertionError("no salt")


@pytest.fixture
def sim_fleet(tmp_path, broker):
    repo, root = signed_repo(tmp_path)
    address = BrokerConfig("127.0.0.1", broker.port)
    with BundleServer(repo.repo) as server:
        agents = [LightAgent(d, "f1", "cams", address, tmp_path / d, server.url, root) for d in DEVICES]
        view = FleetView(address, "f1", "fleet-test")
        try:
            wait_for(lambda: len(view.group_reports("cams")) == len(DEVICES), 60, "every device reporting")
            yield repo, server, agents, view, tmp_path
        finally:
            view.publish("cams", None)
            view.close()
            close_all(agents)


def run_controller(view: FleetView, plan: Plan, timeout_s: float) -> tuple[Controller, object]:
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    controller = Controller(view, "cams", plan)
    try:
        return controller, controller.run(stop, every_s=0.5)
    finally:
        timer.cancel()


def test_a_good_version_widens_to_the_whole_fleet_and_every_device_commits(sim_fleet):
    repo, server, agents, view, tmp = sim_fleet
    version = release(repo, tmp, "digits_v2", probation=SIM_PROBATION)
    view.publish("cams", RolloutDoc("r-good", "digits", version, 5.0, canary_salt(5.0, 2), previous="1.0.0",
                                    issued=time.time()))
    started = time.monotonic()
    controller, last = run_controller(view, Plan(stage_timeout_s=60.0), 240)
    took = time.monotonic() - started
    assert last is not None and last.action == "done", controller.decisions
    assert [d.pct for d in controller.decisions if d.action == "widen"] == [25.0, 100.0]
    s = summary(view.docs["cams"], view.group_reports("cams"))
    assert s["rollout"]["pct"] == 100.0 and s["rollout"]["committed"] == len(DEVICES), s
    assert s["active"] == {"1.1.0": len(DEVICES)}
    assert all(a.errors == 0 and a.answers > 0 for a in agents)
    assert s["rollout"]["rolled_back"] == s["rollout"]["failed"] == 0 and not s["stale"]
    print(f"50 devices to 100 % in {took:.1f} s")


def test_a_bad_version_stops_at_the_canary_which_rolls_back_and_nobody_else_fetches_it(sim_fleet, broker):
    repo, server, agents, view, tmp = sim_fleet
    version = release(repo, tmp, "digits_bad", probation=SIM_PROBATION, check=False)
    salt = canary_salt(5.0, 2)
    doc = RolloutDoc("r-bad", "digits", version, 5.0, salt, previous="1.0.0", issued=time.time())
    canaries = {d for d in DEVICES if in_cohort(d, doc)}
    view.publish("cams", doc)
    controller, last = run_controller(view, Plan(stage_timeout_s=60.0), 120)
    assert last is not None and last.action == "abort" and last.pct == 5.0, controller.decisions
    assert view.docs["cams"].cancelled
    wait_for(lambda: all(view.group_reports("cams")[d]["state"] == "rolled_back" for d in canaries), 20,
             "the canaries rolled back")
    reports = view.group_reports("cams")
    assert all(reports[d]["reason"].startswith("golden") for d in canaries)
    assert all(r["active"] == "1.0.0" for r in reports.values())
    assert all(r["state"] == "idle" for d, r in reports.items() if d not in canaries)
    fetched = sum(1 for path, _, status in server.requests if path.endswith("digits_bad.tflite") and status == 200)
    assert fetched == len(canaries)  # each canary once, nobody else
    # `edgeloop fleet status` says so, as an operator runs it
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edgeloop.tools.cli", "fleet", "status", "--group", "cams", "--json",
                          "--broker", f"127.0.0.1:{broker.port}", "--fleet", "f1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["rollout"]["cancelled"] and s["rollout"]["rolled_back"] == len(canaries) == s["rollout"]["cohort"]
    assert s["rollout"]["committed"] == 0 and s["active"] == {"1.0.0": len(DEVICES)} and not s["stale"]
    assert set(s["failures"]) == canaries
