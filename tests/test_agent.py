"""The device agent: its configuration, the embedded demo run as a user runs it (SIGTERM
stops it cleanly), and end to end with a simulated MCU, a real Mosquitto and the regional
receiver: an anomaly stops the motor and the events reach the regional database."""

from __future__ import annotations

import signal
import subprocess
import time

from pathlib import Path

import apsw
import pytest

from conftest import SHARED, camera_agent_config, running_agent, wait_for
from edgeloop.runtime.agent import Agent, load_config
from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.outbox import Outbox
from test_cli import EDGELOOP


def test_config_file_environment_and_errors_that_name_the_key(tmp_path):
    assert load_config(environ={}).camera.model == "digits"  # the embedded demo
    path = tmp_path / "agent.toml"
    path.write_text('device = "cam-7"\n[camera]\nfps = 2\nalert_labels = ["1", "2"]\n[mcu]\nenabled = false\n')
    config = load_config(path, environ={"EDGELOOP_DEVICE": "cam-8", "EDGELOOP_BROKER": "h:1883"})
    assert (config.device, config.broker, config.camera.fps, config.camera.alert_labels, config.mcu.enabled) == \
        ("cam-8", "h:1883", 2.0, ("1", "2"), False)
    for text, message in (('colour = "red"\n', "colour: unknown key"),
                          ('[camera]\nfps = "fast"\n', "camera.fps: 'fast' is not a float"),
                          ('[camera]\nfps = 0\n', r"camera.fps: 0.0 is not within 0.01..1e\+06 \(from --config"),
                          ("camera = 3\n", "camera: must be a table"),
                          ("device = \n", "is not valid TOML")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(path, environ={})
    with pytest.raises(ConfigError, match="EDGELOOP_STATUS_EVERY_S: 'soon' is not a number"):
        load_config(environ={"EDGELOOP_STATUS_EVERY_S": "soon"})


def test_the_embedded_demo_shows_inferences_and_stops_cleanly_on_sigterm(tmp_path):
    import os

    proc = subprocess.Popen([EDGELOOP, "run", "--data-dir", str(tmp_path / "data"), "--status-every", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EDGELOOP_METRICS_PORT": "0"})
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "inf/s" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    status = next(line for line in lines if "inf/s" in line)
    assert "rung cpu" in status and "mcu ready" in status
    assert "stopped after" in out
    db = apsw.Connection(str(tmp_path / "data" / "outbox.db"))
    streams = dict(db.execute("SELECT stream, count(*) FROM records GROUP BY stream"))
    assert streams.get("inferences", 0) >= 3  # every inference accepted is in the outbox
    traces = db.execute("SELECT count(DISTINCT trace) FROM records WHERE stream='inferences'").fetchone()[0]
    assert traces == streams["inferences"]  # a trace id per source event


def test_end_to_end_anomaly_actuation_and_events_at_the_regional_edge(tmp_path, broker, regional, monkeypatch):
    config = load_config(environ={"EDGELOOP_BROKER": f"127.0.0.1:{broker.port}", "EDGELOOP_FLEET": "f1",
                                  "EDGELOOP_DATA_DIR": str(tmp_path / "data"), "EDGELOOP_STATUS_EVERY_S": "60",
                                  "EDGELOOP_METRICS_PORT": "0"})
    with running_agent(config) as agent:
        wait_for(lambda: agent.mcu.state == "ready" and agent.inferences >= 3, 20, "the agent serving")
        agent.sim.tell("anomaly on")
        wait_for(lambda: any(cmd == "motor" for line in agent.sim.lines
                             for cmd in line.split()[4:5] if line.startswith("applied")), 10,
                 "the MCU told to stop the motor")
        loop = agent.loop.figures()
        assert loop["commands"] >= 1 and loop["loop_p99_ms"] < 100, loop
        wait_for(lambda: regional.stats()["devices"].get("gw-1", {}).get("records", 0) >= 10, 20,
                 "records at the regional edge")
    rows = regional.db.execute("SELECT stream, count(*) FROM records GROUP BY stream").fetchall()
    streams = dict(rows)
    assert streams.get("events", 0) >= 1 and streams.get("inferences", 0) >= 3, streams
    import msgpack

    events = [msgpack.unpackb(b) for (b,) in regional.db.execute("SELECT body FROM records WHERE stream='events'")]
    faults = [e["args"].get("fault") for e in events if e.get("command") == "motor"]
    assert "bearing" in faults, events  # the vibration model named the fault that stopped the motor


def test_inference_requests_over_mqtt_are_answered_recorded_and_bad_ones_refused(tmp_path, broker, regional):
    import numpy as np

    from edgeloop.runtime.agent.agent import bundled_samples
    from edgeloop.sync.link import topic
    from edgeloop.sync.mqtt_client import BrokerConfig
    from edgeloop.sync.offload import Offloader
    from edgeloop.models.demo_data import vibration_windows

    config = load_config(environ={"EDGELOOP_BROKER": f"127.0.0.1:{broker.port}", "EDGELOOP_FLEET": "f1",
                                  "EDGELOOP_DATA_DIR": str(tmp_path / "data"), "EDGELOOP_STATUS_EVERY_S": "60",
                                  "EDGELOOP_METRICS_PORT": "-1"})
    asker = Offloader(BrokerConfig("127.0.0.1", broker.port), "f1", "tester", request_topic=topic("f1", "gw-1", "req/infer"))
    try:
        with running_agent(config) as agent:
            wait_for(lambda: asker.online.is_set() and agent.responder.connected.is_set()
                     and agent.mcu_part is not None and agent.mcu_part.classifier is not None, 20, "the agent answering")
            for digit in (3, 8):
                answer = asker.request("digits", bundled_samples() / f"digit_{digit}.png", 5.0)
                assert answer["label"] == str(digit) and answer["rung"] == "cpu" and len(answer["trace"]) == 16
            windows, classes = vibration_windows(8, seed=5, classes=(1, 3))
            labels = (Path(__file__).resolve().parent.parent / "models" / "vibration_labels.txt").read_text().split()
            for window, c in zip(windows, classes):
                assert asker.request("vibration", window, 5.0)["label"] == labels[c]
            from edgeloop.runtime.watchdog.rungs import RungFailed

            refusals = [("nope", bundled_samples() / "digit_1.png", "no model for task 'nope'"),
                        ("digits", np.zeros(4), "takes an image"),
                        ("vibration", np.zeros(3, np.int16), "does not fit"),
                        ("digits", b"not an image", "the input does not decode as 'bin'")]
            for task, source, why in refusals:
                with pytest.raises(RungFailed, match=why):
                    asker.request(task, source, 5.0)
            assert asker.request("digits", bundled_samples() / "digit_5.png", 5.0)["label"] == "5"  # still serving
            assert agent.status()["requests"] == {"answered": 11, "failed": 4, "unanswerable": 0, "rate_limited": 0}
    finally:
        asker.close()
    import msgpack

    def answered_at_the_edge() -> list[dict]:
        bodies = (msgpack.unpackb(b) for (b,) in regional.db.execute(
            "SELECT body FROM records WHERE stream='inferences' AND trace IS NOT NULL"))
        return [b for b in bodies if b.get("source") == "mqtt"]

    wait_for(lambda: len(answered_at_the_edge()) == 11, 20, "the answered requests recorded at the regional edge")
    assert {b["task"] for b in answered_at_the_edge()} == {"digits", "vibration"}


class FaultyPrimary:
    """An engine with a fault switch on the camera's primary model (``digits``)."""

    def __init__(self, engine):
        self.engine, self.primary = engine, None

    def __getattr__(self, name):  # the store, stats, ...: the engine's
        return getattr(self.engine, name)

    def load(self, name):
        from edgeloop.tools.testing.faults import FaultyModel

        model = self.engine.load(name)
        if name == "digits":
            self.primary = FaultyModel(model)
            return self.primary
        return model


def test_the_camera_steps_down_to_the_small_digits_model_and_back_and_says_so(tmp_path):
    config = camera_agent_config(tmp_path / "data", fps=50.0)
    with running_agent(config, wrap=FaultyPrimary) as agent:
        faulty = agent.engine
        wait_for(lambda: agent.inferences >= 5 and agent.status()["rung"] == "cpu", 20, "the model serving")
        faulty.primary.fail()
        wait_for(lambda: agent.status()["rung"] == "small", 10, "a step down to digits_small")
        served = agent.inferences
        wait_for(lambda: agent.inferences >= served + 10, 10, "serving on the fallback")
        faulty.primary.heal()
        wait_for(lambda: agent.status()["rung"] == "cpu", 30, "a step back up")
    import msgpack

    with Outbox(tmp_path / "data" / "outbox.db", "gw-1") as box:
        records = box.next_batch(max_bytes=1 << 30, max_records=100_000, live_share=0)
    events = [msgpack.unpackb(r["body"]) for r in records if r["stream"] == "events"]
    rungs = {msgpack.unpackb(r["body"])["rung"] for r in records if r["stream"] == "inferences"}
    ladder = [(e["from"], e["to"]) for e in events if e.get("kind") == "ladder"]
    assert ("cpu", "small") in ladder and ("small", "cpu") in ladder, events
    assert {"cpu", "small"} <= rungs  # every answer says which rung gave it


def test_a_hung_primary_model_never_stalls_the_camera_through_its_side_paths(tmp_path):
    """Hard examples and the index want the primary model's embedding. It comes with that
    model's answer (the same invoke), so a hang only ever meets the ladder, which steps down.
    (Found in review: a second invoke from the camera thread hung with the model.)"""
    config = camera_agent_config(tmp_path / "data", fps=50.0, hard_below=1.01, index_every=1)  # every frame both
    with running_agent(config, wrap=FaultyPrimary) as agent:
        wait_for(lambda: agent.inferences >= 5 and agent.status()["rung"] == "cpu", 20, "the model serving")
        agent.engine.primary.hang()
        try:
            wait_for(lambda: agent.status()["rung"] == "small", 10, "a step down to digits_small")
            served = agent.inferences
            wait_for(lambda: agent.inferences >= served + 20, 10, "the camera serving on while the primary hangs")
        finally:
            agent.engine.primary.heal()


def test_desired_config_over_mqtt_is_merged_applied_reported_and_an_invalid_one_rejected(tmp_path, broker):
    import json

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.engine import Engine, EngineConfig

    states: list[dict] = []
    ops = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ops.on_message = lambda c, u, m: states.append(json.loads(m.payload))
    ops.connect("127.0.0.1", broker.port)
    ops.subscribe("edgeloop/v1/f1/gw-1/state", qos=1)
    ops.loop_start()

    def desire(topic: str, document: dict) -> dict:
        before = len(states)
        ops.publish(topic, json.dumps(document), qos=1, retain=True)
        wait_for(lambda: len(states) > before, 10, f"the state after {document}")
        return states[-1]

    config = load_config(environ={"EDGELOOP_BROKER": f"127.0.0.1:{broker.port}", "EDGELOOP_FLEET": "f1",
                                  "EDGELOOP_GROUP": "line-1", "EDGELOOP_DATA_DIR": str(tmp_path / "data"),
                                  "EDGELOOP_STATUS_EVERY_S": "60", "EDGELOOP_METRICS_PORT": "0"})
    with Engine(EngineConfig(num_threads=1), ModelStore()) as engine:
        agent = Agent(replace_mcu_off(config), engine).start()
        try:
            wait_for(lambda: agent.inferences >= 1, 20, "the agent serving")
            device, group = "edgeloop/v1/f1/gw-1/config", "edgeloop/v1/f1/group/line-1/config"
            state = desire(device, {"camera": {"min_score": 0.99}})
            assert state["status"] == "applied" and state["restarted"] == []
            assert agent.config.camera.min_score == 0.99  # live
            state = desire(group, {"camera": {"fps": 2, "min_score": 0.1}})
            assert state["status"] == "applied"
            assert agent.config.camera.fps == 2.0 and agent.config.camera.min_score == 0.99  # device over group
            thread = agent.supervisor.stages["camera"].thread
            state = desire(device, {"camera": {"min_score": 0.99, "deadline_ms": 250}})
            assert state["restarted"] == ["camera"] and agent.supervisor.stages["camera"].thread is not thread
            served = agent.inferences
            wait_for(lambda: agent.inferences > served, 10, "the restarted camera serving")
            state = desire(device, {"camera": {"fps": -1}})
            assert state["status"] == "rejected" and "camera.fps: -1.0 is not within" in state["reason"]
            assert agent.config.camera.fps == 2.0 and agent.config.camera.deadline_ms == 250  # the last good
            state = desire(device, {"device": "someone-else"})
            assert state["status"] == "rejected" and "cannot be changed over MQTT" in state["reason"]
        finally:
            agent.stop()
            ops.publish("edgeloop/v1/f1/gw-1/config", b"", retain=True)
            ops.loop_stop()


def replace_mcu_off(config):
    from dataclasses import replace

    return replace(config, mcu=replace(config.mcu, enabled=False))


def scrape(url: str) -> dict[str, float]:
    """The agent's /metrics as {name{labels}: value}, through prometheus-client's parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    with urllib.request.urlopen(url, timeout=5) as response:
        for family in text_string_to_metric_families(response.read().decode()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def test_metrics_on_loopback_and_edgeloop_status(tmp_path):
    import json

    config = load_config(environ={"EDGELOOP_DATA_DIR": str(tmp_path / "data"), "EDGELOOP_STATUS_EVERY_S": "60",
                                  "EDGELOOP_METRICS_PORT": "0"})
    with running_agent(config) as agent:
        wait_for(lambda: agent.inferences >= 3 and agent.loop is not None and agent.loop.windows > 5, 20,
                 "the agent serving")
        assert agent.metrics_url.startswith("http://127.0.0.1:")
        m = scrape(agent.metrics_url)
        assert m["edgeloop_inferences_total{rung=cpu,slot=digits,task=digits}"] >= 3
        assert m["edgeloop_inference_latency_seconds_count{rung=cpu,slot=digits,task=digits}"] >= 3
        assert m["edgeloop_outbox_rows{stream=inferences}"] >= 0 and m["edgeloop_link_state{state=none}"] == 1
        source = next(k for k in m if k.startswith("edgeloop_energy_source"))
        assert source in ("edgeloop_energy_source{source=rapl}", "edgeloop_energy_source{source=configured device power}")
        assert m["edgeloop_energy_per_inference_joules"] > 0 and m["edgeloop_cost_per_million_inferences"] > 0
        assert m["edgeloop_cpu_seconds_total{process=agent}"] > 0
        out = subprocess.run([EDGELOOP, "status", "--url", agent.metrics_url, "--json"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert status["inferences"] >= 3 and status["device"] == "gw-1" and status["state"] == "running"
        human = subprocess.run([EDGELOOP, "status", "--url", agent.metrics_url], capture_output=True, text=True,
                               timeout=30)
        assert human.returncode == 0 and "State: running" in human.stdout and "Model: digits" in human.stdout
    down = subprocess.run([EDGELOOP, "status", "--url", agent.metrics_url], capture_output=True, text=True, timeout=30)
    assert down.returncode == 3 and "no agent answers at" in down.stderr  # systemctl's "not running"


def test_structured_logs_are_one_json_object_a_line(tmp_path):
    import json
    import os

    out = subprocess.run([EDGELOOP, "--log-json", "run", "--duration", "2.5", "--status-every", "1", "--data-dir",
                          str(tmp_path / "d")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "EDGELOOP_METRICS_PORT": "0"})
    assert out.returncode == 0, out.stderr
    # Every line, stdout and stderr: ours, the sync worker's, the simulator's, the native libraries'.
    entries = [json.loads(line) for line in (out.stderr + out.stdout).splitlines()]
    assert entries and all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    loggers = {e["logger"] for e in entries}
    assert {"edgeloop.serial", "edgeloop.status", "native"} <= loggers, loggers
    assert any(e["logger"] == "native" and "XNNPACK" in e["msg"] for e in entries)  # LiteRT's own line
    status = next(e for e in entries if e["logger"] == "edgeloop.status")["status"]
    assert status["device"] == "gw-1" and status["inferences"] > 0


def test_the_agent_rides_out_a_link_cut_and_delivers_the_backlog_after_healing(tmp_path, broker, regional):
    from edgeloop.tools.testing.faultproxy import FaultProxy

    proxy = FaultProxy(broker.port)
    config = load_config(environ={"EDGELOOP_BROKER": f"127.0.0.1:{proxy.port}", "EDGELOOP_FLEET": "f1",
                                  "EDGELOOP_DATA_DIR": str(tmp_path / "data"), "EDGELOOP_STATUS_EVERY_S": "60",
                                  "EDGELOOP_METRICS_PORT": "0"})
    try:
        with running_agent(config):
            wait_for(lambda: regional.stats()["devices"].get("gw-1", {}).get("records", 0) >= 5, 20,
                     "records flowing")
            proxy.cut()
            time.sleep(3.0)  # the agent keeps serving; records wait in the outbox
            db = apsw.Connection(str(tmp_path / "data" / "outbox.db"), flags=apsw.SQLITE_OPEN_READONLY)
            backlog = {row[0] for row in db.execute("SELECT id FROM records")}
            db.close()
            assert len(backlog) >= 10 and not backlog <= regional.ids()
            proxy.heal()
            healed = time.monotonic()
            wait_for(lambda: backlog <= regional.ids(), 30, "the backlog at the regional edge")
            print(f"\n{len(backlog)} records queued during a 3 s cut, delivered "
                  f"{time.monotonic() - healed:.2f} s after healing")
    finally:
        proxy.close()


def test_bench_agent_reports_its_keys():
    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.engine import Engine, EngineConfig
    from edgeloop.tools.bench.agent import bench_agent

    with Engine(EngineConfig(num_threads=1), ModelStore()) as engine:
        r = bench_agent(engine, seconds=1.0, shared=SHARED, rounds=2)
    for key in ("startup_to_first_result_s", "agent_rss_mb", "max_rss_mb", "rss_with_children_mb", "inferences_per_s",
                "confirmed_per_s", "unconfirmed_max_ms", "per_frame_cost_us", "frame_p50_us", "invoke_p50_us",
                "loop_p99_ms", "slow_fsync_normal_p99_ms", "slow_fsync_slow_p99_ms", "slow_fsync_p99_ratio",
                "mobilenet_engine_per_s", "mobilenet_agent_per_s", "mobilenet_ratio", "invoke_p99_alone_ms",
                "invoke_p99_busy_ms", "p99_ratio_busy", "p99_ratio_busy_mobilenet"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert r["startup_to_first_result_s"] < 30 and r["loop_commands"] >= 1
    assert r["unconfirmed_max_records"] >= 1 and r["frame_p50_us"] > r["invoke_p50_us"]
    # the fault really ran: a 50 ms fsync holds records unconfirmed longer; nothing confirmed was lost
    assert r["slow_fsync_slow_unconfirmed_max_ms"] > 50 > r["slow_fsync_normal_unconfirmed_max_ms"] / 2
    assert r["slow_fsync_confirmed_lost"] == 0 and len(r["slow_fsync_p99_ratio_rounds"]) == 2
    assert len(r["startup_to_first_result_runs_s"]) == 5
    assert r["mobilenet_all_confirmed"] and len(r["mobilenet_ratio_rounds"]) == 5
    # the load really ran while the busy p99 was taken: a drain near the agent's cap, index writes
    assert r["busy_drained_per_s"] > 1000 and r["busy_indexed_per_s"] > 10
    assert len(r["p99_ratio_busy_rounds_mobilenet"]) == 2
