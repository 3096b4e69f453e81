"""Nothing lost past the broker: records leave the device only on the regional store's commit
ack, against a real Mosquitto, real receivers (in-process and ``edgeloop regional run``) and
real PostgreSQL. Kill counts are small here; ``make soak`` raises them (EDGELOOP_SOAK_KILLS)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from conftest import wait_for

from edgeloop.sync.acks import decode_ack, encode_ack
from edgeloop.sync.codec import encode_batch
from edgeloop.sync.link import LinkConfig, MqttLink
from edgeloop.sync.mqtt_client import BrokerConfig
from edgeloop.sync.outbox import Outbox
from edgeloop.sync.receiver import RegionalReceiver
from edgeloop.sync.store import open_store
from edgeloop.sync.store_sqlite import SqliteStore
from edgeloop.sync.topics import topic
from edgeloop.tools.testing.mosquitto import Mosquitto

EDGELOOP = [sys.executable, "-m", "edgeloop.tools.cli"]
KILLS = int(os.environ.get("EDGELOOP_SOAK_KILLS", "4"))


def rows(box: Outbox) -> int:
    return sum(s["rows"] for s in box.stats()["streams"].values())


def test_ack_ranges_round_trip_and_hostile_acks_are_refused():
    ack = decode_ack(encode_ack("e1", [5, 3, 4, 9, 10, 1]))
    assert ack.epoch == "e1" and ack.ranges == ((1, 1), (3, 5), (9, 10)) and len(ack) == 6
    import pytest

    from edgeloop.sync.acks import MalformedAck

    for bad in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"epoch": "e", "ranges": [[3, 1]]}),
                msgpack.packb({"epoch": "e", "ranges": [[1, 10**9]]}), b"x" * 70_000):
        with pytest.raises(MalformedAck):
            decode_ack(bad)


def test_records_wait_on_the_device_until_the_regional_commit_then_leave(tmp_path, broker):
    """No receiver: the broker acknowledges, the device keeps every record (awaiting the
    commit, and says for how long). A receiver comes: every record is committed and deleted."""
    with Outbox(tmp_path / "o.db", "cam-a") as box:
        ids = {e.id for e in box.enqueue_many(("s", {"n": n}) for n in range(500))}
        link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="cam-a", batch_records=100,
                                        commit_timeout_s=60))
        link.start()
        try:
            wait_for(lambda: link.stats()["published_messages"] >= 5, 10, "the broker's PUBACKs")
            time.sleep(1.2)
            stats = box.stats()
            assert rows(box) == 500 and stats["awaiting_commit"] == 500 and stats["awaiting_commit_s"] >= 1.0
            assert link.stats()["delivered_records"] == 0
            store = SqliteStore(tmp_path / "regional.db")
            receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="f1", client_id="rx-a")
            receiver.start()
            try:
                # The first sends went to no subscriber (lost by the broker): the device sends them
                # again only after its commit timeout, so shorten it for the test's sake.
                link._timeout_s = 0.5
                wait_for(lambda: rows(box) == 0, 30, "the outbox emptied by commit acks")
                assert store.ids() == ids and link.stats()["delivered_records"] == 500
                assert box.stats()["awaiting_commit"] == 0 and box.stats()["awaiting_commit_s"] == 0.0
            finally:
                receiver.stop()
                store.close()
        finally:
            link.stop()


def test_broker_sigkilled_with_the_shipped_settings_loses_nothing(tmp_path):
    """autosave 1800 s (what tools/deploy ships): a SIGKILL loses what the broker queued for
    the receiver, which was down. The device still has it and sends it again."""
    broker = Mosquitto(tmp_path, autosave_s=1800).start()
    store = SqliteStore(tmp_path / "regional.db")
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="f1", client_id="rx-b")
    box = Outbox(tmp_path / "o.db", "cam-b")
    link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="cam-b", batch_records=50,
                                    backoff_max_s=0.5, commit_timeout_s=2.0, commit_timeout_max_s=4.0))
    ids: set[str] = set()
    try:
        receiver.start()
        assert receiver.subscribed.wait(10)
        link.start()
        for n in range(KILLS):
            receiver.stop()  # its session and queue stay with the broker, in memory only
            receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="f1", client_id="rx-b")
            ids |= {e.id for e in box.enqueue_many(("s", {"round": n, "i": i}) for i in range(200))}
            wait_for(lambda: box.stats()["awaiting_commit"] > 0, 10, "records the broker took")
            broker.stop(kill=True)
            broker.start()
            receiver.start()
            assert receiver.subscribed.wait(10)
        wait_for(lambda: ids <= store.ids() and rows(box) == 0, 90, "every record committed and deleted")
        assert box.resent > 0  # what the broker lost came again from the device
        assert store.stats()["devices"]["cam-b"]["records"] == len(ids)
    finally:
        link.stop()
        receiver.stop()
        box.close()
        store.close()
        broker.stop(kill=True)


def _receiver_cli(db: str, port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([*EDGELOOP, "regional", "run", "--db", db, "--broker", f"127.0.0.1:{port}", "--fleet", "f1",
                             *extra], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("regional: subscribed"):
            return proc
    raise AssertionError(f"the receiver did not subscribe (exit {proc.wait()})")


def _receiver_killed_while_draining(tmp_path: Path, port: int, db: str, *extra: str) -> None:
    with Outbox(tmp_path / "o.db", "cam-k") as box:
        ids = {e.id for e in box.enqueue_many(("s", {"n": n, "pad": "p" * 100}) for n in range(3000))}
        rx = _receiver_cli(db, port, *extra)
        link = MqttLink(box, LinkConfig("127.0.0.1", port, fleet="f1", device="cam-k", batch_records=20,
                                        inflight_window=2, max_records_per_s=3000, commit_timeout_s=2.0,
                                        commit_timeout_max_s=4.0))
        link.start()
        try:
            for _ in range(KILLS):
                time.sleep(0.3)
                rx.send_signal(signal.SIGKILL)
                rx.wait(10)
                rx = _receiver_cli(db, port, *extra)
            wait_for(lambda: rows(box) == 0, 90, "every record committed and deleted")
        finally:
            link.stop()
            rx.terminate()
            rx.wait(10)
    store = open_store(db)
    try:
        assert store.ids() == ids  # none lost
        assert store.stats()["devices"]["cam-k"]["records"] == len(ids)  # each stored once
    finally:
        store.close()


def test_receiver_sigkilled_without_a_client_id_loses_nothing(tmp_path, broker):
    _receiver_killed_while_draining(tmp_path, broker.port, str(tmp_path / "regional.db"))


def test_receiver_sigkilled_with_a_client_id_on_postgresql_loses_nothing(tmp_path, broker, postgres_url):
    _receiver_killed_while_draining(tmp_path, broker.port, postgres_url, "--client-id", "rx-pg")


def test_postgresql_restarted_during_a_drain_loses_nothing(tmp_path, broker, postgres_server, postgres_url):
    store = open_store(postgres_url)
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="f1", client_id="rx-pgr")
    receiver.start()
    assert receiver.subscribed.wait(10)
    try:
        with Outbox(tmp_path / "o.db", "cam-p") as box:
            ids = {e.id for e in box.enqueue_many(("s", {"n": n}) for n in range(4000))}
            link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="cam-p", batch_records=20,
                                            inflight_window=2, max_records_per_s=4000))
            link.start()
            try:
                for n in range(min(KILLS, 3)):
                    time.sleep(0.3)
                    postgres_server.stop(kill=n % 2 == 0)
                    time.sleep(0.3)
                    postgres_server.start()
                wait_for(lambda: rows(box) == 0, 60, "every record committed and deleted")
            finally:
                link.stop()
        assert receiver.store_errors > 0  # the restarts were felt, and ridden out
        assert store.ids() == ids and store.stats()["devices"]["cam-p"]["records"] == len(ids)
    finally:
        receiver.stop()
        store.close()


def test_an_envelope_naming_another_device_is_kept_aside_as_spoofed(tmp_path, broker, regional):
    with Outbox(tmp_path / "o.db", "victim") as box:
        box.enqueue_many(("s", {"n": n}) for n in range(3))
        records = box.next_batch(live_share=0)
    acks: list[bytes] = []
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.on_message = lambda c, u, m: acks.append(m.payload)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        pub.subscribe(topic("f1", "+", "ack"), qos=1)
        time.sleep(0.2)
        pub.publish(topic("f1", "evil", "data/s"), encode_batch("victim", records), qos=1).wait_for_publish(5)
        wait_for(lambda: regional.stats()["spoofed"] == 3, 10, "three spoofed envelopes kept aside")
        stats = regional.stats()
        assert "victim" not in stats["devices"] or stats["devices"]["victim"]["records"] == 0
        assert stats["devices"]["evil"]["spoofed"] == 3 and stats["devices"]["evil"]["records"] == 0
        time.sleep(0.3)
        assert acks == []  # nothing was committed for anyone
    finally:
        pub.loop_stop()


def test_a_flood_of_malformed_acks_is_counted_logged_sparingly_and_the_drain_goes_on(tmp_path, broker, caplog):
    """Anyone who can publish on a device's ack topic can send garbage at will: every one is
    counted, the log gets a line now and then (not one each), and real acks still delete."""
    with Outbox(tmp_path / "o.db", "cam-f") as box, caplog.at_level(logging.WARNING, logger="edgeloop.link"):
        link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="cam-f"))
        store = SqliteStore(tmp_path / "regional.db")
        receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="f1", client_id="rx-f")
        receiver.start()
        link.start()
        flood = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        flood.connect("127.0.0.1", broker.port)
        flood.loop_start()
        try:
            wait_for(lambda: link.stats()["state"] == "online", 10, "the link online")
            for n in range(300):
                flood.publish(topic("f1", "cam-f", "ack"), b"\xc1" if n % 2 else b"[5, 3]", qos=0)
            ids = {e.id for e in box.enqueue_many(("s", {"n": n}) for n in range(200))}
            wait_for(lambda: rows(box) == 0, 30, "the outbox emptied by the real acks")
            wait_for(lambda: link.stats()["bad_acks"] >= 250, 10, "the malformed acks counted")
            assert store.ids() == ids
            lines = [r for r in caplog.records if "malformed commit ack" in r.getMessage()]
            assert 1 <= len(lines) <= 3, len(lines)
        finally:
            flood.disconnect()
            flood.loop_stop()
            link.stop()
            receiver.stop()
            store.close()


def test_a_receiver_on_the_wrong_fleet_says_so_and_the_device_keeps_its_records(tmp_path, broker, caplog):
    store = SqliteStore(tmp_path / "regional.db")
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="other", client_id="rx-w",
                                wrong_fleet_after_s=1.0)
    receiver.start()
    try:
        with Outbox(tmp_path / "o.db", "cam-w") as box:
            box.enqueue_many(("s", n) for n in range(50))
            link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, fleet="f1", device="cam-w"))
            link.start()
            try:
                wait_for(lambda: "devices are online in f1 (1 device)" in caplog.text, 10, "the wrong-fleet warning")
                assert receiver.other_fleets_online() == {"f1": 1}
                assert rows(box) == 50 and box.stats()["awaiting_commit"] == 50
            finally:
                link.stop()
    finally:
        receiver.stop()
        store.close()


def test_through_the_device_local_bridge_the_commit_ack_comes_back(tmp_path):
    """The shipped bridge's topic lines (tools/deploy/mosquitto-bridge.conf) between a
    device-local Mosquitto and a regional one: data goes up, the ack comes down, the outbox empties."""
    from edgeloop.tools.pki.authority import bridge_conf

    conf = bridge_conf("f1", "cam-l", ["line-1"], "127.0.0.1:8883")  # the shipped file, filled in as `pki device` does
    topics = [line for line in conf.splitlines() if line.startswith(("topic ", "bridge_protocol_version ", "cleansession "))]
    assert "topic edgeloop/v1/f1/cam-l/ack in 1" in topics and "topic edgeloop/v1/f1/group/line-1/config in 1" in topics
    assert not any("+" in t for t in topics), topics  # the device's own topics only
    (tmp_path / "up").mkdir()
    (tmp_path / "local").mkdir()
    up = Mosquitto(tmp_path / "up").start()
    local = Mosquitto(tmp_path / "local", extra=f"connection regional\naddress 127.0.0.1:{up.port}\n"
                      + "\n".join(topics) + "\n").start()
    store = SqliteStore(tmp_path / "regional.db")
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", up.port), fleet="f1", client_id="rx-bridge")
    receiver.start()
    assert receiver.subscribed.wait(10)
    try:
        with Outbox(tmp_path / "o.db", "cam-l") as box:
            ids = {e.id for e in box.enqueue_many(("s", n) for n in range(300))}
            link = MqttLink(box, LinkConfig("127.0.0.1", local.port, fleet="f1", device="cam-l", protocol="3.1.1",
                                            commit_timeout_s=2.0))
            link.start()
            try:
                wait_for(lambda: rows(box) == 0, 30, "the outbox emptied through the bridge")
            finally:
                link.stop()
        assert store.ids() == ids
    finally:
        receiver.stop()
        store.close()
        local.stop(kill=True)
        up.stop(kill=True)


def test_hostile_envelopes_are_kept_aside_and_the_receiver_keeps_storing(tmp_path, broker, postgres_url):
    """NUL in text (PostgreSQL refuses it), a seq past 64 bits, a NaN time: each batch is kept
    aside as malformed, and the receiver's store thread goes on to store the good one."""
    store = open_store(postgres_url)
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="f1", client_id="rx-h")
    receiver.start()
    assert receiver.subscribed.wait(10)
    good = {"v": 1, "device": "cam-h", "epoch": "e", "seq": 1, "id": "ok-1", "ts": 1.0, "stream": "s",
            "trace": None, "body": {"n": 1}}
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        for bad in ({"id": "a\0b"}, {"seq": 2 ** 64 - 1}, {"ts": float("nan")}, {"stream": "s\0"}, {"epoch": "\0"}):
            pub.publish(topic("f1", "cam-h", "data/s"), msgpack.packb([{**good, **bad}]), qos=1).wait_for_publish(5)
        pub.publish(topic("f1", "cam-h", "data/s"), msgpack.packb([good]), qos=1).wait_for_publish(5)
        wait_for(lambda: store.ids() == {"ok-1"} and store.stats()["malformed"] == 5, 15,
                 "the good record stored and the five hostile batches kept aside")
        assert receiver._thread.is_alive() and receiver.guard.errors == 0
    finally:
        pub.loop_stop()
        receiver.stop()
        store.close()


def test_a_message_the_store_refuses_alone_is_kept_aside_and_the_rest_committed(tmp_path):
    """The store thread's last line of defence, with a store that refuses one topic."""

    class Refusing(SqliteStore):
        def commit(self, messages):
            if any(t.endswith("/poison") for t, _ in messages):
                raise ValueError("refused")
            return super().commit(messages)

    store = Refusing(tmp_path / "r.db")
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", 1), fleet="f1", client_id="rx-u")
    with Outbox(tmp_path / "o.db", "cam-u") as box:
        box.enqueue_many(("s", n) for n in range(3))
        payload = encode_batch("cam-u", box.next_batch(live_share=0))

    class Message:
        def __init__(self, name: str) -> None:
            self.topic, self.payload = topic("f1", "cam-u", name), payload

    committed = receiver._commit([Message("data/s"), Message("data/poison")])
    assert committed.new == 3 and committed.malformed == 1 and sum(map(len, committed.acks[("f1", "cam-u")].values())) == 3
    assert store.stats()["malformed"] == 1
    store.close()
