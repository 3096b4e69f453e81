"""The outbox drained over MQTT to a real Mosquitto, into the regional receiver."""

from __future__ import annotations

import time

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from conftest import wait_for

from edgeloop.sync.link import LinkConfig, MqttLink, topic
from edgeloop.sync.outbox import Outbox
from edgeloop.sync.mqtt_client import BrokerConfig
from edgeloop.sync.receiver import RegionalReceiver
from edgeloop.sync.store_sqlite import SqliteStore


def test_every_record_arrives_once_and_leaves_the_outbox(tmp_path, broker, regional):
    with Outbox(tmp_path / "outbox.db", "cam-1") as box:
        ids = {e.id for e in box.enqueue_many((f"s{n % 3}", {"n": n, "pad": "x" * 180}) for n in range(3000))}
        link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="cam-1", batch_records=200))
        link.start()
        try:
            more = {box.enqueue("s0", {"live": n}).id for n in range(50)}  # while draining
            wait_for(lambda: regional.ids() >= ids | more, what="all records at the regional edge")
            wait_for(lambda: sum(s["rows"] for s in box.stats()["streams"].values()) == 0, what="an empty outbox")
        finally:
            link.stop()
        stats = regional.stats()["devices"]["cam-1"]
        assert stats["records"] == 3050 and stats["last_seq"] - stats["first_seq"] + 1 == 3050
        assert link.stats()["delivered_records"] >= 3050


def test_a_long_backlog_leaves_the_outbox_as_it_drains_not_all_at_the_end(tmp_path, broker, regional):
    """Committed records are deleted while the window keeps sending (here it never fills): a crash
    in the middle of a long drain must not leave everything already delivered to be sent again."""
    box = Outbox(tmp_path / "o.db", "dev-b")
    box.enqueue_many([("s", {"n": n}) for n in range(30_000)])
    link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="dev-b", batch_records=100,
                                    inflight_window=1000))
    link.start()
    seen_midway = []
    try:
        while link.stats()["delivered_records"] < 30_000:
            delivered = link.stats()["delivered_records"]
            if 0 < delivered < 30_000:
                seen_midway.append((delivered, box.stats()["streams"].get("s", {}).get("rows", 0)))
            time.sleep(0.002)
    finally:
        link.stop()
        box.close()
    assert seen_midway, "nothing was deleted before the whole backlog had been sent"
    delivered, rows = seen_midway[0]
    assert delivered + rows <= 30_000 and rows > 0, seen_midway[:3]


def test_status_is_retained_online_then_offline(tmp_path, broker):
    seen: list[bytes] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = lambda c, u, m: seen.append(m.payload)
    watcher.on_connect = lambda c, u, f, r, p: c.subscribe(topic("f1", "cam-2", "status"), qos=1)
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    try:
        with Outbox(tmp_path / "o.db", "cam-2") as box:
            link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="cam-2"))
            link.start()
            wait_for(lambda: b"online" in seen, 10, "the birth message")
            link.stop()
            wait_for(lambda: seen[-1:] == [b"offline"], 10, "offline")
    finally:
        watcher.loop_stop()


def test_malformed_payloads_are_kept_aside_and_the_receiver_goes_on(tmp_path, broker, regional):
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        for payload in (b"\xc1garbage", msgpack.packb({"not": "a batch"}), msgpack.packb([{"v": 1}])):
            pub.publish(topic("f1", "evil", "data/x"), payload, qos=1).wait_for_publish(5)
        with Outbox(tmp_path / "o.db", "cam-3") as box:
            good = box.enqueue("s", {"ok": True})
            link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="cam-3"))
            link.start()
            try:
                wait_for(lambda: good.id in regional.ids(), 15, "the good record")
            finally:
                link.stop()
        wait_for(lambda: regional.stats()["malformed"] == 3, 10, "three malformed payloads kept aside")
    finally:
        pub.loop_stop()


def test_broker_restarted_ten_times_during_a_drain(tmp_path, broker, regional):
    """Mosquitto stopped (SIGTERM: it saves its queues) and restarted 10 times while the
    device keeps enqueuing and draining: everything arrives, the outbox empties."""
    with Outbox(tmp_path / "outbox.db", "cam-4") as box:
        ids = {e.id for e in box.enqueue_many(("s", {"n": n, "pad": "y" * 180}) for n in range(2000))}
        link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="cam-4", batch_records=50,
                                        inflight_window=4, backoff_max_s=0.5))
        link.start()
        try:
            for n in range(10):
                time.sleep(0.3)
                broker.stop()
                ids |= {e.id for e in box.enqueue_many(("s", {"offline": n}) for _ in range(20))}
                broker.start()
            try:
                wait_for(lambda: regional.ids() >= ids, 60, "every record after 10 broker restarts")
            except AssertionError:
                missing = ids - regional.ids()
                left = {r["id"] for r in box.next_batch(max_records=100000, max_bytes=10**9, live_share=0)}
                raise AssertionError(f"{len(missing)} missing; {len(missing & left)} of them still in the outbox; "
                                     f"link {link.stats()}")
            wait_for(lambda: sum(s["rows"] for s in box.stats()["streams"].values()) == 0, 30, "an empty outbox")
        finally:
            link.stop()
    assert regional.stats()["devices"]["cam-4"]["records"] == len(ids)  # stored once each


def test_bench_sync_reports_its_keys():
    from edgeloop.tools.bench.sync import bench_sync

    r = bench_sync(seconds=0.3, records=2000)
    for key in ("enqueue_group_per_s", "enqueue_single_per_s", "group_commit_ratio", "enqueue_group_threads_per_s",
                "drain_records_per_s", "paho_qos1_per_s", "paho_qos1_pipelined_per_s", "drain_ratio",
                "drain_ratio_pipelined", "drain_rtt_records_per_s", "drain_rtt_fraction_of_bound"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert r["drain_records"] == 2000 and r["rtt_ms"] == 50.0


def test_regional_and_outbox_drain_commands(tmp_path, broker):
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "edgeloop")
    regional_db, outbox_db = tmp_path / "regional.db", tmp_path / "outbox.db"
    rx = subprocess.Popen([exe, "regional", "--broker", f"127.0.0.1:{broker.port}", "--db", str(regional_db),
                           "--fleet", "f9", "--client-id", "rx-cli"], stdout=subprocess.PIPE, text=True)
    try:
        assert "regional: receiving edgeloop/v1/f9/+/data/#" in rx.stdout.readline()
        time.sleep(0.3)
        with Outbox(outbox_db, "cam-9") as box:
            box.enqueue_many(("s", n) for n in range(500))
        out = subprocess.run([exe, "outbox", "drain", "--db", str(outbox_db), "--broker", f"127.0.0.1:{broker.port}",
                              "--fleet", "f9", "--device", "cam-9"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "delivered 500 records (committed at the regional store); 0 left" \
            in out.stdout, out.stdout + out.stderr

        def stored() -> int:
            got = subprocess.run([exe, "regional", "stats", "--db", str(regional_db), "--json"],
                                 capture_output=True, text=True)
            return json.loads(got.stdout)["devices"].get("cam-9", {}).get("records", 0) if got.returncode == 0 else 0

        wait_for(lambda: stored() == 500, 20, "500 records in the regional database")
    finally:
        rx.send_signal(signal.SIGTERM)
        assert rx.wait(10) == 0
    bad = subprocess.run([exe, "outbox", "drain", "--db", str(outbox_db), "--broker", "host:port:x",
                          "--device", "d"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--broker: 'host:port:x' is not HOST[:PORT]" in bad.stderr


def test_two_receivers_on_a_shared_subscription_store_each_record_once(tmp_path, broker):
    store = SqliteStore(tmp_path / "regional.db")
    receivers = [RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="f5", share="regional",
                                  client_id=f"rx-{n}") for n in range(2)]
    for r in receivers:
        r.start()
        assert r.connected.wait(10)
    time.sleep(0.3)
    try:
        with Outbox(tmp_path / "o.db", "cam-5") as box:
            ids = {e.id for e in box.enqueue_many(("s", n) for n in range(2000))}
            link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f5", device="cam-5",
                                            batch_records=20, protocol="3.1.1"))
            link.start()
            try:
                wait_for(lambda: store.ids() >= ids, 30, "all records through the shared subscription")
            finally:
                link.stop()
        assert store.stats()["devices"]["cam-5"]["records"] == 2000
        assert all(r.messages > 0 for r in receivers), [r.messages for r in receivers]  # the load was shared
    finally:
        for r in receivers:
            r.stop()
        store.close()


def test_new_records_wake_the_link_at_once(tmp_path, broker, regional, monkeypatch):
    """The outbox tells the link when it stores records (Outbox.on_stored), so a link that
    polls only every 30 s still sends a new record at once."""
    import edgeloop.sync.link as link_module

    monkeypatch.setattr(link_module, "IDLE_MAX_S", 30.0)
    with Outbox(tmp_path / "o.db", "wake-1") as box:
        link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="wake-1"))
        link.start()
        try:
            wait_for(lambda: link.stats()["state"] == "online", 10, "the link online")
            # It found the outbox empty and polls again only after IDLE_MAX_S (30 s here), so a
            # record found by polling would go no sooner than 28 s from now.
            time.sleep(2.0)
            start = time.monotonic()
            box.enqueue("s", {"n": 1})
            wait_for(lambda: link.stats()["delivered_records"] == 1, 10, "the record committed")
            took = time.monotonic() - start
            assert took < 2.5, took
        finally:
            link.stop()


def test_a_refused_ack_subscription_is_said_and_retried_until_granted(tmp_path):
    """A broker whose permissions do not let the device subscribe to its ack topic refuses it
    in the SUBACK: the link says so (stats, log) and retries with backoff, and once the
    permissions are fixed (nats-server reloads them on SIGHUP) the records are committed.
    Without the check the link waited silently for acks that could never come. (Mosquitto's
    acl_file never refuses a subscription, it only withholds the messages, mosquitto#2042:
    there `edgeloop status` says how long records have waited for their commit.)"""
    from edgeloop.tools.testing.nats import NatsCluster

    def permissions(deny: str) -> str:
        subscribe = f'{{ allow: ">", deny: "{deny}" }}' if deny else '">"'
        return f'users: [ {{ user: anonymous, permissions: {{ publish: ">", subscribe: {subscribe} }} }} ]'

    nats = NatsCluster(tmp_path / "nats", 1, authorization=permissions("edgeloop.v1.f1.acl-1.ack")).start()
    port = nats.mqtt_ports[0]
    store = SqliteStore(tmp_path / "regional.db")
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", port), fleet="f1", client_id="rx-acl")
    box = Outbox(tmp_path / "o.db", "acl-1")
    link = MqttLink(box, LinkConfig("127.0.0.1", port, fleet="f1", device="acl-1", commit_timeout_s=1.0,
                                    commit_timeout_max_s=4.0))
    try:
        receiver.start()
        assert receiver.connected.wait(20)
        ids = {e.id for e in box.enqueue_many([("s", {"n": n}) for n in range(20)])}
        link.start()
        wait_for(lambda: link.stats()["ack_subscription_refusals"] >= 2, 30, "the refusal seen and retried")
        assert link.stats()["ack_subscription"].startswith("refused"), link.stats()
        wait_for(lambda: store.ids() >= ids, 20, "the records stored regionally")
        assert link.stats()["delivered_records"] == 0  # stored, but no ack can reach the device
        nats.nodes[0].write_conf(permissions(""))
        nats.nodes[0].reload()
        wait_for(lambda: link.stats()["ack_subscription"] == "granted", 30, "the subscription granted on a retry")
        assert link.stats()["ack_subscription_refusals"] == 0
        # The acks sent before the grant reached nobody: the records are resent after the
        # commit timeout, acked again (the store dedupes) and leave the device.
        wait_for(lambda: link.stats()["delivered_records"] == 20, 30, "the records committed and deleted")
        assert store.stats()["devices"]["acl-1"]["records"] == 20
    finally:
        link.stop()
        box.close()
        receiver.stop()
        store.close()
        nats.stop()
