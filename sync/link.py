"""The MQTT link from the outbox to the regional edge (paho-mqtt 2.x).

A drain thread takes batches from the outbox and publishes them at QoS 1, at most
``inflight_window`` messages unacknowledged at a time. The broker's PUBACK only marks a record
sent: it is deleted when the regional store's commit acknowledgement names it (on
``edgeloop/v1/{fleet}/{device}/ack``, see ``acks``). A record whose commit has not come
``commit_timeout_s`` after the PUBACK is sent again (the store dedupes by id), so a broker or a
receiver that loses it loses nothing; the wait doubles while no ack comes at all, up to
``commit_timeout_max_s``, and at most ``max_awaiting`` records wait for a commit at a time. On a
disconnect, what the broker has not acknowledged goes back to the outbox and is sent again
after reconnecting. Reconnects back off exponentially with jitter.
A retained ``status`` topic says ``online`` (birth) and ``offline`` (last will).
The hot path never waits on any of this: it only enqueues.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from edgeloop.runtime.errors import ConfigError
from edgeloop.runtime.logs import Throttled

from .acks import MAX_ACK_BYTES, MalformedAck, decode_ack
from .codec import encode_batch
from .mqtt_client import BrokerConfig, Guard, connect_properties, make_client, refuses_mqtt5
from .outbox import Outbox
from .topics import DEFAULT_FLEET, topic

if TYPE_CHECKING:
    from .link_hub import LinkHub

log = logging.getLogger("edgeloop.link")

OFFLINE, CONNECTING, ONLINE = "offline", "connecting", "online"
# How long the drain waits before looking at an outbox it found empty, on its own: new and
# released records wake it at once (Outbox.on_stored), so this only bounds records written by
# another process.
IDLE_MAX_S = 1.0


def backoff_s(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform between ``low`` and ``low * 2**attempt``
    (capped at ``high``), so a fleet that lost the same broker does not come back in step."""
    return rng.uniform(low, min(high, low * 2 ** min(attempt, 30)))


@dataclass(frozen=True)
class LinkConfig:
    host: str
    port: int = 1883
    fallbacks: tuple[tuple[str, int], ...] = ()  # the other nodes of a broker cluster, tried in turn
    fleet: str = DEFAULT_FLEET
    device: str = "device"
    protocol: str = "5"  # "5", or "3.1.1"; a broker that refuses 5 is retried with 3.1.1
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # TLS when set
    cert_file: str | None = None  # mutual TLS with key_file
    key_file: str | None = None
    keepalive_s: int = 30
    inflight_window: int = 16
    batch_records: int = 1000
    batch_bytes: int = 256 * 1024
    live_share: float = 0.25
    backoff_min_s: float = 0.2
    backoff_max_s: float = 30.0
    max_records_per_s: float = 0.0  # a cap on the drain (0: none), so a long catch-up leaves CPU to inference
    commit_timeout_s: float = 30.0  # sent again when the regional commit has not come by then
    commit_timeout_max_s: float = 600.0  # the wait doubles up to this while no commit comes at all
    max_awaiting: int = 50_000  # records the broker has that may wait for their commit at once

    def __repr__(self) -> str:  # never a password in a log line
        return f"LinkConfig({self.broker.address}, {self.fleet}/{self.device})"

    @property
    def broker(self) -> BrokerConfig:
        return BrokerConfig(self.host, self.port, self.protocol, self.username, self.password, self.ca_file,
                            self.cert_file, self.key_file, self.keepalive_s, self.backoff_min_s, self.backoff_max_s,
                            self.fallbacks)


class MqttLink:
    """Drains an outbox to a broker. ``start()``, then ``stop()``.

    On its own a link has two threads (paho's network loop and the drain). Given a ``hub``
    (``link_hub.LinkHub``), it has none: the hub's one thread runs the network and the drain of
    many links, for a gateway that speaks for many devices (and the fleet simulator)."""

    def __init__(self, outbox: Outbox, config: LinkConfig, hub: "LinkHub | None" = None) -> None:
        if hub is not None and config.max_records_per_s > 0:
            raise ConfigError("link: max_records_per_s is not available on a link hub",
                              "give the device a link of its own, or drop the cap")
        self.outbox = outbox
        self.config = config
        self.hub = hub
        self.state = OFFLINE
        self.published = 0  # messages the broker acknowledged
        self.delivered = 0  # records the regional store acknowledged (committed)
        self.acks = 0  # commit acks taken
        self.bad_acks = 0  # malformed acks, ignored
        self._bad_ack_log = Throttled(log)  # anyone who can publish there can send them at will
        self._committed: dict[str, list[int]] = {}  # epoch -> seqs named by commit acks, not yet deleted
        self._puback_seqs: list[int] = []  # the broker has them, not yet marked sent
        self._timeout_s = config.commit_timeout_s
        self._next_resend_check = 0.0
        self._pending: dict[int, list[int]] = {}  # mid -> outbox seqs
        self._early: set[int] = set()  # mids acknowledged before they were recorded
        self._acked_messages = 0
        self._refused_mqtt5 = False
        # The ack subscription: "pending" until its SUBACK, "granted", or "refused: why". A
        # refused one is retried with backoff; until granted no record can be committed.
        self.ack_subscription = "pending"
        self.ack_subscription_refusals = 0
        self._ack_sub_mid: int | None = None
        self._resubscribe_at = 0.0  # monotonic; 0: no retry due
        self._fresh = False  # the outbox stored new records since the drain last looked
        self._attempt = 0  # failed connections since the last success
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._running = False
        self._protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
        self.last_backoff_s = 0.0
        self._next_send = 0.0  # when the drain may send again under max_records_per_s
        self._idle = 0.0  # how long to wait for new records when the outbox had none
        self._poll_at = 0.0  # monotonic: when the drain looks anyway
        self.guard = Guard("link")
        self._client = self._make_client()
        self._drainer = threading.Thread(target=self._drain_loop, name="link-drain", daemon=True)

    def _make_client(self) -> mqtt.Client:
        c = self.config
        client = make_client(c.broker, f"edgeloop-{c.fleet}-{c.device}",
                             protocol="5" if self._protocol == mqtt.MQTTv5 else "3.1.1",
                             will=(topic(c.fleet, c.device, "status"), b"offline"), persistent=True)
        client.max_inflight_messages_set(c.inflight_window)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(c.backoff_min_s, c.backoff_min_s)  # each wait is set by _back_off
        client.on_connect = self.guard(self._on_connect)
        client.on_disconnect = self.guard(self._on_disconnect)
        client.on_publish = self.guard(self._on_publish)
        client.on_message = self.guard(self._on_message)
        client.on_subscribe = self.guard(self._on_subscribe)
        client.on_connect_fail = self.guard(lambda client, userdata: self._back_off())
        if self.hub is not None:
            self.hub.adopt(self, client)
        return client

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self.outbox.on_stored(self._records_stored)
        self.state = CONNECTING
        self._connect()
        if self.hub is None:
            self._drainer.start()

    def _connect(self) -> None:
        properties = None
        if self._protocol == mqtt.MQTTv5:
            # a persistent session across short outages; only acks come down
            properties = connect_properties(MAX_ACK_BYTES + 1024, SessionExpiryInterval=3600)
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive_s,
                                   clean_start=False if self._protocol == mqtt.MQTTv5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                                   properties=properties)
        if self.hub is not None:
            self.hub.connect_soon(self)
        else:
            self._client.loop_start()

    def _fall_back_to_311(self) -> None:
        """The broker refused MQTT 5: a new paho client speaking 3.1.1 (paho fixes the protocol
        when a client is made). On the drain thread: paho's own thread cannot stop itself."""
        log.warning("link: %s:%d refused MQTT 5; reconnecting with MQTT 3.1.1", self._client.host,
                    self._client.port)
        if self.hub is not None:
            self.hub.forget(self)
        else:
            self._client.loop_stop()
        self._protocol = mqtt.MQTTv311
        self._client = self._make_client()
        self._connect()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say ``offline``, disconnect cleanly; what is still in flight stays in the outbox."""
        self._running = False
        if self.hub is not None:
            self.hub.close(self, timeout_s)  # says offline and disconnects on the hub's thread
        else:
            with self._wake:
                self._notify()
            self._drainer.join(timeout_s)
            if self.state == ONLINE:
                c = self.config
                info = self._client.publish(topic(c.fleet, c.device, "status"), b"offline", qos=1, retain=True)
                info.wait_for_publish(timeout_s)
            self._client.disconnect()
            self._client.loop_stop()
        self._delete_acked()
        self._release_all()

    @property
    def ack_topic(self) -> str:
        return topic(self.config.fleet, self.config.device, "ack")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self.state, "protocol": "5" if self._protocol == mqtt.MQTTv5 else "3.1.1",
                    "in_flight_messages": len(self._pending),
                    "published_messages": self.published, "delivered_records": self.delivered,
                    "commit_acks": self.acks, "bad_acks": self.bad_acks,
                    "ack_subscription": self.ack_subscription,
                    "ack_subscription_refusals": self.ack_subscription_refusals, "awaiting_commit": self.outbox.awaiting(),
                    "resent_records": self.outbox.resent, "commit_timeout_s": round(self._timeout_s, 1),
                    "last_backoff_s": round(self.last_backoff_s, 3), "callback_errors": self.guard.errors}

    # -- paho callbacks (its network thread) ----------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("link: broker refused the connection: %s", reason)
            if self._protocol == mqtt.MQTTv5 and refuses_mqtt5(reason):
                with self._wake:
                    self._refused_mqtt5 = True
                    self._notify()
            return
        c = self.config
        self._attempt = 0
        # Every time: a broker that lost its state (or a clean session) has no subscription.
        self._subscribe_acks(client)
        client.publish(topic(c.fleet, c.device, "status"), b"online", qos=1, retain=True)
        with self._wake:
            self.state = ONLINE
            self._fresh = True  # what was enqueued or released while offline goes now
            self._notify()
        log.info("link: online to %s:%d", client.host, client.port)

    def _subscribe_acks(self, client: mqtt.Client) -> None:
        with self._wake:
            self.ack_subscription = "pending"
            self._resubscribe_at = 0.0
            rc, self._ack_sub_mid = client.subscribe(self.ack_topic, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS:  # the connection went meanwhile: the next connect subscribes
            log.warning("link: could not subscribe to %s (%s)", self.ack_topic, mqtt.error_string(rc))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any],
                      properties: Any) -> None:
        with self._wake:
            if mid != self._ack_sub_mid:
                return
            refused = [r for r in reasons if r.is_failure]
            if not refused:
                self.ack_subscription = "granted"
                self.ack_subscription_refusals = 0
                return
            self.ack_subscription = f"refused: {refused[0]}"
            self.ack_subscription_refusals += 1
            wait = backoff_s(self.ack_subscription_refusals, 1.0, 60.0, self._rng)
            self._resubscribe_at = time.monotonic() + wait
            self._notify()
        # Records are still sent and PUBACKed, but none can be deleted: they wait on the device,
        # resent after commit_timeout_s, until the broker's ACL lets the ack topic through.
        log.error("link: the broker refused the commit-ack subscription %s (%s); no record can be committed "
                  "until it is granted (check the broker's ACL for this device); retrying in %.0f s",
                  self.ack_topic, refused[0], wait)

    def _retry_subscription(self) -> None:
        if self._resubscribe_at and time.monotonic() >= self._resubscribe_at and self.state == ONLINE:
            self._subscribe_acks(self._client)

    def _back_off(self) -> None:
        """Before paho's next reconnect: the wait for it (paho's own backoff has no jitter)."""
        delay = backoff_s(self._attempt, self.config.backoff_min_s, self.config.backoff_max_s, self._rng)
        self._attempt += 1
        self._client.reconnect_delay_set(delay, delay)
        self.last_backoff_s = delay

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._back_off()
        with self._wake:
            self.state = CONNECTING if self._running else OFFLINE
        if self.hub is not None and self._running:
            self.hub.reconnect_in(self, self.last_backoff_s)
        self._release_all()
        if self._running:
            log.warning("link: disconnected (%s); reconnecting with backoff", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._wake:
            seqs = self._pending.pop(mid, None)
            if seqs is None:
                # A status message, one given back after a disconnect, or an ack that beat the
                # drain thread to recording its mid (publish() runs without our lock held).
                if len(self._early) > 4096:
                    self._early.clear()
                self._early.add(mid)
                return
            # The drain thread marks them: paho's network thread never waits on the outbox.
            self._puback_seqs += seqs
            self._acked_messages += 1
            self._notify()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.ack_topic:
            return
        try:
            ack = decode_ack(message.payload)
        except MalformedAck as exc:
            self.bad_acks += 1
            self._bad_ack_log.warning("link: a malformed commit ack on %s ignored: %s", message.topic, exc.problem)
            return
        with self._wake:
            self.acks += 1
            # Deleted on the drain thread, with the other acks that came meanwhile, in one transaction.
            self._committed.setdefault(ack.epoch, []).extend(ack.seqs())
            self._notify()

    def _delete_acked(self) -> None:
        """Mark what the broker took as sent, delete what the regional store committed."""
        with self._wake:
            sent, messages, committed = self._puback_seqs, self._acked_messages, self._committed
            self._puback_seqs, self._acked_messages, self._committed = [], 0, {}
        if sent:
            self.outbox.mark_sent(sent)
        removed = sum(self.outbox.ack(seqs, epoch) for epoch, seqs in committed.items())
        if removed:
            self._timeout_s = self.config.commit_timeout_s  # the regional tier answers again
        with self._wake:
            self.published += messages
            self.delivered += removed

    def _resend_overdue(self) -> None:
        """Send again what waited too long for its commit; while nothing is committed at all,
        wait twice as long next time (a receiver that is down is not flooded)."""
        now = time.monotonic()
        if now < self._next_resend_check:
            return
        self._next_resend_check = now + min(1.0, self._timeout_s / 4)
        n = self.outbox.resend_due(self._timeout_s)
        if n:
            log.warning("link: %d record(s) not committed by the regional store within %.0f s; sending them again",
                        n, self._timeout_s)
            self._timeout_s = min(self._timeout_s * 2, self.config.commit_timeout_max_s)
            self._records_stored()  # back in the outbox: look at once

    def _release_all(self) -> None:
        with self._wake:
            seqs = [s for batch in self._pending.values() for s in batch]
            self._pending.clear()
        if seqs:
            self.outbox.release(seqs)
            self._records_stored()

    # -- draining ---------------------------------------------------------------------------

    def _records_stored(self) -> None:
        """The outbox committed new records (its writer thread): wake the drain."""
        with self._wake:
            self._fresh = True
            self._notify()

    def _notify(self) -> None:
        """Something for the drain to do (called with ``_wake`` held)."""
        self._wake.notify_all()
        if self.hub is not None:
            self.hub.ready(self)

    def _due(self) -> bool:
        """Work for the drain now (``_wake`` held): acks to apply, a protocol to change, or
        room in the window and records to look for."""
        return bool(self._puback_seqs or self._committed or self._refused_mqtt5
                    or (self._can_send() and (not self._idle or self._fresh)))

    def _drain_loop(self) -> None:
        while self._running:
            with self._wake:
                # Woken by new or released records, by acks (to delete), by room in the window,
                # or after the poll's wait to look anyway (another process's records).
                self._poll_at = time.monotonic() + (self._idle or 0.5)
                while self._running and not self._due():
                    left = self._poll_at - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            self._drain_step()

    def hub_step(self, now: float) -> None:
        """The drain's work, when there is some, on a hub's thread."""
        if not self._running:
            return
        with self._wake:
            if now < self._poll_at and not self._due():
                return
        self._drain_step()
        self._poll_at = time.monotonic() + (self._idle or 0.5)

    def _drain_step(self) -> None:
        with self._wake:
            refused, self._refused_mqtt5 = self._refused_mqtt5, False
            # A wake for a PUBACK or a commit ack is no reason to read the outbox again when it
            # was found empty: only new records, released ones or the poll are.
            look = not self._idle or self._fresh or time.monotonic() >= self._poll_at
            self._fresh = False
        if refused and self._running:
            self._fall_back_to_311()
        if look and self._can_send():
            sent = 0
            while self._running and self._can_send():  # refill the window first, then delete
                n = self._send_batch()
                if n <= 0:
                    sent = sent if n == 0 else 0  # refused: back off as if there were nothing
                    break
                sent += n
                self._pace(n)
                if self._acked_messages >= 8:
                    # A long backlog keeps the window open: acked records are deleted as it
                    # drains, not all at the end (a crash would resend them all).
                    self._delete_acked()
            # Found nothing: new records wake the drain (Outbox.on_stored), so the next look on
            # its own is the poll's.
            self._idle = 0.0 if sent else IDLE_MAX_S + random.uniform(0, 0.05)
        self._delete_acked()
        self._resend_overdue()
        self._retry_subscription()

    def _pace(self, records: int) -> None:
        """Hold the drain to ``max_records_per_s`` (a stop still ends the wait at once)."""
        rate = self.config.max_records_per_s
        if rate <= 0:
            return
        now = time.monotonic()
        self._next_send = max(self._next_send, now - 0.1) + records / rate  # up to 0.1 s of credit
        with self._wake:
            while self._running and (left := self._next_send - time.monotonic()) > 0:
                self._wake.wait(left)

    def _can_send(self) -> bool:
        return (self.state == ONLINE and len(self._pending) < self.config.inflight_window
                and self.outbox.awaiting() < self.config.max_awaiting)

    def _send_batch(self) -> int:
        """Publish the next batch (one message per stream): records sent, 0 when the outbox
        is empty, -1 when paho refused (not connected)."""
        c = self.config
        batch = self.outbox.next_batch(max_bytes=c.batch_bytes, max_records=c.batch_records,
                                       live_share=c.live_share)
        by_stream: dict[str, list[dict[str, Any]]] = {}
        for record in batch:
            by_stream.setdefault(record["stream"], []).append(record)
        sent, refused = 0, False
        for stream, records in by_stream.items():
            payload = encode_batch(c.device, records)
            seqs = [r["seq"] for r in records]
            # Not under our lock: paho's thread may be inside a callback that needs it.
            info = self._client.publish(topic(c.fleet, c.device, f"data/{stream}"), payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.outbox.release(seqs)  # not sent: try again later
                refused = True
                continue
            sent += len(seqs)
            with self._wake:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    self._puback_seqs += seqs
                    self._acked_messages += 1
                else:
                    self._pending[info.mid] = seqs
        return -1 if refused else sent
