"""The regional receiver: subscribes to a fleet's data topics, commits what arrives to the
regional store, and acknowledges each commit to the devices.

Messages are taken by paho's thread and committed by the receiver's own store thread, many
at a time in one transaction (a PostgreSQL commit costs the same for 1 record as for 5,000).
After the commit, in this order: the commit ack to each device (``edgeloop/v1/{fleet}/
{device}/ack``, which is what lets the device delete the records), then the PUBACKs, in the
order the messages came. A receiver that dies before its commit leaves the messages with the
broker; one that dies after it sends the ack when the broker delivers them again (the store
dedupes by id). A store that cannot commit (PostgreSQL restarting) keeps the batch and tries
again with backoff; nothing is acknowledged meanwhile.

Without ``client_id`` the receiver takes a stable one (fleet, share group and host name), so
the broker keeps its session and queues across restarts. Several receivers share the load
through an MQTT 5 shared subscription (``$share/<group>/...``); each needs its own client id.
It also watches the devices' retained status topics, and says so when devices are online in
another fleet while none of its own sends anything (a receiver on the wrong ``--fleet``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt

from edgeloop.runtime.logs import Throttled

from .acks import encode_ack
from .codec import MAX_BATCH_BYTES
from .mqtt_client import BrokerConfig, Guard, connect_properties, make_client, refuses_mqtt5
from .store import Committed, Store, StoreUnavailable
from .topics import DEFAULT_FLEET, topic

log = logging.getLogger("edgeloop.regional")

BATCH_MESSAGES = 256  # messages committed in one transaction at most
GATHER_S = 0.002  # a moment's wait for more messages before a commit
RECEIVE_MAXIMUM = 1024  # messages the broker may have in flight to us, unacknowledged (MQTT 5)
WRONG_FLEET_AFTER_S = 10.0  # then every minute: devices online elsewhere and none of ours sending


def default_client_id(fleet: str, share: str | None) -> str:
    return f"edgeloop-regional-{fleet}-{share + '-' if share else ''}{socket.gethostname()}"[:128]


class RegionalReceiver:
    """Subscribes and stores. ``share`` names an MQTT 5 shared-subscription group."""

    def __init__(self, store: Store, broker: BrokerConfig, fleet: str = DEFAULT_FLEET,
                 share: str | None = None, client_id: str | None = None,
                 wrong_fleet_after_s: float = WRONG_FLEET_AFTER_S) -> None:
        self.store = store
        self.wrong_fleet_after_s = wrong_fleet_after_s
        self.broker = broker
        self.fleet = fleet
        pattern = topic(fleet, "+", "data/#")
        self.subscription = f"$share/{share}/{pattern}" if share else pattern
        self.client_id = client_id or default_client_id(fleet, share)
        self.guard = Guard("receiver")
        self.protocol = broker.protocol
        self._refused_mqtt5 = False
        self.client = self._make_client()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker confirmed the data subscription (SUBACK)
        self._data_mid: int | None = None
        self.messages = 0  # payloads this receiver committed
        self.records = self.duplicates = self.spoofed = self.malformed = 0
        # Any client that can publish on the data topics can make these at will: counted each, said now and then.
        self._spoofed_log, self._malformed_log = Throttled(log), Throttled(log)
        self.acks_sent = 0
        self.store_errors = 0
        self.online: dict[str, set[str]] = {}  # fleet -> devices whose retained status says online
        self._queue: deque[mqtt.MQTTMessage] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._started = 0.0
        self._next_fleet_check = 0.0
        self._thread = threading.Thread(target=self._store_loop, name="regional-store", daemon=True)

    def _make_client(self) -> mqtt.Client:
        # Manual acknowledgement: PUBACK only once the records are committed.
        client = make_client(self.broker, self.client_id, protocol=self.protocol, manual_ack=True, persistent=True)
        client.on_connect = self.guard(self._on_connect)
        client.on_disconnect = self.guard(self._on_disconnect)
        client.on_message = self.guard(self._on_message)
        client.on_subscribe = self.guard(self._on_subscribe)
        client.reconnect_delay_set(0.2, 10)
        return client

    def _connect(self) -> None:
        if self.protocol == "5":
            # The session (and what the broker queues for it) outlives a restart of this receiver.
            properties = connect_properties(MAX_BATCH_BYTES + 4096, SessionExpiryInterval=24 * 3600,
                                            ReceiveMaximum=RECEIVE_MAXIMUM)
            self.client.connect_async(self.broker.host, self.broker.port, 30, clean_start=False,
                                      properties=properties)
        else:  # 3.1.1: clean_session off keeps the session; the broker bounds what is in flight
            self.client.connect_async(self.broker.host, self.broker.port, 30)
        self.client.loop_start()

    def _fall_back_to_311(self) -> None:
        """On the store thread: paho's own thread cannot stop itself, and paho fixes the protocol
        when a client is made."""
        log.warning("regional: %s refused MQTT 5; reconnecting with MQTT 3.1.1 (a --share group then needs a "
                    "broker that offers $share to 3.1.1 clients, as Mosquitto does and NATS does not)",
                    self.broker.address)
        self.client.loop_stop()
        self.protocol = "3.1.1"
        self.client = self._make_client()
        self._connect()

    # -- paho's thread -------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("regional: broker refused the connection: %s", reason)
            if self.protocol == "5" and refuses_mqtt5(reason):
                with self._cond:
                    self._refused_mqtt5 = True
                    self._cond.notify()
            return
        self._data_mid = client.subscribe(self.subscription, qos=1)[1]
        client.subscribe(topic("+", "+", "status"), qos=0)
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        if mid != self._data_mid:
            return
        if any(r.is_failure for r in reasons):
            log.error("regional: the broker refused the subscription %s: %s", self.subscription,
                      ", ".join(str(r) for r in reasons))
            return
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if getattr(reason, "value", None) == 142:  # Session taken over
            log.error("regional: another client connected with this receiver's client id '%s' and took its "
                      "session; give each receiver its own --client-id", self.client_id)
        elif self._running:
            log.warning("regional: disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/status"):
            self._saw_status(message)
            if message.qos:
                client.ack(message.mid, message.qos)
            return
        with self._cond:
            self._queue.append(message)
            self._cond.notify()

    def _saw_status(self, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) != 5:
            return
        devices = self.online.setdefault(parts[2], set())
        if message.payload == b"online":
            devices.add(parts[3])
        else:
            devices.discard(parts[3])

    # -- the store thread -----------------------------------------------------------------

    def _store_loop(self) -> None:
        backoff = 0.2
        while True:
            with self._cond:
                while self._running and not self._queue and not self._refused_mqtt5:
                    self._cond.wait(1.0)
                    self._check_fleet()
                if not self._running:
                    return
                refused, self._refused_mqtt5 = self._refused_mqtt5, False
            if refused:
                self._fall_back_to_311()
                continue
            with self._cond:
                if len(self._queue) < BATCH_MESSAGES:
                    self._cond.wait(GATHER_S)
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH_MESSAGES))]
            while True:
                try:
                    committed = self._commit(batch)
                    backoff = 0.2
                    break
                except StoreUnavailable as exc:
                    # Kept, unacknowledged, and tried again: the broker holds them too.
                    self.store_errors += 1
                    if not self._running:
                        return
                    log.warning("regional: %s; retrying in %.1f s", exc.problem, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            for (fleet, device), epochs in committed.acks.items():
                for epoch, seqs in epochs.items():
                    self.client.publish(topic(fleet, device, "ack"), encode_ack(epoch, seqs), qos=1)
                    self.acks_sent += 1
            for m in batch:
                self.client.ack(m.mid, m.qos)
            self.messages += len(batch)
            self.records += committed.new
            self.duplicates += committed.duplicates
            self.spoofed += committed.spoofed
            self.malformed += committed.malformed
            if committed.spoofed:
                self._spoofed_log.warning("regional: %d envelope(s) named another device than their topic; kept "
                                          "aside as spoofed", committed.spoofed)
            if committed.malformed:
                self._malformed_log.warning("regional: %d malformed payload(s) kept aside", committed.malformed)

    def _commit(self, batch: list[mqtt.MQTTMessage]) -> Committed:
        """One transaction for the batch. A batch the store refuses for a reason other than being
        down is committed a message at a time, and a message refused alone is kept aside: one
        hostile message must neither stop this thread nor hold back the others."""
        try:
            return self.store.commit([(m.topic, m.payload) for m in batch])
        except StoreUnavailable:
            raise
        except Exception as exc:
            log.exception("regional: the store refused a batch (%s); committing its messages one by one", exc)
        total = Committed(0, 0, 0, 0, {})
        for m in batch:
            try:
                one = self.store.commit([(m.topic, m.payload)])
            except StoreUnavailable:
                raise
            except Exception as exc:
                self.store.keep_aside(m.topic, m.payload, f"the store refused it: {type(exc).__name__}: {exc}")
                total.malformed += 1
                continue
            total.new += one.new
            total.duplicates += one.duplicates
            total.spoofed += one.spoofed
            total.malformed += one.malformed
            for key, epochs in one.acks.items():
                for epoch, seqs in epochs.items():
                    total.acks.setdefault(key, {}).setdefault(epoch, []).extend(seqs)
        return total

    def other_fleets_online(self) -> dict[str, int]:
        """Fleets other than ours with devices online (by their retained status)."""
        return {f: len(d) for f, d in self.online.items() if f != self.fleet and d}

    def _check_fleet(self) -> None:
        now = time.monotonic()
        if self.messages or now < self._next_fleet_check:
            return
        self._next_fleet_check = now + 60.0
        others = self.other_fleets_online()
        if others and not self.online.get(self.fleet):
            names = ", ".join(f"{f} ({n} device{'s' if n != 1 else ''})" for f, n in sorted(others.items()))
            log.warning("regional: nothing received for fleet '%s', and no device of it is online; devices are "
                        "online in %s. Is --fleet right?", self.fleet, names)

    def stats(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "subscription": self.subscription, "protocol": self.protocol,
                "connected": self.connected.is_set(),
                "messages": self.messages, "records": self.records, "duplicates": self.duplicates,
                "spoofed": self.spoofed, "malformed": self.malformed, "acks_sent": self.acks_sent,
                "store_errors": self.store_errors, "queued": len(self._queue),
                "other_fleets_online": self.other_fleets_online(), "callback_errors": self.guard.errors}

    def start(self) -> None:
        self._running = True
        self._started = time.monotonic()
        self._next_fleet_check = self._started + self.wrong_fleet_after_s
        self._thread.start()
        self._connect()

    def stop(self) -> None:
        """Commit and acknowledge what was taken, then disconnect."""
        deadline = time.monotonic() + 10
        while self._queue and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()
