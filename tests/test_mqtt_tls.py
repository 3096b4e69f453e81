"""Every MQTT part through the one client factory, over mutual TLS with a password against a real
Mosquitto whose CA the test makes: the agent's link (in its sync worker), its desired config and
its request answering, the offloader, the regional receiver and ``edgeloop regional run``; and a
server certificate from another CA refused by each of them."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import replace

import msgpack
import pytest

from conftest import camera_agent_config, running_agent, wait_for
from edgeloop.runtime.agent.camera import bundled_samples
from edgeloop.runtime.agent.config import MqttConfig
from edgeloop.sync.mqtt_client import BrokerConfig, make_client
from edgeloop.sync.offload import Offloader
from edgeloop.sync.receiver import RegionalReceiver
from edgeloop.sync.store_sqlite import SqliteStore
from edgeloop.sync.topics import topic
from test_cli import EDGELOOP


def tls(b, ca: str = "ca", user: str = "device-1") -> BrokerConfig:
    d = b.pki
    return BrokerConfig("127.0.0.1", b.tls_port, username=user, password="s3cret", ca_file=str(d / f"{ca}.crt"),
                        cert_file=str(d / "device.crt"), key_file=str(d / "device.key"), backoff_max_s=0.5)


def agent_over_tls(tmp_path, b, ca: str = "ca"):
    d = b.pki
    (d / "password").write_text("s3cret\n")
    (d / "password").chmod(0o600)
    mqtt = MqttConfig(ca_file=str(d / f"{ca}.crt"), cert_file=str(d / "device.crt"), key_file=str(d / "device.key"),
                      username="device-1", password_file=str(d / "password"))
    return replace(camera_agent_config(tmp_path / "data"), broker=f"127.0.0.1:{b.tls_port}", fleet="f1", mqtt=mqtt)


def test_every_part_works_over_mutual_tls(tmp_path, tls_broker):
    store = SqliteStore(tmp_path / "regional.db")
    receiver = RegionalReceiver(store, tls(tls_broker), fleet="f1", client_id="regional-tls")
    receiver.start()
    asker = Offloader(tls(tls_broker), "f1", "tester", request_topic=topic("f1", "gw-1", "req/infer"))
    ops = make_client(tls(tls_broker), "ops", protocol="5")
    ops.connect("127.0.0.1", tls_broker.tls_port)
    ops.loop_start()
    try:
        assert receiver.connected.wait(10)
        with running_agent(agent_over_tls(tmp_path, tls_broker)) as agent:
            wait_for(lambda: store.stats()["devices"].get("gw-1", {}).get("records", 0) >= 3, 30,
                     "the agent's records at the receiver, both over TLS")  # link + receiver
            wait_for(lambda: asker.online.is_set() and agent.responder.connected.is_set(), 20, "requests over TLS")
            answer = asker.request("digits", bundled_samples() / "digit_2.png", 5.0)  # offloader + responder
            assert answer["label"] == "2"
            ops.publish("edgeloop/v1/f1/gw-1/config", json.dumps({"camera": {"min_score": 0.66}}), qos=1)
            wait_for(lambda: agent.config.camera.min_score == 0.66, 10, "desired config over TLS")
            assert agent.status()["link"] == "online"
    finally:
        ops.loop_stop()
        ops.disconnect()
        asker.close()
        receiver.stop()
        store.close()


def test_the_regional_command_takes_the_tls_flags(tmp_path, tls_broker):
    d = tls_broker.pki
    (d / "password").write_text("s3cret\n")
    (d / "password").chmod(0o600)
    db = tmp_path / "r.db"
    proc = subprocess.Popen([EDGELOOP, "regional", "run", "--db", str(db), "--broker", f"127.0.0.1:{tls_broker.tls_port}",
                             "--fleet", "f1", "--client-id", "r-tls", "--ca-file", str(d / "ca.crt"), "--cert-file",
                             str(d / "device.crt"), "--key-file", str(d / "device.key"), "--username", "device-1",
                             "--password-file", str(d / "password")], stdout=subprocess.PIPE, text=True)
    try:
        assert "receiving" in proc.stdout.readline()
        time.sleep(0.5)
        sender = make_client(tls(tls_broker), "sender", protocol="5")
        sender.connect("127.0.0.1", tls_broker.tls_port)
        sender.loop_start()
        from edgeloop.sync.codec import encode_batch

        sender.publish("edgeloop/v1/f1/dev-9/data/s", encode_batch("dev-9", [
            {"id": "a" * 32, "seq": 1, "ts": 1.0, "stream": "s", "trace": None, "body": msgpack.packb(1)}]), qos=1)

        def stored() -> int:
            out = subprocess.run([EDGELOOP, "regional", "stats", "--db", str(db), "--json"], capture_output=True,
                                 text=True)
            return json.loads(out.stdout)["devices"].get("dev-9", {}).get("records", 0) if out.returncode == 0 else 0

        wait_for(lambda: db.exists() and stored() == 1, 15, "a record through `regional run` over TLS")
        sender.loop_stop()
        sender.disconnect()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("part", ["agent", "receiver", "offloader"])
def test_a_server_certificate_from_another_ca_is_refused(tmp_path, tls_broker, part):
    if part == "agent":
        with running_agent(agent_over_tls(tmp_path, tls_broker, ca="rogue-ca")) as agent:
            wait_for(lambda: agent.inferences > 0, 20, "the agent serving (offline)")
            time.sleep(2.0)
            s = agent.status()
            assert s["link"] != "online" and not agent.responder.connected.is_set()
            assert s["outbox_rows"] > 0  # everything waits on the device
        return
    if part == "receiver":
        store = SqliteStore(tmp_path / "r.db")
        receiver = RegionalReceiver(store, tls(tls_broker, ca="rogue-ca"), fleet="f1", client_id="r")
        receiver.start()
        try:
            assert not receiver.connected.wait(2.0)
        finally:
            receiver.stop()
            store.close()
        return
    asker = Offloader(tls(tls_broker, ca="rogue-ca"), "f1", "tester")
    try:
        assert not asker.online.wait(2.0)
    finally:
        asker.close()
