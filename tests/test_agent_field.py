"""What was found when the agent was tried as a user and their tools would try it (issue 13's
field failures 1-15), each against the real thing: systemd's notify socket, a folder with a bad
file, a real Mosquitto and paho clients, a small tmpfs for a full disk, promtool."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import IMAGES, camera_agent_config, running_agent, tmpfs, wait_for
from edgeloop.runtime.agent import Agent, load_config
from edgeloop.runtime.agent.camera import bundled_samples
from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.outbox import Outbox
from test_cli import EDGELOOP


def outbox_streams(data: Path) -> dict[str, int]:
    with Outbox(data / "outbox.db", "gw-1") as box:
        return {k: v["rows"] for k, v in box.stats()["streams"].items()}


class Ops:
    """A fleet operator's (or anyone's) paho client on the test broker."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, Properties | None]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.properties))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5)

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# 1 -------------------------------------------------------------------------------------------

def test_1_systemd_gets_ready_watchdog_status_and_stopping_from_edgeloop_run(tmp_path, notify_socket):
    path, sock = notify_socket
    sock.settimeout(0.5)
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000", "EDGELOOP_METRICS_PORT": "-1"}
    proc = subprocess.Popen([EDGELOOP, "run", "--data-dir", str(tmp_path / "d"), "--status-every", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    got: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 3:
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "STOPPING=1" not in got:
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert got and got[0] == "READY=1", got  # after the first result, before any ping
    assert got.count("WATCHDOG=1") >= 3 and any(m.startswith("STATUS=edgeloop:") for m in got), got
    assert "STOPPING=1" in got


def test_1_the_watchdog_is_not_fed_while_a_stage_stays_down(tmp_path, notify_socket, monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")

    def pings(seconds: float) -> int:
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                n += sock.recv(4096) == b"WATCHDOG=1"
            except socket.timeout:
                pass
        return n

    with running_agent(camera_agent_config(tmp_path / "data", fps=50.0)) as agent:
        wait_for(lambda: agent.inferences > 5, 20, "the camera serving")
        assert pings(1.0) >= 3
        part = agent.camera

        def broken(*args, **kwargs):
            raise RuntimeError("a wedged decoder")

        part.serve = broken
        wait_for(lambda: agent.status(fast=True)["state"] == "degraded", 10, "the camera stage marked down")
        pings(0.3)  # one in flight when it broke
        assert pings(1.5) == 0  # systemd would restart us
        s = agent.status(fast=True)
        assert s["stages"]["camera"]["restarts"] >= 1 and "a wedged decoder" in s["last_error"]
        del part.serve  # healed: the supervisor's next restart serves again
        wait_for(lambda: agent.status(fast=True)["state"] == "running", 15, "the camera stage back")
        assert pings(1.0) >= 2


# 2 -------------------------------------------------------------------------------------------

def test_2_an_undecodable_file_in_the_camera_folder_is_skipped_and_the_camera_serves_on(tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / "0_text.png").write_text("this is not an image")
    shutil.copy(bundled_samples() / "digit_7.png", folder / "1_seven.png")
    (folder / "2_half.jpg").write_bytes((IMAGES / "parrot.jpg").read_bytes()[:300])  # a half-written JPEG
    shutil.copy(bundled_samples() / "digit_3.png", folder / "3_three.png")
    with running_agent(camera_agent_config(tmp_path / "data", folder=str(folder), fps=100.0)) as agent:
        wait_for(lambda: agent.inferences >= 40, 20, "the camera serving past the bad files")
        assert agent.camera.source.rejected >= 2
        assert agent.status(fast=True)["stages"]["camera"] == {"state": "running", "restarts": 0, "last_error": "",
                                                              "last_error_at": None}


# 3 -------------------------------------------------------------------------------------------

def test_3_the_mcu_telemetry_and_event_streams_are_written(tmp_path):
    config = load_config(environ={"EDGELOOP_DATA_DIR": str(tmp_path / "data"), "EDGELOOP_METRICS_PORT": "-1",
                                  "EDGELOOP_STATUS_EVERY_S": "60"})
    with running_agent(config) as agent:
        wait_for(lambda: agent.loop is not None and agent.loop.windows > 10, 20, "windows from the MCU")
        agent.sim.tell("event overcurrent")
        time.sleep(2.5)  # telemetry (and the MCU's events with it) comes once a second
    streams = outbox_streams(tmp_path / "data")
    assert streams.get("telemetry", 0) >= 2, streams
    assert streams.get("mcu-events", 0) >= 1, streams


# 4 -------------------------------------------------------------------------------------------

def test_4_regional_run_and_outbox_drain_default_to_the_agents_fleet(tmp_path, broker):
    from edgeloop.runtime.agent import AgentConfig
    from edgeloop.tools.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["regional", "run", "--db", "x"]).fleet == AgentConfig().fleet
    assert parser.parse_args(["outbox", "drain", "--db", "x", "--broker", "h", "--device", "d"]).fleet == \
        AgentConfig().fleet
    db = tmp_path / "regional.db"
    receiver = subprocess.Popen([EDGELOOP, "regional", "run", "--db", str(db), "--broker",
                                 f"127.0.0.1:{broker.port}", "--client-id", "r1"], stdout=subprocess.PIPE, text=True)
    try:
        assert "receiving" in receiver.stdout.readline()
        time.sleep(0.3)
        run = subprocess.run([EDGELOOP, "run", "--duration", "3", "--data-dir", str(tmp_path / "d"), "--broker",
                              f"127.0.0.1:{broker.port}", "--metrics-port", "-1"], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr

        def stored() -> int:
            if not db.exists():
                return 0
            out = subprocess.run([EDGELOOP, "regional", "stats", "--db", str(db), "--json"], capture_output=True,
                                 text=True)
            return json.loads(out.stdout)["devices"].get("gw-1", {}).get("records", 0) if out.returncode == 0 else 0

        wait_for(lambda: stored() >= 5, 20, "the agent's records at the receiver, both on their defaults")
    finally:
        receiver.terminate()
        receiver.wait(10)


# 5 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--device", "a/b"), ("--device", "gw+1"), ("--device", "gw#"),
                                        ("--fleet", "f/x"), ("--device", ""), ("--device", "group")])
def test_5_names_that_would_break_a_topic_are_refused_before_anything_starts(tmp_path, flag, value):
    data = tmp_path / "d"
    out = subprocess.run([EDGELOOP, "run", "--duration", "2", "--data-dir", str(data), flag, value,
                          "--broker", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "ConfigError" in out.stderr and "Traceback" not in out.stderr
    assert ("cannot be one MQTT topic level" in out.stderr or "is reserved" in out.stderr), out.stderr
    assert not data.exists()  # nothing started


# 6 -------------------------------------------------------------------------------------------

def test_6_the_last_good_desired_config_survives_a_restart_with_a_rejected_document_retained(tmp_path, broker):
    ops = Ops(broker.port)
    ops.subscribe("edgeloop/v1/f1/gw-1/state")
    topic = "edgeloop/v1/f1/gw-1/config"
    config = camera_agent_config(tmp_path / "data")
    config = replace(config, broker=f"127.0.0.1:{broker.port}", fleet="f1")

    def last_state() -> dict:
        payloads = ops.on("edgeloop/v1/f1/gw-1/state")
        return json.loads(payloads[-1]) if payloads else {}

    try:
        with running_agent(config) as agent:
            wait_for(lambda: agent.desired is not None and agent.inferences > 0, 20, "the agent serving")
            ops.client.publish(topic, json.dumps({"camera": {"min_score": 0.9}}), qos=1, retain=True)
            wait_for(lambda: agent.config.camera.min_score == 0.9, 10, "the good document applied")
            ops.client.publish(topic, json.dumps({"camera": {"fps": -1}}), qos=1, retain=True)
            wait_for(lambda: last_state().get("status") == "rejected", 10, "the bad one rejected")
        state = last_state()
        assert "camera.fps" in state["reason"] and state["in_force"]["layers"] == {"device": {"camera": {"min_score": 0.9}}}
        with running_agent(config) as agent:  # the bad document is still retained on the broker
            wait_for(lambda: agent.inferences > 0 and agent.desired.rejected >= 1, 20, "the restart")
            assert agent.config.camera.min_score == 0.9  # the last good, not the file's 0.5
            assert agent.status(fast=True)["desired"]["status"] == "rejected"
    finally:
        ops.client.publish(topic, b"", retain=True)
        ops.close()


# 7 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,env,file,message", [
    (["--status-every", "0"], {}, "", r"status_every_s: 0.0 is not within 0.1..86400 \(from --status-every\)"),
    ([], {"EDGELOOP_METRICS_PORT": "70000"}, "", r"metrics_port: 70000 is not within -1..65535 "
                                                 r"\(from EDGELOOP_METRICS_PORT\)"),
    ([], {"EDGELOOP_METRICS_PORT": "94.5"}, "", r"metrics_port: 94.5 is not a int"),
    ([], {}, "metrics_port = 70000\n", r"metrics_port: 70000 is not within"),
    ([], {}, "[camera]\nfps = nan\n", r"camera.fps: nan is not a finite number"),
    ([], {}, "[camera]\nmin_score = 1.5\n", r"camera.min_score: 1.5 is not within 0..1"),
    ([], {}, "[camera]\nmodel = \"nope\"\n", r"camera.model: no model named 'nope'"),
    ([], {}, "[camera]\nfolder = \"/nonexistent\"\n", r"camera.folder: /nonexistent is not a folder"),
])
def test_7_flags_environment_and_file_pass_one_validation_before_anything_starts(tmp_path, args, env, file, message):
    data = tmp_path / "d"
    cmd = [EDGELOOP, "run", "--duration", "2", "--data-dir", str(data), *args]
    if file:
        (tmp_path / "a.toml").write_text(file)
        cmd += ["--config", str(tmp_path / "a.toml")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    import re

    assert re.search(message, out.stderr), out.stderr
    assert not (data / "outbox.db").exists()  # validated before anything started


# 8 -------------------------------------------------------------------------------------------

def test_8_the_metrics_pass_promtool_and_their_series_stay(tmp_path):
    from test_agent import scrape

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus for it", pytrace=False)
    config = load_config(environ={"EDGELOOP_DATA_DIR": str(tmp_path / "data"), "EDGELOOP_STATUS_EVERY_S": "60",
                                  "EDGELOOP_METRICS_PORT": "0"})
    with running_agent(config) as agent:
        wait_for(lambda: agent.inferences >= 3 and agent.loop is not None and agent.loop.windows > 5, 20, "serving")
        import urllib.request

        text = urllib.request.urlopen(agent.metrics_url, timeout=5).read()
        m = scrape(agent.metrics_url)
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
    assert 'le="0.001"' in text.decode()  # a histogram with buckets for millisecond answers
    assert not any("quantile" in k for k in m) and not any("per_second" in k for k in m)
    for stream in ("inferences", "events", "telemetry", "hard-examples"):  # there even when empty
        assert f"edgeloop_outbox_rows{{stream={stream}}}" in m and f"edgeloop_records_dropped_total{{stream={stream}}}" in m


# 9 -------------------------------------------------------------------------------------------

def test_9_a_delegate_fallback_is_counted_in_metrics_and_shown_by_status(tmp_path):
    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.delegates import DelegateSpec
    from edgeloop.runtime.engine import Engine, EngineConfig
    from test_agent import scrape

    config = replace(camera_agent_config(tmp_path / "data"), metrics_port=0)
    with Engine(EngineConfig(num_threads=1, delegate=DelegateSpec("edgetpu")), ModelStore()) as engine:
        agent = Agent(config, engine).start()
        try:
            wait_for(lambda: agent.inferences > 0, 20, "serving on the CPU variant")
            s = agent.status()
            assert s["fallbacks"] and s["fallbacks"][0]["model"] == "digits"
            assert s["models"]["digits"]["fallback"] and "delegate fallback" in __import__(
                "edgeloop.runtime.agent.status", fromlist=["status_line"]).status_line(s)
            m = scrape(agent.metrics_url)
            assert m["edgeloop_delegate_fallbacks_total{model=digits,wanted=edgetpu}"] >= 1
            human = subprocess.run([EDGELOOP, "status", "--url", agent.metrics_url], capture_output=True, text=True,
                                   timeout=30)
            assert "Fallback: digits wanted edgetpu" in human.stdout, human.stdout
        finally:
            agent.stop()


# 10 ------------------------------------------------------------------------------------------

def test_10_status_at_a_page_that_is_no_agent_env_port_and_exit_codes(tmp_path):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>a router's admin page</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = subprocess.run([EDGELOOP, "status", "--url", f"http://127.0.0.1:{server.server_port}/"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and "is not an edgeloop agent" in out.stderr and "Traceback" not in out.stderr
    finally:
        server.shutdown()
    config = replace(camera_agent_config(tmp_path / "data"), metrics_port=0)
    with running_agent(config) as agent:
        port = agent.metrics_server.server_port
        out = subprocess.run([EDGELOOP, "status", "--json"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "EDGELOOP_METRICS_PORT": str(port)})
        assert out.returncode == 0 and json.loads(out.stdout)["device"] == "gw-1"
    out = subprocess.run([EDGELOOP, "status"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "EDGELOOP_METRICS_PORT": str(port)})
    assert out.returncode == 3 and "no agent answers" in out.stderr  # systemctl's "not running"


# 11 ------------------------------------------------------------------------------------------

def test_11_a_second_agent_on_the_same_data_dir_is_refused(tmp_path):
    config = camera_agent_config(tmp_path / "data")
    with running_agent(config) as agent:
        wait_for(lambda: agent.inferences > 0, 20, "the first agent serving")
        with pytest.raises(ConfigError, match=rf"another agent \(pid {os.getpid()}\) is running on"):
            Agent(config, agent.engine).start()
        assert agent.status(fast=True)["state"] == "running"
    out = subprocess.run([EDGELOOP, "run", "--duration", "1", "--data-dir", str(tmp_path / "data"),
                          "--metrics-port", "-1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr  # the lock went with the first agent


# 12, 15 --------------------------------------------------------------------------------------

def request_props(reply_to: str, cid: bytes | None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_to
    if cid is not None:
        props.CorrelationData = cid
    return props


def test_12_15_requests_without_correlation_data_errors_without_internals_and_a_wildcard_reply_topic(
        tmp_path, broker):
    config = replace(camera_agent_config(tmp_path / "data"), broker=f"127.0.0.1:{broker.port}", fleet="f1")
    ops = Ops(broker.port)
    ops.subscribe("edgeloop/v1/f1/gw-1/res/#")
    req = "edgeloop/v1/f1/gw-1/req/infer"
    image = (bundled_samples() / "digit_4.png").read_bytes()
    try:
        with running_agent(config) as agent:
            wait_for(lambda: agent.responder is not None and agent.responder.connected.is_set(), 20, "answering")
            time.sleep(0.2)
            ops.client.publish(req, msgpack.packb({"task": "digits", "input": image, "kind": "png"}), qos=1,
                               properties=request_props("edgeloop/v1/f1/gw-1/res/no-cid", None))
            wait_for(lambda: ops.on("edgeloop/v1/f1/gw-1/res/no-cid"), 10, "an answer without correlation data")
            answer = msgpack.unpackb(ops.on("edgeloop/v1/f1/gw-1/res/no-cid")[0])
            assert answer["ok"] and answer["result"]["label"] == "4"
            bad = [(msgpack.packb({"task": "digits"}) + b"extra", "bad-1"),
                   (msgpack.packb({"task": "digits", "input": b"garbage", "kind": "png"}), "bad-2"),
                   (b"\xc1", "bad-3")]
            for payload, name in bad:
                ops.client.publish(req, payload, qos=1, properties=request_props(f"edgeloop/v1/f1/gw-1/res/{name}", b"c"))
            wait_for(lambda: all(ops.on(f"edgeloop/v1/f1/gw-1/res/{n}") for _, n in bad), 10, "the refusals")
            for _, name in bad:
                error = msgpack.unpackb(ops.on(f"edgeloop/v1/f1/gw-1/res/{name}")[0])["error"]
                assert not any(s in error for s in ("ExtraData", "unpack(b)", "<_io", "BytesIO", "Traceback")), error
                assert "send" in error  # it says the fix
            # 15: a response topic with a wildcard (Mosquitto forwards the request) is not answered...
            ops.client.publish(req, msgpack.packb({"task": "digits", "input": image, "kind": "png"}), qos=1,
                               properties=request_props("edgeloop/v1/f1/gw-1/res/+/evil", b"w"))
            wait_for(lambda: agent.responder.unanswerable >= 1, 10, "the wildcard request counted")
            # ... nor one whose response topic is not under the device's own (it would make the
            # device publish an answer into another device's config: a reflector) ...
            ops.subscribe("edgeloop/v1/f1/gw-2/config")
            ops.client.publish(req, msgpack.packb({"task": "digits", "input": image, "kind": "png"}), qos=1,
                               properties=request_props("edgeloop/v1/f1/gw-2/config", b"r"))
            wait_for(lambda: agent.responder.unanswerable >= 2, 10, "the foreign response topic counted")
            # ... and the responder answers the next one.
            ops.client.publish(req, msgpack.packb({"task": "digits", "input": image, "kind": "png"}), qos=1,
                               properties=request_props("edgeloop/v1/f1/gw-1/res/after", b"a"))
            wait_for(lambda: ops.on("edgeloop/v1/f1/gw-1/res/after"), 10, "an answer after the wildcard request")
            assert agent.responder.guard.errors == 0 and not ops.on("edgeloop/v1/f1/gw-2/config")
    finally:
        ops.close()


# 13 ------------------------------------------------------------------------------------------

def test_13_a_full_data_disk_never_stops_inference(tmp_path):
    with tmpfs(tmp_path / "disk", "2m") as disk:
        config = camera_agent_config(disk / "data", fps=1e6, hard_below=1.01, upload_raw=True, index_every=0)
        with running_agent(config) as agent:
            wait_for(lambda: agent.records.failed_batches > 0, 60, "the disk full")
            served = agent.inferences
            wait_for(lambda: agent.inferences > served + 500, 20, "inference going on with the disk full")
            s = agent.status()
            assert s["stages"]["camera"]["state"] == "running" and s["stages"]["camera"]["restarts"] == 0
            assert "OutboxFull" in s["sinks"]["outbox"]["last_error"]


# 14 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("document,why", [
    (b"[" * 30_000 + b"]" * 30_000, "nested more than"),
    (b'{"camera": ' * 5000 + b"1" + b"}" * 5000, "nested more than"),
    (b" " * 70_000 + b"{}", "at most 65536 are taken"),
    (b'{"camera": {"fps": NaN}}', "not a finite number"),
    (b'{"camera": {"fps": Infinity}}', "not a finite number"),
    (b'{"camera": {"fps": 1e-300}}', "camera.fps: 1e-300 is not within"),
    (b'{"status_every_s": 1e300}', "status_every_s: 1e+300 is not within"),
    (b'{"camera": {"model": "no-such-model"}}', "camera.model: no model named 'no-such-model'"),
    (b'{"camera": {"folder": "/nonexistent"}}', "camera.folder: /nonexistent is not a folder"),
])
def test_14_hostile_desired_documents_are_rejected_while_the_camera_serves(tmp_path, broker, document, why):
    config = replace(camera_agent_config(tmp_path / "data", fps=50.0), broker=f"127.0.0.1:{broker.port}", fleet="f1")
    ops = Ops(broker.port)
    ops.subscribe("edgeloop/v1/f1/gw-1/state")
    topic = "edgeloop/v1/f1/gw-1/config"
    try:
        with running_agent(config) as agent:
            wait_for(lambda: agent.inferences > 5 and agent.desired is not None, 20, "serving")
            time.sleep(0.3)
            thread = agent.supervisor.stages["camera"].thread
            ops.client.publish(topic, document, qos=1)
            wait_for(lambda: ops.on("edgeloop/v1/f1/gw-1/state"), 10, "the state")
            state = json.loads(ops.on("edgeloop/v1/f1/gw-1/state")[-1])
            assert state["status"] == "rejected" and why in state["reason"], state
            served = agent.inferences
            wait_for(lambda: agent.inferences > served + 10, 10, "the camera serving on")
            assert agent.supervisor.stages["camera"].thread is thread  # never closed for the bad document
            ops.client.publish(topic, json.dumps({"camera": {"min_score": 0.77}}), qos=1)
            wait_for(lambda: agent.config.camera.min_score == 0.77, 10, "a later good document applied")
            assert agent.desired.guard.errors == 0
    finally:
        ops.close()
