"""The fleet's identities and ACL against a real Mosquitto: certificates made by `edgeloop pki`,
the ACL by `edgeloop regional acl` (both run as processes), the broker configured with
``require_certificate`` and ``use_identity_as_username``. Each denied case is shown not to be
delivered: the denied message goes first and an allowed one after it on the same connection,
so once the allowed one has arrived the denied one would have arrived before it."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import make_ca, wait_for
from edgeloop.tools.pki.acl import listener_conf
from edgeloop.tools.testing.mosquitto import Mosquitto, free_port
from test_cli import EDGELOOP

P = "edgeloop/v1/f1"


def edgeloop(*args: str) -> dict:
    done = subprocess.run([EDGELOOP, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class Client:
    """One MQTT 5 client and what it received, in order."""

    def __init__(self, port: int, cert_dir: Path | None = None, stem: str = "device", ca: Path | None = None,
                 name: str = "") -> None:
        self.got: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.refused: str | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name or f"c-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv5)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert_dir / f"{stem}.crt") if cert_dir else None,
                                keyfile=str(cert_dir / f"{stem}.key") if cert_dir else None,
                                cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, m.payload))
        self.client.on_connect = lambda c, u, f, r, p=None: self.connected.set() if not r.is_failure else None
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def sub(self, *topics: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe([(t, 1) for t in topics])
        assert done.wait(5)

    def pub(self, topic: str, payload: bytes = b"x", retain: bool = False, denied: bool = False) -> None:
        """QoS 1. Mosquitto 2.0 answers a denied publish with PUBACK 0x87 and then closes the
        connection (its log: "Denied PUBLISH"), so a ``denied`` one may end the connection;
        paho reconnects, and the next publish waits for that."""
        assert self.connected.wait(10), "not connected"
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(5)
        except RuntimeError:
            if not denied:
                raise

    def saw(self, topic: str, payload: bytes | None = None) -> bool:
        return any(t == topic and (payload is None or p == payload) for t, p in self.got)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def fleet_broker(tmp_path):
    pki = tmp_path / "pki"
    edgeloop("pki", "init", "--dir", str(pki), "--fleet", "f1")
    edgeloop("pki", "server", "--dir", str(pki), "--host", "127.0.0.1", "--host", "localhost")
    for device, group in (("gw-1", "line-1"), ("gw-2", "line-2")):
        edgeloop("pki", "device", "--dir", str(pki), device, "--group", group)
    for name, role in (("rx", "receiver"), ("resp", "responder"), ("ops", "operator")):
        edgeloop("pki", "service", "--dir", str(pki), name, "--role", role)
    acl = tmp_path / "acl"
    edgeloop("regional", "acl", "--pki", str(pki), "--acl-out", str(acl))
    tls_port = free_port()
    broker = Mosquitto(tmp_path, extra=listener_conf(tls_port, str(pki), str(acl), bind="127.0.0.1")).start()
    broker.tls_port, broker.pki, broker.acl = tls_port, pki, acl
    clients: list[Client] = []

    def connect(who: str) -> Client:
        folder = pki / ("devices" if who.startswith("gw") else "services") / who
        c = Client(tls_port, folder, "device" if who.startswith("gw") else "client", pki / "ca.crt", name=who)
        assert c.connected.wait(10), f"{who} did not connect"
        clients.append(c)
        return c

    broker.connect = connect
    broker.admin = Client(broker.port, name="admin")  # the plain loopback listener: no ACL, sees everything
    broker.admin.sub("#")
    clients.append(broker.admin)
    yield broker
    for c in clients:
        c.close()
    broker.stop(kill=True)


def delivered_in_order(publisher: Client, denied: str, allowed: str, watcher: Client) -> bool:
    """Whether ``denied`` reached ``watcher``: published first, then ``allowed``, which must arrive."""
    publisher.pub(denied, b"denied", denied=True)
    time.sleep(0.05)  # the broker's close, if it closes, comes now; the reconnect is waited for
    publisher.pub(allowed, b"allowed")
    wait_for(lambda: watcher.saw(allowed, b"allowed"), 10, f"the allowed {allowed}")
    return watcher.saw(denied, b"denied")


def test_a_device_publishes_only_its_own_topics_and_never_its_own_config_or_acks(fleet_broker):
    b = fleet_broker
    gw1 = b.connect("gw-1")
    own = f"{P}/gw-1/data/frames"
    for denied in (f"{P}/gw-2/data/frames", f"{P}/gw-2/status", f"{P}/gw-1/config", f"{P}/gw-1/ack",
                   f"{P}/group/line-1/config", f"{P}/group/line-1/rollout", f"{P}/gw-2/res", "edgeloop/v1/f2/gw-1/data/x",
                   f"{P}/gw-2/req/infer"):
        assert not delivered_in_order(gw1, denied, own, b.admin), f"gw-1 could publish {denied}"
        b.admin.got.clear()
    for allowed in (f"{P}/gw-1/status", f"{P}/gw-1/state", f"{P}/gw-1/state/rollout", f"{P}/gw-1/req",
                    f"{P}/gw-1/res/ops", f"{P}/gw-1/event"):
        gw1.pub(allowed, b"ok")
        wait_for(lambda: b.admin.saw(allowed, b"ok"), 10, f"gw-1's own {allowed}")


def test_a_device_reads_only_its_own_config_acks_requests_and_its_groups_documents(fleet_broker):
    b = fleet_broker
    gw1 = b.connect("gw-1")
    gw1.sub("#", f"{P}/gw-2/config", f"{P}/+/req", f"{P}/group/+/config")  # all granted, little delivered
    sentinel = f"{P}/gw-1/config"
    for denied in (f"{P}/gw-2/config", f"{P}/gw-2/data/frames", f"{P}/gw-2/req", f"{P}/gw-2/req/infer",
                   f"{P}/group/line-2/config", f"{P}/gw-2/ack", f"{P}/gw-2/state/rollout"):
        assert not delivered_in_order(b.admin, denied, sentinel, gw1), f"gw-1 could read {denied}"
        gw1.got.clear()
    for allowed in (f"{P}/gw-1/ack", f"{P}/gw-1/req/infer", f"{P}/gw-1/res", f"{P}/group/line-1/config",
                    f"{P}/group/line-1/rollout"):
        b.admin.pub(allowed, b"ok")
        wait_for(lambda: gw1.saw(allowed, b"ok"), 10, f"gw-1 reading {allowed}")


def test_each_service_has_its_role_and_no_more(fleet_broker):
    b = fleet_broker
    rx, resp, ops, gw1, gw2 = (b.connect(n) for n in ("rx", "resp", "ops", "gw-1", "gw-2"))
    rx.sub(f"$share/rx/{P}/+/data/#", f"{P}/+/req", f"{P}/+/config")
    resp.sub(f"{P}/+/req", f"{P}/+/data/#")
    gw1.sub(f"{P}/gw-1/ack", f"{P}/gw-1/res", f"{P}/gw-1/config", f"{P}/group/line-1/config")
    gw2.sub(f"{P}/group/line-2/config")
    # the receiver: reads data (through its shared subscription), acks; no requests, no config
    assert not delivered_in_order(gw1, f"{P}/gw-1/req", f"{P}/gw-1/data/x", rx)
    assert not delivered_in_order(rx, f"{P}/gw-1/config", f"{P}/gw-1/ack", gw1)
    # the responder answers requests; it reads no data and writes no config
    wait_for(lambda: resp.saw(f"{P}/gw-1/req"), 10, "the responder's request")
    assert not resp.saw(f"{P}/gw-1/data/x")
    assert not delivered_in_order(resp, f"{P}/gw-1/config", f"{P}/gw-1/res", gw1)
    # the operator writes desired documents, for one group only where it says so
    ops.pub(f"{P}/group/line-1/config", b"g1")
    wait_for(lambda: gw1.saw(f"{P}/group/line-1/config", b"g1"), 10, "the group's config at its device")
    assert not delivered_in_order(ops, f"{P}/gw-1/ack", f"{P}/group/line-2/config", gw2)
    assert not gw1.saw(f"{P}/group/line-2/config")


def test_connections_without_a_certificate_or_with_one_from_another_ca_are_refused(fleet_broker, tmp_path):
    b = fleet_broker
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    make_ca(rogue, "device")  # a self-made certificate with the right name is not the fleet's
    for folder in (None, rogue):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            c = Client(b.tls_port, folder, "device", b.pki / "ca.crt", name="gw-1")
            try:  # a refused client certificate may only show when the broker answers after the handshake
                assert not c.connected.wait(3)
                raise ConnectionError("refused")
            finally:
                c.close()


def test_a_revoked_device_is_left_without_any_topic_after_the_reload(fleet_broker):
    b = fleet_broker
    gw1 = b.connect("gw-1")
    gw1.pub(f"{P}/gw-1/data/a", b"before")
    wait_for(lambda: b.admin.saw(f"{P}/gw-1/data/a", b"before"), 10, "data before the revocation")
    edgeloop("pki", "revoke", "--dir", str(b.pki), "gw-1")
    edgeloop("regional", "acl", "--pki", str(b.pki), "--acl-out", str(b.acl))
    assert "gw-1" not in b.acl.read_text()
    os.kill(b.proc.pid, signal.SIGHUP)
    time.sleep(1.0)  # Mosquitto reloads its ACL on SIGHUP; a connected client is checked at each publish
    gw1.pub(f"{P}/gw-1/data/a", b"after", denied=True)  # PUBACKed once the broker has dealt with it
    b.admin.pub("sentinel", b"after")  # the broker handles this one after, and delivers it after
    wait_for(lambda: b.admin.saw("sentinel", b"after"), 10, "the sentinel")
    assert not b.admin.saw(f"{P}/gw-1/data/a", b"after"), "a revoked device could still publish"


def test_an_agent_behind_its_pki_made_bridge_delivers_takes_config_and_gets_acks_through_the_acl(fleet_broker,
                                                                                               tmp_path):
    """The device as shipped: the agent on a device-local Mosquitto whose bridge is the
    `pki device` bridge.conf, into the ACL'd regional broker with the device's certificate; the
    receiver with its own. Records are committed and acked back (the outbox empties), and the
    operator's config reaches the agent, all through the ACL."""
    from dataclasses import replace

    from conftest import camera_agent_config, running_agent
    from edgeloop.sync.mqtt_client import BrokerConfig
    from edgeloop.sync.receiver import RegionalReceiver
    from edgeloop.sync.store_sqlite import SqliteStore

    b = fleet_broker
    dev = b.pki / "devices" / "gw-1"
    conf = (dev / "bridge.conf").read_text()
    conf = conf[conf.index("connection regional"):].replace("regional.example.net:8883", f"127.0.0.1:{b.tls_port}")
    conf = conf.replace("/etc/edgeloop/", f"{dev}/")
    (tmp_path / "local").mkdir()
    local = Mosquitto(tmp_path / "local", extra=conf).start()
    rx_dir = b.pki / "services" / "rx"
    store = SqliteStore(tmp_path / "regional.db")
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", b.tls_port, ca_file=str(rx_dir / "ca.crt"),
                                                    cert_file=str(rx_dir / "client.crt"),
                                                    key_file=str(rx_dir / "client.key")), fleet="f1",
                                client_id="rx-acl")
    receiver.start()
    ops = b.connect("ops")
    try:
        assert receiver.subscribed.wait(10)
        config = replace(camera_agent_config(tmp_path / "data"), broker=f"127.0.0.1:{local.port}", fleet="f1",
                         device="gw-1")
        with running_agent(config) as agent:
            wait_for(lambda: store.stats()["devices"].get("gw-1", {}).get("records", 0) >= 3, 40,
                     "the agent's records committed at the regional store")
            wait_for(lambda: agent.worker.stats()["committed_records"] >= 3, 30, "the acks back through the ACL")
            ops.pub(f"{P}/gw-1/config", json.dumps({"camera": {"min_score": 0.67}}).encode(), retain=True)
            wait_for(lambda: agent.config.camera.min_score == 0.67, 20, "the operator's config through the bridge")
            assert store.stats()["spoofed"] == 0
    finally:
        receiver.stop()
        store.close()
        local.stop(kill=True)
