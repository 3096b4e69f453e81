"""The link's protocol and security options against a real Mosquitto: falling back to MQTT 3.1.1
when the broker refuses 5, TLS with a client certificate (mutual TLS) and a password, and the
refusals that must leave every record in the outbox."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import wait_for
from edgeloop.sync.link import LinkConfig, MqttLink
from edgeloop.sync.outbox import Outbox
from edgeloop.tools.testing.faultproxy import FaultProxy


def drain(tmp_path: Path, name: str, config: LinkConfig, n: int = 50, seconds: float = 15.0) -> tuple[set, MqttLink, int]:
    """Enqueue ``n`` records, run the link for up to ``seconds`` or until the outbox is empty."""
    with Outbox(tmp_path / f"{name}.db", config.device) as box:
        ids = {e.id for e in box.enqueue_many(("s", {"n": k}) for k in range(n))}
        link = MqttLink(box, config)
        link.start()
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and sum(s["rows"] for s in box.stats()["streams"].values()):
                time.sleep(0.05)
        finally:
            link.stop()
        left = sum(s["rows"] for s in box.stats()["streams"].values())
    return ids, link, left


def test_a_broker_that_refuses_mqtt5_gets_mqtt_311(tmp_path, broker, regional, caplog):
    proxy = FaultProxy(broker.port, refuse_mqtt5=True)
    try:
        ids, link, left = drain(tmp_path, "old", LinkConfig("127.0.0.1", proxy.port, fleet="f1", device="old-1"))
    finally:
        proxy.close()
    assert left == 0 and link.stats()["protocol"] == "3.1.1"
    wait_for(lambda: regional.ids() >= ids, 10, "the records sent over MQTT 3.1.1")
    assert any("reconnecting with MQTT 3.1.1" in r.getMessage() for r in caplog.records)


def tls_config(b, *, ca: str = "ca", cert: str | None = "device", password: str = "s3cret") -> LinkConfig:
    d = b.pki
    return LinkConfig("127.0.0.1", b.tls_port, fleet="f1", device="dev-tls", username="device-1", password=password,
                      ca_file=str(d / f"{ca}.crt"), cert_file=str(d / f"{cert}.crt") if cert else None,
                      key_file=str(d / f"{cert}.key") if cert else None, backoff_max_s=0.5)


def test_mutual_tls_with_a_password_delivers(tmp_path, tls_broker):
    from edgeloop.sync.mqtt_client import BrokerConfig
    from edgeloop.sync.receiver import RegionalReceiver
    from edgeloop.sync.store_sqlite import SqliteStore

    store = SqliteStore(tmp_path / "regional.db")
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", tls_broker.port), fleet="f1", client_id="regional-tls")
    receiver.start()
    try:
        assert receiver.connected.wait(10)
        time.sleep(0.2)
        ids, link, left = drain(tmp_path, "tls", tls_config(tls_broker))
        assert left == 0
        wait_for(lambda: store.ids() >= ids, 10, "the records sent over mutual TLS")
    finally:
        receiver.stop()
        store.close()


@pytest.mark.parametrize("case", ["no client certificate", "certificate from another CA",
                                  "server not trusted", "wrong password"])
def test_refused_connections_keep_every_record(tmp_path, tls_broker, case):
    config = {"no client certificate": lambda: tls_config(tls_broker, cert=None),
              "certificate from another CA": lambda: tls_config(tls_broker, cert="rogue"),
              "server not trusted": lambda: tls_config(tls_broker, ca="rogue-ca"),
              "wrong password": lambda: tls_config(tls_broker, password="guess")}[case]()
    ids, link, left = drain(tmp_path, "refused", config, n=20, seconds=2.0)
    assert left == 20 and link.stats()["state"] != "online" and link.stats()["delivered_records"] == 0


def test_backoff_grows_with_jitter():
    import random

    from edgeloop.sync.link import backoff_s

    rng = random.Random(1)
    for attempt in range(12):
        waits = [backoff_s(attempt, 0.2, 30.0, rng) for _ in range(200)]
        top = min(30.0, 0.2 * 2 ** attempt)
        assert all(0.2 <= w <= top for w in waits)
        if attempt >= 2:
            assert max(waits) - min(waits) > top * 0.5  # spread, so a fleet does not reconnect in step
    assert backoff_s(10_000, 0.2, 30.0, rng) <= 30.0


def test_reconnect_attempts_back_off_against_a_dead_broker(tmp_path):
    """A port that accepts and hangs up at once: the link's attempts spread out over time."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    attempts: list[float] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            attempts.append(time.monotonic())
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    config = LinkConfig("127.0.0.1", listener.getsockname()[1], device="dead", backoff_min_s=0.05, backoff_max_s=0.8)
    try:
        _, link, left = drain(tmp_path, "dead", config, n=5, seconds=4.0)
    finally:
        listener.close()
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert left == 5 and 7 <= len(attempts) <= 40, attempts
    assert max(gaps[-4:]) > 2 * min(gaps[:2]), gaps  # later waits are longer
    assert len({round(g, 3) for g in gaps}) > len(gaps) // 2, gaps  # and jittered
