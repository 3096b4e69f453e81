"""Desired documents signed by the fleet operator's ed25519 key: each kind of forgery is refused
with its reason, by the gate alone and by a real agent on a real Mosquitto (the document
published by `edgeloop fleet` as a process), and the last good document stays in force."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from conftest import camera_agent_config, running_agent, wait_for
from edgeloop.runtime.agent.config import MqttConfig
from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.signed_doc import (Gate, SignatureError, Verifier, VersionBook, load_private_key, sign,
                                      write_keypair)
from test_cli import EDGELOOP
from test_rollout_agent import fleet  # noqa: F401  (a fixture)

TOPIC = "edgeloop/v1/f1/gw-1/config"


@pytest.fixture
def keys(tmp_path):
    operator = tmp_path / "operator.key"
    write_keypair(operator)
    return operator, load_private_key(operator)


def gate(tmp_path: Path, key: Ed25519PrivateKey) -> Gate:
    return Gate(Verifier([key.public_key()]), VersionBook(tmp_path / "versions.json"))


def tampered(payload: bytes) -> bytes:
    envelope = json.loads(payload)
    inner = json.loads(base64.b64decode(envelope["payload"]))
    inner["body"] = {"camera": {"fps": 99.0}}
    envelope["payload"] = base64.b64encode(json.dumps(inner, sort_keys=True, separators=(",", ":")).encode()).decode()
    return json.dumps(envelope).encode()


def test_each_kind_of_forgery_is_refused_with_its_reason_and_a_good_document_opens(tmp_path, keys):
    _, key = keys
    g = gate(tmp_path, key)
    good = sign(key, "config", TOPIC, {"camera": {"fps": 2.0}}, version=10)
    assert g.open(TOPIC, good, "config").body == {"camera": {"fps": 2.0}}
    assert g.open(TOPIC, good, "config").version == 10  # the retained copy again, after a reconnect
    cases = {
        b'{"camera": {"fps": 3}}': "the document is not signed",
        b"": "the document is not signed",
        sign(Ed25519PrivateKey.generate(), "config", TOPIC, {}, version=11): "which this device does not trust",
        tampered(sign(key, "config", TOPIC, {"camera": {"fps": 2.0}}, version=12)): "does not match the document",
        sign(key, "config", "edgeloop/v1/f1/group/line-1/config", {}, version=13): "was signed for",
        sign(key, "rollout", TOPIC, {}, version=14): "a rollout document arrived on",
        sign(key, "config", TOPIC, {"camera": {"fps": 1.0}}, version=9): "is older than version 10",
        sign(key, "config", TOPIC, {"camera": {"fps": 1.0}}, version=10): "was taken already for another document",
        b'{"edgeloop_signed": 1, "keyid": "x", "sig": "!!", "payload": "!!"}': "which this device does not trust",
        b"[" * 90_000: "the document is not signed",
        b" " * 100_000: "over 98304",
    }
    for payload, reason in cases.items():
        with pytest.raises(SignatureError) as err:
            g.open(TOPIC, payload, "config")
        assert reason in str(err.value), (payload[:80], str(err.value))
    assert g.refused == len(cases)
    newer = sign(key, "config", TOPIC, {"camera": {"fps": 4.0}}, version=11)
    assert g.open(TOPIC, newer, "config").body == {"camera": {"fps": 4.0}}


def test_the_newest_version_survives_a_restart_and_a_damaged_book_starts_afresh_loudly(tmp_path, keys):
    _, key = keys
    gate(tmp_path, key).open(TOPIC, sign(key, "config", TOPIC, {}, version=20), "config")
    with pytest.raises(SignatureError, match="older than version 20"):
        gate(tmp_path, key).open(TOPIC, sign(key, "config", TOPIC, {}, version=19), "config")
    (tmp_path / "versions.json").write_text("{not json")
    book = VersionBook(tmp_path / "versions.json")
    assert "was unreadable" in book.problem and book.seen == {}


def test_an_operator_key_that_others_may_read_is_refused(tmp_path, keys):
    operator, _ = keys
    assert operator.stat().st_mode & 0o777 == 0o600
    operator.chmod(0o640)
    with pytest.raises(ConfigError, match=r"may be read or changed by others \(mode 640\): chmod 600"):
        load_private_key(operator)
    with pytest.raises(ConfigError, match="exists"):
        write_keypair(operator)  # never overwritten


class Watcher:
    """The device's retained state, as the operator sees it."""

    def __init__(self, port: int, topic: str) -> None:
        self.states: list[dict] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.states.append(json.loads(m.payload)) if m.payload else None
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def fleet_config(port: int, key: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EDGELOOP, "fleet", "config", "--broker", f"127.0.0.1:{port}", "--fleet", "f1",
                           "--key", str(key), *args], capture_output=True, text=True, timeout=60)


def test_an_agent_applies_only_what_the_operator_signed_and_keeps_the_last_good(tmp_path, broker, keys):
    operator, key = keys
    public = operator.with_name("operator.pub")
    config = replace(camera_agent_config(tmp_path / "data"), broker=f"127.0.0.1:{broker.port}", fleet="f1",
                     mqtt=MqttConfig(operator_keys=(str(public),)))
    watch = Watcher(broker.port, "edgeloop/v1/f1/gw-1/state")
    try:
        with running_agent(config) as agent:
            wait_for(lambda: agent.desired is not None and agent.desired.gate is not None, 10, "the gate")
            done = fleet_config(broker.port, operator, "--device", "gw-1", "--set", '{"camera": {"min_score": 0.71}}')
            assert done.returncode == 0, done.stderr
            wait_for(lambda: agent.config.camera.min_score == 0.71, 15, "the signed document applied")
            signed = json.loads(done.stdout)
            assert signed["signed"] and signed["version"] > 0
            replay = [m for m in _retained(broker.port, TOPIC)]  # what an attacker could capture
            done = fleet_config(broker.port, operator, "--device", "gw-1", "--set", '{"camera": {"min_score": 0.72}}')
            assert done.returncode == 0, done.stderr
            wait_for(lambda: agent.config.camera.min_score == 0.72, 15, "the second signed document applied")
            attacks = {
                b'{"camera": {"min_score": 0.1}}': "the document is not signed",
                sign(Ed25519PrivateKey.generate(), "config", TOPIC, {"camera": {"min_score": 0.1}},
                     version=2**62): "which this device does not trust",
                replay[0]: "(a replay?)",
                tampered(sign(key, "config", TOPIC, {"camera": {"min_score": 0.1}}, version=2**62)):
                    "does not match the document",
            }
            for payload, reason in attacks.items():
                before = agent.desired.rejected
                watch.publish(TOPIC, payload)
                wait_for(lambda: agent.desired.rejected > before, 10, f"the refusal of {reason}")
                wait_for(lambda: watch.states and watch.states[-1].get("status") == "rejected"
                         and reason in watch.states[-1]["reason"], 10, f"the reported reason {reason}")
                assert agent.config.camera.min_score == 0.72  # the last good stays
            status = agent.status(fast=True)["desired"]
            assert status["signed"] and status["refused_signatures"] == len(attacks)
            assert agent.supervisor.healthy()
    finally:
        watch.close()


def _retained(port: int, topic: str) -> list[bytes]:
    got: list[bytes] = []
    arrived = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: (got.append(m.payload), arrived.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    arrived.wait(5)
    client.loop_stop()
    client.disconnect()
    assert got, f"nothing retained on {topic}"
    return got


def test_a_rollout_takes_only_a_signed_document_and_commits_one_published_by_fleet_rollout(tmp_path, broker,
                                                                                          fleet, keys):
    from edgeloop.sync.rollout_doc import RolloutDoc
    from test_rollout_agent import agent_config, release

    repo, server, root, ops = fleet
    operator, _ = keys
    version = release(repo, tmp_path, "digits_v2")
    config = agent_config(tmp_path, broker.port, server, root)
    config = replace(config, mqtt=MqttConfig(operator_keys=(str(operator.with_name("operator.pub")),)))
    with running_agent(config) as agent:
        wait_for(lambda: agent.inferences > 10 and ops.last("cam-1").get("state") == "idle", 20, "serving, idle")
        ops.rollout("cams", RolloutDoc("r1", "digits", version, 100.0, "r1", previous="1.0.0"))  # unsigned
        wait_for(lambda: "not signed" in (ops.last("cam-1").get("document_error") or ""), 10, "the refusal")
        assert ops.last("cam-1")["state"] == "idle" and agent.rollout.doc is None
        done = subprocess.run([EDGELOOP, "fleet", "rollout", "--broker", f"127.0.0.1:{broker.port}", "--fleet", "f1",
                               "--group", "cams", "--version", version, "--pct", "100", "--key", str(operator)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: ops.last("cam-1").get("state") == "committed", 40, "the signed rollout committed")
        assert ops.last("cam-1")["active"] == version and ops.last("cam-1")["document_error"] is None
        # The operator's own tools read the signed document back (status, widen, cancel).
        shown = subprocess.run([EDGELOOP, "fleet", "status", "--broker", f"127.0.0.1:{broker.port}", "--fleet", "f1",
                                "--group", "cams", "--json", "--wait", "5"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["rollout"]["committed"] == 1
