"""A rollout on one real agent: a TUF repository made by `edgeloop release`'s code and served by
a real HTTP server on loopback, the rollout document retained on a real Mosquitto, the camera
serving the bundled digits model at a high frame rate throughout. A good version switches
through the router and commits after its probation; a bad one never serves (its golden set
fails here), a slow one is rolled back on its p95, and each is marked bad."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import REPO, camera_agent_config, running_agent, wait_for
from edgeloop.runtime.agent.config import RolloutConfig
from edgeloop.sync.bundle import ProbationSpec
from edgeloop.sync.rollout_doc import RolloutDoc
from edgeloop.tools.release.bundle import make_bundle
from edgeloop.tools.release.repository import ReleaseRepository
from edgeloop.tools.testing.bundle_server import BundleServer

CANDIDATES = REPO / "tests" / "data" / "rollout"
PROBATION = ProbationSpec(window_s=1.5, min_requests=20, p95_ms=25.0, max_error_rate=0.05, max_stepdowns=0)


class Operator:
    """The fleet operator's client: publishes rollout documents, collects reported ones."""

    def __init__(self, port: int, fleet: str = "f1") -> None:
        self.fleet = fleet
        self.reported: dict[str, list[dict]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(f"edgeloop/v1/{fleet}/+/state/rollout", qos=1)
        assert done.wait(5)

    def _on_message(self, client, userdata, message) -> None:
        device = message.topic.split("/")[3]
        self.reported.setdefault(device, []).append(json.loads(message.payload))

    def last(self, device: str) -> dict:
        got = self.reported.get(device)
        return got[-1] if got else {}

    def rollout(self, group: str, doc: RolloutDoc) -> None:
        self.client.publish(f"edgeloop/v1/{self.fleet}/group/{group}/rollout", doc.to_json(), qos=1,
                            retain=True).wait_for_publish(5)

    def close(self, group: str = "cams") -> None:
        self.client.publish(f"edgeloop/v1/{self.fleet}/group/{group}/rollout", b"", qos=1, retain=True)
        self.client.loop_stop()
        self.client.disconnect()


def release(repo: ReleaseRepository, tmp: Path, name: str, probation: ProbationSpec = PROBATION,
            check: bool = True) -> str:
    folder = tmp / f"bundle-{name}"
    spec = make_bundle(CANDIDATES / f"{name}.toml", "digits", folder, probation, check=check)
    repo.add_bundle("cams", spec, folder)
    repo.publish()
    return spec.version


def signed_repo(tmp_path: Path) -> tuple[ReleaseRepository, Path]:
    """A fresh repository for group ``cams``, and its root.json as a device image ships it."""
    repo = ReleaseRepository(tmp_path / "repo", tmp_path / "keys")
    repo.init(["cams"])
    image_root = tmp_path / "image-root.json"
    shutil.copyfile(repo.metadata / "root.json", image_root)
    return repo, image_root


@pytest.fixture
def fleet(tmp_path, broker):
    repo, image_root = signed_repo(tmp_path)
    ops = Operator(broker.port)
    with BundleServer(repo.repo) as server:
        yield repo, server, image_root, ops
    ops.close()


def agent_config(tmp_path: Path, port: int, server: BundleServer, root: Path, device: str = "cam-1"):
    config = camera_agent_config(tmp_path / device, fps=60.0)
    return replace(config, device=device, fleet="f1", group="cams", broker=f"127.0.0.1:{port}",
                   rollout=RolloutConfig(repo_url=server.url, root=str(root), retry_s=1.0))


def serving_gaps(agent, seconds: float) -> float:
    """The longest time without a new answer over ``seconds`` (polled every 5 ms)."""
    longest, last_n, last_t = 0.0, agent.inferences, time.monotonic()
    end = last_t + seconds
    while time.monotonic() < end:
        time.sleep(0.005)
        now = time.monotonic()
        if agent.inferences != last_n:
            last_n, last_t = agent.inferences, now
        longest = max(longest, now - last_t)
    return longest


def test_a_good_version_switches_without_a_gap_and_commits_after_probation(tmp_path, broker, fleet):
    repo, server, root, ops = fleet
    version = release(repo, tmp_path, "digits_v2")
    with running_agent(agent_config(tmp_path, broker.port, server, root)) as agent:
        wait_for(lambda: agent.inferences > 20 and ops.last("cam-1").get("state") == "idle", 20, "serving, reported idle")
        assert agent.status(fast=True)["models"]["digits"]["version"] == "1.0.0"
        ops.rollout("cams", RolloutDoc("r1", "digits", version, 100.0, "r1", previous="1.0.0"))
        wait_for(lambda: ops.last("cam-1").get("state") == "probation", 20, "the switch")
        gap = serving_gaps(agent, 1.0)
        wait_for(lambda: ops.last("cam-1").get("state") == "committed", 20, "the commit")
        got = ops.last("cam-1")
        assert got["active"] == "1.1.0" and got["standby"] == "1.0.0" and got["verdict"]["passed"]
        assert got["targets_version"] >= 2 and len(got["bundle_sha256"]) == 64 and got["bytes"] > 0
        status = agent.status(fast=True)
        assert status["route"]["digits"]["primary"] == "digits@1.1.0"
        assert status["models"]["digits@1.1.0"]["version"] == "1.1.0" and "digits" not in status["models"]
        assert status["rollout"]["state"] == "committed"
        from edgeloop.sync.bundle_trust import CLOCK_FLOOR

        assert agent.rollout.store.state.clock_floor > CLOCK_FLOOR  # the clock's high-water mark, kept
        assert gap < 0.25, f"serving stopped for {gap:.3f} s around the switch"
    # The next start serves the committed version from its slot, without the broker's help.
    with running_agent(agent_config(tmp_path, broker.port, server, root)) as agent:
        wait_for(lambda: agent.inferences > 5, 20, "serving again")
        assert agent.status(fast=True)["models"]["digits"]["version"] == "1.1.0"


def test_a_version_that_fails_its_golden_set_here_never_serves_and_is_marked_bad(tmp_path, broker, fleet):
    repo, server, root, ops = fleet
    version = release(repo, tmp_path, "digits_bad", check=False)
    with running_agent(agent_config(tmp_path, broker.port, server, root)) as agent:
        wait_for(lambda: agent.inferences > 20, 20, "serving")
        ops.rollout("cams", RolloutDoc("r1", "digits", version, 100.0, "r1"))
        wait_for(lambda: ops.last("cam-1").get("state") == "rolled_back", 20, "the rejection")
        got = ops.last("cam-1")
        assert got["active"] == "1.0.0" and got["reason"].startswith("golden")
        assert any(k.startswith("1.2.0") for k in got["bad"])
        assert all(slot == "digits" for slot, _ in agent.served_by), agent.served_by  # never served
        fetched = dict(server.sent)
        time.sleep(2.5)  # retry_s is 1 s: the bad bundle is not fetched again
        assert {p: n for p, n in server.sent.items() if p.startswith("targets/")} == \
            {p: n for p, n in fetched.items() if p.startswith("targets/")}


def test_a_slow_version_is_rolled_back_on_its_p95_within_the_window(tmp_path, broker, fleet):
    repo, server, root, ops = fleet
    slow = replace(PROBATION, p95_ms=1.0, window_s=2.0)
    version = release(repo, tmp_path, "digits_slow", probation=slow)
    with running_agent(agent_config(tmp_path, broker.port, server, root)) as agent:
        wait_for(lambda: agent.inferences > 20, 20, "serving")
        ops.rollout("cams", RolloutDoc("r1", "digits", version, 100.0, "r1"))
        wait_for(lambda: ops.last("cam-1").get("state") == "probation", 20, "the switch")
        switched = time.monotonic()
        wait_for(lambda: ops.last("cam-1").get("state") == "rolled_back", 20, "the rollback")
        took = time.monotonic() - switched
        got = ops.last("cam-1")
        assert got["reason"].startswith("p95") and got["active"] == "1.0.0"
        assert took <= slow.window_s + 5.0, f"rolled back {took:.1f} s after the switch"
        print(f"rolled back {took:.2f} s after the switch (window {slow.window_s:g} s)")
        wait_for(lambda: agent.status(fast=True)["route"]["digits"]["primary"] == "digits", 5, "the route back")
        n = agent.inferences
        wait_for(lambda: agent.inferences > n + 10, 10, "serving after the rollback")


def test_a_cancel_is_obeyed_mid_download_and_the_camera_serves_on(tmp_path, broker, fleet):
    repo, server, root, ops = fleet
    version = release(repo, tmp_path, "digits_v2")
    server.knobs.slow_bps = 2000.0  # the model file would take about 16 s
    with running_agent(replace(agent_config(tmp_path, broker.port, server, root), metrics_port=0)) as agent:
        wait_for(lambda: agent.inferences > 20, 20, "serving")
        doc = RolloutDoc("r1", "digits", version, 100.0, "r1", previous="1.0.0")
        ops.rollout("cams", doc)
        wait_for(lambda: ops.last("cam-1").get("progress", {}).get("have", 0) > 0, 20, "the download under way")
        # The progress in metrics (promtool-clean) and in the status line.
        from test_agent import scrape

        wait_for(lambda: scrape(agent.metrics_url)["edgeloop_rollout_download_bytes"] > 0, 10, "progress in metrics")
        m = scrape(agent.metrics_url)
        assert m["edgeloop_rollout_state{state=downloading}"] == 1.0 and m["edgeloop_rollout_state{state=idle}"] == 0.0
        assert m["edgeloop_rollout_download_length_bytes"] > m["edgeloop_rollout_download_bytes"] > 0
        promtool = shutil.which("promtool")
        if promtool is not None:  # (test_agent_field fails loudly without it)
            import subprocess
            import urllib.request

            text = urllib.request.urlopen(agent.metrics_url, timeout=5).read()
            check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
            assert check.returncode == 0 and not check.stdout.strip(), check
        from edgeloop.runtime.agent.status import status_line

        assert f"| rollout downloading {version} " in status_line(agent.status(fast=True))
        ops.rollout("cams", replace(doc, cancelled=True))
        cancelled = time.monotonic()
        wait_for(lambda: ops.last("cam-1").get("state") == "idle", 10, "the cancel obeyed")
        assert time.monotonic() - cancelled < 5.0
        got = ops.last("cam-1")
        assert got["reason"] == "cancelled" and got["active"] == "1.0.0" and got["note"] == "cancelled"
        n = agent.inferences
        wait_for(lambda: agent.inferences > n + 10, 10, "serving on")


def test_a_404_fails_the_rollout_after_a_few_tries_and_is_not_fetched_in_a_loop(tmp_path, broker, fleet):
    repo, server, root, ops = fleet
    version = release(repo, tmp_path, "digits_v2")
    server.knobs.always_status = {".digits_v2.tflite": 404}  # signed, but the mirror lost the file
    with running_agent(agent_config(tmp_path, broker.port, server, root)) as agent:
        wait_for(lambda: agent.inferences > 5, 20, "serving")
        ops.rollout("cams", RolloutDoc("r1", "digits", version, 100.0, "r1"))
        wait_for(lambda: ops.last("cam-1").get("state") == "failed", 60, "the failure")
        got = ops.last("cam-1")
        assert "404" in got["reason"] and got["active"] == "1.0.0"
        def asked() -> int:  # (TUF's probes for a next root.json are 404s too, and fine)
            return sum(1 for path, _, status in server.requests if status == 404 and path.endswith(".tflite"))

        before = asked()
        time.sleep(3.0)  # retry_s is 1 s: the rollout is over for this bundle
        assert asked() == before == 3


def test_paused_waits_out_of_cohort_does_nothing_and_frozen_metadata_waits_until_mended(tmp_path, broker, fleet):
    repo, server, root, ops = fleet
    version = release(repo, tmp_path, "digits_v2")
    with running_agent(agent_config(tmp_path, broker.port, server, root)) as agent:
        wait_for(lambda: agent.inferences > 5, 20, "serving")
        ops.client.publish("edgeloop/v1/f1/group/cams/rollout", b'{"id": "r/1", "pct": 5}', qos=1,
                           retain=True).wait_for_publish(5)  # hostile or broken: refused, named
        wait_for(lambda: "'id'" in (ops.last("cam-1").get("document_error") or ""), 10, "the document refused")
        assert ops.last("cam-1")["state"] == "idle"
        doc = RolloutDoc("r1", "digits", version, 0.0, "r1")
        ops.rollout("cams", doc)
        wait_for(lambda: (ops.last("cam-1").get("note") or "").startswith("not in the cohort"), 10, "out of the cohort")
        ops.rollout("cams", replace(doc, pct=100.0, paused=True))
        wait_for(lambda: ops.last("cam-1").get("note") == "paused", 10, "paused")
        repo.timestamp(days=-1)  # the release machine stopped signing: frozen metadata
        ops.rollout("cams", replace(doc, pct=100.0))
        wait_for(lambda: "freeze" in (ops.last("cam-1").get("note") or ""), 10, "the freeze refused")
        assert not any(p.startswith("targets/") for p in server.sent)  # nothing fetched so far
        assert ops.last("cam-1")["state"] == "idle"
        repo.timestamp(days=1)  # mended: the same document goes on
        wait_for(lambda: ops.last("cam-1").get("state") == "committed", 30, "the commit")


def test_a_prewarmed_model_serves_a_new_thread_without_building_an_interpreter_in_it():
    """The switch's first frame on the camera's thread takes a ready interpreter (measured before:
    that frame took 2-5 ms on a 0.3 ms model)."""
    import numpy as np

    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.engine import Engine, EngineConfig

    with Engine(EngineConfig(num_threads=1), ModelStore()) as engine:
        model = engine.load("digits")
        model.prewarm()
        assert model.stats.interpreters == 2
        zeros = np.zeros(model.inputs[0].shape, model.inputs[0].dtype)
        out: list = []
        t = threading.Thread(target=lambda: out.append(model.run(zeros)))
        t.start()
        t.join()
        assert out and model.stats.interpreters == 2  # the spare was taken, none built
        t = threading.Thread(target=lambda: out.append(model.run(zeros)))
        t.start()
        t.join()
        assert model.stats.interpreters == 3  # no spare left: built as before


@pytest.mark.parametrize("bundle, ends, serving", [("digits_v2", "committed", "1.1.0"),
                                                   ("digits_slow", "rolled_back", "1.0.0")],
                         ids=["commits-on-the-rebuilt-camera", "rolls-back-by-rebuilding-it"])
def test_a_desired_config_that_rebuilds_the_camera_during_probation_does_not_lose_it(tmp_path, broker, fleet, bundle,
                                                                                      ends, serving):
    """The camera is rebuilt on the candidate and the probation follows it; a rollback then
    rebuilds it on the old version (it once 'switched back' to the candidate's own slot)."""
    repo, server, root, ops = fleet
    version = release(repo, tmp_path, bundle, probation=replace(PROBATION, window_s=3.0,
                                                                p95_ms=1.0 if bundle == "digits_slow" else 25.0))
    with running_agent(agent_config(tmp_path, broker.port, server, root)) as agent:
        wait_for(lambda: agent.inferences > 20 and agent.desired is not None, 20, "serving")
        ops.rollout("cams", RolloutDoc("r1", "digits", version, 100.0, "r1"))
        wait_for(lambda: ops.last("cam-1").get("state") == "probation", 20, "the switch")
        part = agent.camera
        ops.client.publish("edgeloop/v1/f1/cam-1/config", json.dumps({"camera": {"deadline_ms": 150.0}}), qos=1,
                           retain=True).wait_for_publish(5)
        wait_for(lambda: agent.camera is not part, 10, "the camera rebuilt")
        wait_for(lambda: ops.last("cam-1").get("state") == ends, 30, ends)
        got = ops.last("cam-1")
        assert got["active"] == serving and got["verdict"]["passed"] == (ends == "committed")
        if ends == "rolled_back":
            assert got["reason"].startswith("p95")
        wait_for(lambda: agent.camera.primary.entry.version == serving, 10, f"the camera on {serving}")
        n = agent.inferences
        wait_for(lambda: agent.inferences > n + 10, 10, "serving on")
        assert agent.status(fast=True)["models"]["digits"]["version"] == serving
    ops.client.publish("edgeloop/v1/f1/cam-1/config", b"", qos=1, retain=True).wait_for_publish(5)


def test_a_damaged_slot_or_state_file_never_stops_the_camera(tmp_path, broker, fleet):
    repo, server, root, ops = fleet
    version = release(repo, tmp_path, "digits_v2")
    config = agent_config(tmp_path, broker.port, server, root)
    with running_agent(config) as agent:
        ops.rollout("cams", RolloutDoc("r1", "digits", version, 100.0, "r1"))
        wait_for(lambda: ops.last("cam-1").get("state") == "committed", 30, "the commit")
        slot = config.data_path / "rollout" / "slots" / agent.rollout.store.state.serving
    ops.close()  # no document: what happens next is the start's alone
    model = slot / "digits_v2.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")  # a flipped byte on the card
    with running_agent(config) as agent:
        wait_for(lambda: agent.inferences > 5, 20, "serving")
        assert agent.status(fast=True)["models"]["digits"]["version"] == "1.0.0"  # the bundled model, and said:
        assert "slot" in agent.rollout.store.state.reason and agent.rollout.store.state.serving_version == "1.0.0"
    state = config.data_path / "rollout" / "state.db"
    for extra in state.parent.glob("state.db-*"):
        extra.unlink()
    state.write_bytes(b"not a database" * 100)
    with running_agent(config) as agent:
        wait_for(lambda: agent.inferences > 5, 20, "serving without rollouts")
        assert agent.rollout is None and "rollout" in agent.status(fast=True)["last_error"]
