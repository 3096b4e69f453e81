"""A distributed broker for node failure: a 3-node NATS cluster (Debian's nats-server) with
its MQTT gateway, which speaks only MQTT 3.1.1. The device and the receiver are each given
every node; a node SIGKILLed mid-drain is left for the next, and nothing is lost or stored
twice. ``make soak`` raises the kill count (EDGELOOP_NATS_KILLS)."""

from __future__ import annotations

import logging
import os
import time

import pytest

from conftest import wait_for

from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.link import LinkConfig, MqttLink
from edgeloop.sync.mqtt_client import BrokerConfig, parse_broker
from edgeloop.sync.outbox import Outbox
from edgeloop.sync.receiver import RegionalReceiver
from edgeloop.sync.store_sqlite import SqliteStore
from edgeloop.tools.testing.nats import NatsCluster

NATS_KILLS = int(os.environ.get("EDGELOOP_NATS_KILLS", "2"))


def rows(box: Outbox) -> int:
    return sum(s["rows"] for s in box.stats()["streams"].values())


@pytest.fixture
def cluster(tmp_path):
    nats = NatsCluster(tmp_path / "nats", 3).start()
    yield nats
    nats.stop()


def test_a_broker_list_parses_and_bad_entries_name_the_fix():
    assert parse_broker("a:1,b,c:3") == ("a", 1, (("b", 1883), ("c", 3)))
    assert parse_broker("h") == ("h", 1883, ())
    for bad in ("a:1,,b", "a:x", "a:1, b c"):
        with pytest.raises(ConfigError) as err:
            parse_broker(bad)
        assert "comma-separated" in str(err.value)


def test_each_reconnect_takes_the_next_node_of_the_list():
    """While a cluster elects a leader its other nodes may refuse too, so the kill test cannot
    insist the device lands elsewhere; this shows the rotation itself."""
    from edgeloop.sync.mqtt_client import make_client

    client = make_client(BrokerConfig("a", 1, fallbacks=(("b", 2), ("c", 3))), "rot-1")
    seen = []
    for _ in range(4):
        client.on_pre_connect(client, None)
        seen.append((client.host, client.port))
    assert seen == [("a", 1), ("b", 2), ("c", 3), ("a", 1)]
    single = make_client(BrokerConfig("a", 1), "rot-2")
    assert single.on_pre_connect is None  # one broker: paho's own reconnect, untouched


def test_a_nats_node_sigkilled_mid_drain_loses_nothing_and_stores_nothing_twice(tmp_path, cluster, caplog):
    caplog.set_level(logging.INFO, "edgeloop.link")
    ports = cluster.mqtt_ports
    local = "127.0.0.1"
    store = SqliteStore(tmp_path / "regional.db")
    # Both ask for MQTT 5 (the default) and fall back to 3.1.1 when the gateway refuses it.
    receiver = RegionalReceiver(store, BrokerConfig(local, ports[2], fallbacks=((local, ports[0]), (local, ports[1]))),
                                fleet="f1", client_id="rx-nats")
    box = Outbox(tmp_path / "o.db", "cam-n")
    link = MqttLink(box, LinkConfig(local, ports[0], fallbacks=((local, ports[1]), (local, ports[2])), fleet="f1",
                                    device="cam-n", batch_records=100, backoff_max_s=0.5, commit_timeout_s=5.0,
                                    commit_timeout_max_s=10.0))
    ids: set[str] = set()
    try:
        receiver.start()
        assert receiver.subscribed.wait(30), "the receiver never subscribed through the NATS gateway"
        assert receiver.protocol == "3.1.1"
        link.start()
        killed = []
        for n in range(NATS_KILLS):
            # Feed the backlog until the device is seen sending with records still queued: a
            # backlog enqueued in one go can drain between two polls (CI saw exactly that).
            start = link.stats()["delivered_records"]
            deadline = time.monotonic() + 30
            i = 0
            while True:
                if rows(box) < 2000:
                    ids |= {e.id for e in box.enqueue_many(("s", {"round": n, "i": i + k}) for k in range(500))}
                    i += 500
                if (link.stats()["state"] == "online" and link.stats()["delivered_records"] > start
                        and rows(box) > 0):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out after 30 s waiting for a drain under way: link "
                                         f"{link.stats()}, receiver {receiver.stats()}, outbox rows {rows(box)}")
                time.sleep(0.02)
            node = ports.index(link._client.port)  # the node the device is on
            cluster.nodes[node].kill()
            killed.append(node)
            time.sleep(1.0)
            cluster.restart(node)
        wait_for(lambda: rows(box) == 0, 120, "every record committed and deleted")
        stats = store.stats()["devices"]["cam-n"]
        assert store.ids() == ids and stats["records"] == len(ids), stats  # nothing lost, nothing twice
        assert link.stats()["protocol"] == "3.1.1"
        online = [r.getMessage() for r in caplog.records if "online to" in r.getMessage()]
        assert len(online) >= NATS_KILLS + 1, online  # back online after each kill (on whichever node)
        print(f"\n{NATS_KILLS} NATS node kill(s) (nodes {killed}) during a drain of {len(ids)} records: "
              f"0 lost, {stats['duplicates_dropped']} duplicate(s) dropped, {box.resent} resent; {online}")
    finally:
        link.stop()
        receiver.stop()
        box.close()
        store.close()


def test_a_cluster_that_does_not_come_up_is_started_afresh_on_new_ports(tmp_path, monkeypatch, capfd):
    """The harness itself: CI once saw a 3-node cluster route but never elect its metadata
    leader. The first attempt is made to fail; the second, on fresh ports, serves MQTT."""
    nats = NatsCluster(tmp_path / "nats", 3)
    first_ports = nats.mqtt_ports
    real_wait = NatsCluster._wait
    calls = []

    def failing_once(self, nodes, timeout_s):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no metadata leader (made to fail)")
        return real_wait(self, nodes, timeout_s)

    monkeypatch.setattr(NatsCluster, "_wait", failing_once)
    nats.start()
    try:
        assert len(calls) == 2
        assert set(nats.mqtt_ports).isdisjoint(first_ports)
        assert all(n.listening() for n in nats.nodes)
        assert "attempt 1 of 3 did not come up" in capfd.readouterr().err
    finally:
        nats.stop()
    monkeypatch.setattr(NatsCluster, "_wait", lambda self, nodes, t: (_ for _ in ()).throw(RuntimeError("never")))
    with pytest.raises(RuntimeError, match="never"):
        NatsCluster(tmp_path / "nats2", 1).start(attempts=2)
