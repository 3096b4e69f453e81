"""The regional receiver: subscribes to a fleet's data topics, dedupes by record id, stores.

A message is acknowledged (PUBACK, after ``on_message`` returns) only once its records are
committed, so a receiver that dies loses nothing the broker still has. Several receivers
can share the load through an MQTT 5 shared subscription (``$share/<group>/...``); the
database's unique id still stores each record once. Malformed payloads are counted and
kept aside, never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .codec import MalformedEnvelope, decode_batch
from .mqtt_client import BrokerConfig, Guard, make_client
from .topics import DEFAULT_FLEET, topic

log = logging.getLogger("edgeloop.regional")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    stream TEXT NOT NULL, trace TEXT, body BLOB NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS records_device ON records (device, seq);
CREATE TABLE IF NOT EXISTS duplicates (device TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS malformed (received REAL NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
                                      payload BLOB NOT NULL);
"""


class RegionalStore:
    """The regional database: records by id (the dedupe), duplicates and malformed payloads."""

    def __init__(self, path: str | Path) -> None:
        self.db = apsw.Connection(str(path))
        self.db.setbusytimeout(10_000)  # several receivers may share one file
        self.db.execute("PRAGMA journal_mode=WAL")
        with self.db:
            self.db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def store(self, topic_name: str, payload: bytes) -> tuple[int, int]:
        """Store a batch; returns (new, duplicates). Malformed payloads are kept aside."""
        try:
            envelopes = decode_batch(payload)
        except MalformedEnvelope as exc:
            with self._lock, self.db:
                self.db.execute("INSERT INTO malformed VALUES (?,?,?,?)", (time.time(), topic_name, str(exc), payload))
            log.warning("regional: malformed payload on %s kept aside: %s", topic_name, exc)
            return 0, 0
        new = dup = 0
        now = time.time()
        with self._lock, self.db:
            for e in envelopes:
                self.db.execute("INSERT OR IGNORE INTO records VALUES (?,?,?,?,?,?,?,?)",
                                (e.id, e.device, e.seq, e.ts, e.stream, e.trace,
                                 msgpack.packb(e.body, use_bin_type=True), now))
                if self.db.changes():
                    new += 1
                else:
                    dup += 1
                    self.db.execute("INSERT INTO duplicates VALUES (?, 1) ON CONFLICT (device) "
                                    "DO UPDATE SET count = count + 1", (e.device,))
        return new, dup

    def stats(self) -> dict[str, Any]:
        devices: dict[str, dict[str, Any]] = {}
        with self._lock:
            for device, n, lo, hi in self.db.execute(
                    "SELECT device, count(*), min(seq), max(seq) FROM records GROUP BY device"):
                # Sequence numbers are per device and increase; holes are records not (yet) here.
                devices[device] = {"records": n, "first_seq": lo, "last_seq": hi, "duplicates_dropped": 0}
            for device, count in self.db.execute("SELECT device, count FROM duplicates"):
                devices.setdefault(device, {"records": 0, "first_seq": None, "last_seq": None})
                devices[device]["duplicates_dropped"] = count
            malformed = self.db.execute("SELECT count(*) FROM malformed").fetchone()[0]
        return {"devices": devices, "malformed": malformed}

    def ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.db.execute("SELECT id FROM records")}

    def close(self) -> None:
        self.db.close()


class RegionalReceiver:
    """Subscribes and stores. ``share`` names an MQTT 5 shared-subscription group."""

    def __init__(self, store: RegionalStore, broker: BrokerConfig, fleet: str = DEFAULT_FLEET,
                 share: str | None = None, client_id: str | None = None) -> None:
        self.store = store
        self.broker = broker
        pattern = topic(fleet, "+", "data/#")
        self.subscription = f"$share/{share}/{pattern}" if share else pattern
        self.client_id = client_id
        # Manual acknowledgement: PUBACK only once the records are committed.
        self.guard = Guard("receiver")
        self.client = make_client(broker, client_id or "", protocol="5", manual_ack=True)
        self.client.on_connect = self.guard(self._on_connect)
        self.client.on_message = self.guard(self._on_message)
        self.client.reconnect_delay_set(0.2, 10)
        self.connected = threading.Event()
        self.messages = 0  # payloads this receiver handled

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("regional: broker refused the connection: %s", reason)
            return
        client.subscribe(self.subscription, qos=1)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self.store.store(message.topic, message.payload)
        except apsw.Error:
            # Not acknowledged: the broker delivers it again after a reconnect.
            log.exception("regional: storing a batch from %s failed; left unacknowledged", message.topic)
            return
        self.messages += 1
        client.ack(message.mid, message.qos)

    def start(self) -> None:
        # A named receiver keeps its session (and the broker queues for it) across restarts.
        properties = None
        if self.client_id:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 24 * 3600
        self.client.connect_async(self.broker.host, self.broker.port, 30, clean_start=not self.client_id, properties=properties)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
