"""Many devices' links on one hub thread, against a real Mosquitto and a real nats-server:
exactly once through a broker kill, the MQTT 3.1.1 fallback, and one device's failure kept
from the others."""

from __future__ import annotations

import threading
import time

from conftest import wait_for

from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.link import LinkConfig, MqttLink
from edgeloop.sync.link_hub import LinkHub
from edgeloop.sync.mqtt_client import BrokerConfig
from edgeloop.sync.outbox import Outbox
from edgeloop.sync.receiver import RegionalReceiver
from edgeloop.sync.store_sqlite import SqliteStore

DEVICES = 30


def rows(box: Outbox) -> int:
    return sum(s["rows"] for s in box.stats()["streams"].values())


def devices(tmp_path, hub, port, n=DEVICES, **config):
    boxes = [Outbox(tmp_path / f"d{i}.db", f"hub-{i}") for i in range(n)]
    links = [MqttLink(box, LinkConfig("127.0.0.1", port, fleet="f1", device=box.device, batch_records=50,
                                      backoff_max_s=0.5, **config), hub=hub) for box in boxes]
    return boxes, links


def stop(hub, links, boxes) -> None:
    for link in links:
        link.stop()
    hub.stop()
    for box in boxes:
        box.close()


def test_many_devices_on_one_thread_through_a_broker_kill_lose_nothing_and_store_nothing_twice(
        tmp_path, broker, regional):
    hub = LinkHub()
    boxes, links = devices(tmp_path, hub, broker.port, commit_timeout_s=3.0)
    ids: set[str] = set()
    try:
        for link in links:
            link.start()
        names = [t.name for t in threading.enumerate()]
        assert names.count("link-hub") == 1 and not [n for n in names if "drain" in n or n.startswith("paho-mqtt-client-edgeloop-f1-hub")], names
        wait_for(lambda: hub.stats()["online"] == DEVICES, 20, "every device online")
        for box in boxes:
            ids |= {e.id for e in box.enqueue_many(("s", {"n": n}) for n in range(300))}
        wait_for(lambda: sum(link.stats()["delivered_records"] for link in links) > 0, 20, "a drain under way")
        broker.stop(kill=True)
        time.sleep(0.5)
        for box in boxes:  # enqueued while the broker is down
            ids |= {e.id for e in box.enqueue_many(("s", {"offline": n}) for n in range(20))}
        broker.start()
        wait_for(lambda: all(rows(box) == 0 for box in boxes), 90, "every record committed and deleted")
        stats = regional.stats()["devices"]
        assert regional.ids() == ids  # nothing lost
        assert sum(stats[box.device]["records"] for box in boxes) == len(ids)  # nothing stored twice
        assert hub.stats() == {"links": DEVICES, "online": DEVICES, "alive": True, "errors": 0}
    finally:
        stop(hub, links, boxes)
    assert hub.stats()["links"] == 0 and not hub.stats()["alive"]


def test_a_hub_link_falls_back_to_mqtt_311_on_a_broker_that_refuses_mqtt_5(tmp_path):
    from edgeloop.tools.testing.nats import NatsCluster

    nats = NatsCluster(tmp_path / "nats", 1).start()
    port = nats.mqtt_ports[0]
    store = SqliteStore(tmp_path / "regional.db")
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", port), fleet="f1", client_id="rx-hub")
    hub = LinkHub()
    boxes, links = devices(tmp_path, hub, port, n=3)
    try:
        receiver.start()
        assert receiver.subscribed.wait(20)
        ids = {e.id for box in boxes for e in box.enqueue_many(("s", {"n": n}) for n in range(100))}
        for link in links:
            link.start()
        wait_for(lambda: all(rows(box) == 0 for box in boxes), 60, "every record committed through NATS")
        assert store.ids() == ids
        assert {link.stats()["protocol"] for link in links} == {"3.1.1"}
    finally:
        stop(hub, links, boxes)
        receiver.stop()
        store.close()
        nats.stop()


def test_one_devices_failing_drain_is_logged_and_counted_and_the_others_go_on(tmp_path, broker, regional, caplog):
    hub = LinkHub()
    boxes, links = devices(tmp_path, hub, broker.port, n=3)

    def broken(*args, **kwargs):
        raise RuntimeError("this device's outbox is broken")

    boxes[0].next_batch = broken
    try:
        for link in links:
            link.start()
        ids = {e.id for box in boxes[1:] for e in box.enqueue_many(("s", {"n": n}) for n in range(100))}
        boxes[0].enqueue("s", {"n": 0})
        wait_for(lambda: regional.ids() >= ids and all(rows(box) == 0 for box in boxes[1:]), 30,
                 "the healthy devices' records committed")
        assert hub.stats()["errors"] > 0 and hub.stats()["alive"]
        assert "hub-0's drain failed" in caplog.text
        assert rows(boxes[0]) == 1  # kept, not lost
    finally:
        stop(hub, links, boxes)


def test_a_rate_cap_is_refused_on_a_hub_with_the_fix(tmp_path):
    hub = LinkHub()
    try:
        with Outbox(tmp_path / "o.db", "cap") as box:
            try:
                MqttLink(box, LinkConfig("127.0.0.1", 1, device="cap", max_records_per_s=10), hub=hub)
            except ConfigError as exc:
                assert "max_records_per_s" in str(exc) and "link of its own" in str(exc)
            else:
                raise AssertionError("a rate cap on a hub link was accepted")
    finally:
        hub.stop()
