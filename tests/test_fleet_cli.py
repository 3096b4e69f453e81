"""The operator's commands, run as an operator would (`edgeloop fleet …` in a process of its
own) against a real Mosquitto and 4 light agents: publish a rollout, watch it commit, roll
every device back with one command (to the version the image shipped, nothing fetched), cancel
one mid-way; bad input is refused before anything is published."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import wait_for
from edgeloop.sync.mqtt_client import BrokerConfig
from edgeloop.tools.testing.bundle_server import BundleServer
from edgeloop.tools.testing.fleet_sim import LightAgent, close_all
from test_fleet_rollout import SIM_PROBATION
from test_rollout_agent import release, signed_repo

EDGELOOP = [sys.executable, "-m", "edgeloop.tools.cli"]
DEVICES = ["cli-1", "cli-2", "cli-3", "cli-4"]


def fleet_cmd(port: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([*EDGELOOP, "fleet", *args, "--broker", f"127.0.0.1:{port}", "--fleet", "f1"],
                         capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def status(port: int) -> dict:
    return json.loads(fleet_cmd(port, "status", "--group", "cams", "--json", "--wait", "5").stdout)


@pytest.fixture
def small_fleet(tmp_path, broker):
    repo, root = signed_repo(tmp_path)
    address = BrokerConfig("127.0.0.1", broker.port)
    with BundleServer(repo.repo) as server:
        agents = [LightAgent(d, "f1", "cams", address, tmp_path / d, server.url, root) for d in DEVICES]
        try:
            yield repo, server, agents, tmp_path
        finally:
            subprocess.run([*EDGELOOP, "fleet", "cancel", "--group", "cams", "--broker", f"127.0.0.1:{broker.port}",
                            "--fleet", "f1"], capture_output=True, timeout=60)
            close_all(agents)


def test_rollout_status_and_a_one_command_rollback(broker, small_fleet):
    repo, server, agents, tmp = small_fleet
    port = broker.port
    version = release(repo, tmp, "digits_v2", probation=SIM_PROBATION)
    wait_for(lambda: status(port)["devices"] == len(DEVICES), 30, "every device reporting")
    out = fleet_cmd(port, "rollout", "--group", "cams", "--version", version, "--pct", "100")
    published = json.loads(out.stdout)["published"]
    # previous: what the devices run; the model: the one they report
    assert published["previous"] == "1.0.0" and published["pct"] == 100.0 and published["model"] == "digits"
    wait_for(lambda: status(port)["rollout"]["committed"] == len(DEVICES), 60, "every device committed")
    text = fleet_cmd(port, "status", "--group", "cams").stdout
    assert f"digits {version} at 100 %" in text and "committed 4" in text and "active: 1.1.0 4" in text
    assert "4 committed, 0 rolled back, 0 failed, 0 in progress, 0 stale" in text
    fetched = sum(n for p, n in server.sent.items() if p.endswith(".tflite"))
    fleet_cmd(port, "rollback", "--group", "cams")
    wait_for(lambda: status(port)["active"] == {"1.0.0": len(DEVICES)}
             and status(port)["states"] == {"committed": len(DEVICES)}, 60, "every device back on 1.0.0")
    assert sum(n for p, n in server.sent.items() if p.endswith(".tflite")) == fetched  # nothing fetched to go back
    assert all(a.camera.primary.entry.version == "1.0.0" and a.errors == 0 for a in agents)


def test_pause_and_cancel_are_obeyed_and_bad_input_is_refused_before_publishing(broker, small_fleet):
    repo, server, agents, tmp = small_fleet
    port = broker.port
    version = release(repo, tmp, "digits_v2", probation=SIM_PROBATION)
    for args, why in ((["--version", version, "--pct", "101"], "--pct: 101.0 is not within 0..100"),
                      (["--version", version, "--pct", "nan"], "is not within 0..100"),
                      (["--version", "1/2"], "'version'"),
                      (["--version", version, "--deadline-s", "-5"], "--deadline-s")):
        out = fleet_cmd(port, "rollout", "--group", "cams", "--model", "digits", *args, check=False)
        assert out.returncode == 2 and why in out.stderr, (args, out.stderr)
    assert status(port)["rollout"] is None  # nothing was published
    out = fleet_cmd(port, "pause", "--group", "cams", check=False)
    assert out.returncode == 2 and "no rollout document" in out.stderr
    fleet_cmd(port, "rollout", "--group", "cams", "--model", "digits", "--version", version, "--pct", "100")
    # Some devices commit before the pause and the cancel (the cancel must bring them back, paused
    # or not, through a probation on the previous version that must not undo the way back).
    wait_for(lambda: status(port)["rollout"]["committed"] >= 1, 30, "a first device committed")
    fleet_cmd(port, "rollout", "--group", "cams", "--pause")
    out = fleet_cmd(port, "rollout", "--group", "cams", "--widen", check=False)
    assert out.returncode == 2 and "--widen needs --pct" in out.stderr
    fleet_cmd(port, "cancel", "--group", "cams")
    # Whatever each device had reached (some commit within a second), a cancel ends on the previous version.
    def settled() -> bool:
        s = status(port)
        return s["active"] == {"1.0.0": len(DEVICES)} and all(r["pending"] is None for r in s["reports"].values())

    wait_for(settled, 60, "every device on 1.0.0 after the cancel")
    s = status(port)
    assert s["rollout"]["cancelled"] and all(r["note"] == "cancelled" for r in s["reports"].values())
