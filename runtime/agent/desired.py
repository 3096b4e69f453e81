"""Desired configuration over MQTT: retained JSON documents on
``edgeloop/v1/{fleet}/group/{group}/config`` and ``edgeloop/v1/{fleet}/{device}/config``,
merged device over group over the file, validated whole and applied by the agent (live where
it can, by building the affected part beside the running one otherwise).

The outcome is reported as a retained ``edgeloop/v1/{fleet}/{device}/state``: ``applied`` with
the config in force, or ``rejected`` with the layer, the topic, the reason and what stays in
force. The last applied layers are kept in ``desired.json`` in the data folder and applied at
the next start, so a rejected document still retained on the broker cannot take the device
back to its file. A document over ``MAX_DOCUMENT_BYTES``, not JSON, nested too deeply or not an
object is rejected like an invalid one; no document stops the listener.

With the fleet operator's public keys configured (``mqtt.operator_keys``), every document on
every topic here must be signed by one of them for that topic with a newer version
(``sync/signed_doc.py``) before it is read at all; anything else is rejected with its reason
and the last good document stays in force.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Protocol

import paho.mqtt.client as mqtt

from edgeloop.runtime.errors import ConfigError, EdgeloopError
from edgeloop.sync.mqtt_client import BrokerConfig, Guard, connect_properties, make_client
from edgeloop.sync.signed_doc import Gate
from edgeloop.sync.topics import topic

from .config import merge
from .last_good import LastGood

log = logging.getLogger("edgeloop.config")

MAX_DOCUMENT_BYTES = 64 * 1024
MAX_DEPTH = 8
# What the broker may send this client at all: well over any document taken, so one too large
# is still seen and rejected with its reason, and far below Mosquitto's 256 MB.
MAX_PACKET_BYTES = 1024 * 1024


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    if isinstance(value, dict):
        if limit <= 0:
            return 1
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        if limit <= 0:
            return 1
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def parse_document(payload: bytes) -> dict[str, Any]:
    """A desired document as a table; ConfigError saying what is wrong with it."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"the document is {len(payload)} bytes; at most {MAX_DOCUMENT_BYTES} are taken",
                          "send only the keys that change")
    try:
        document = json.loads(payload or b"{}")
    except RecursionError as exc:
        raise ConfigError(f"the document is nested more than {MAX_DEPTH} deep", "send a flat JSON object") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the document is not JSON ({exc})", "send a JSON object, e.g. {\"camera\": {\"fps\": 2}}") \
            from exc
    if not isinstance(document, dict):
        raise ConfigError("the document is not a JSON object", "send a JSON object, e.g. {\"camera\": {\"fps\": 2}}")
    if _depth(document) > MAX_DEPTH:
        raise ConfigError(f"the document is nested more than {MAX_DEPTH} deep", "send a flat JSON object")
    return document


class DocumentHandler(Protocol):
    """Another kind of desired document on the same connection (the rollout's)."""
    kind: str

    def offer(self, payload: bytes) -> None:
        """The document's body (empty: withdrawn); the handler answers for its own bad input."""

    def refuse(self, reason: str) -> None:
        """A document that did not pass the gate: the last good one stays, and the handler says why."""


class DesiredConfig:
    """``apply(merged_table) -> report`` is the agent's; it raises EdgeloopError to reject."""

    def __init__(self, broker: BrokerConfig, fleet: str, device: str, group: str | None,
                 apply: Callable[[dict[str, Any]], dict[str, Any]], last_good: LastGood,
                 layers: dict[str, dict[str, Any]] | None = None,
                 extra: dict[str, DocumentHandler] | None = None, gate: Gate | None = None) -> None:
        """``extra``: more retained documents this client listens to (topic -> their handler;
        the rollout's), so a device holds one connection for everything desired. ``gate``: every
        document must be signed by the fleet operator (None: documents are taken unsigned)."""
        self.apply = apply
        self.extra = dict(extra or {})
        self.gate = gate
        self.last_good = last_good
        self.device_topic = topic(fleet, device, "config")
        self.group_topic = topic(fleet, "group", f"{group}/config") if group else None
        self.state_topic = topic(fleet, device, "state")
        self.layers: dict[str, dict[str, Any]] = dict(layers or {})
        self.in_force: dict[str, Any] = {}
        self.applied = threading.Event()
        self.rejected = 0
        self.last_state: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.guard = Guard("desired-config")
        self._client = make_client(broker, f"edgeloop-config-{fleet}-{device}", protocol="5")
        self._client.on_connect = self.guard(self._on_connect)
        self._client.on_message = self.guard(self._on_message)
        self._client.connect_async(broker.host, broker.port, keepalive=30,
                                   properties=connect_properties(MAX_PACKET_BYTES))
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in (self.group_topic, self.device_topic, *self.extra) if t])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        handler = self.extra.get(message.topic)
        layer = "device" if message.topic == self.device_topic else "group"
        payload = message.payload
        if self.gate is not None:
            try:  # before anything reads the document: its signature, topic, kind and version
                payload = self.gate.open(message.topic, payload, handler.kind if handler else "config").body_bytes()
            except Exception as exc:
                reason = str(exc) if isinstance(exc, EdgeloopError) else f"{type(exc).__name__}: {exc}"
                if handler is not None:
                    handler.refuse(reason)
                else:
                    with self._lock:
                        self._reject(layer, message.topic, reason)
                return
        if handler is not None:
            handler.offer(payload)  # the handler answers for its own bad input
            return
        with self._lock:
            try:
                document = parse_document(payload)
                candidate = {k: v for k, v in {**self.layers, layer: document}.items() if v}
                if candidate == self.layers and self.in_force:
                    return  # the retained copy of what is in force already (a reconnect)
                report = self.apply(merge(candidate.get("group", {}), candidate.get("device", {})))
            except Exception as exc:  # any document, however hostile, is rejected; the listener goes on
                self._reject(layer, message.topic, str(exc) if isinstance(exc, EdgeloopError)
                             else f"{type(exc).__name__}: {exc}")
                return
            self.layers = candidate
            self.last_good.save(candidate)
            self.in_force = {"layers": candidate, "config": report.get("config"), "since": time.time()}
            self._report({"status": "applied", **report, "layers": candidate, "at": time.time()})
            self.applied.set()

    def _reject(self, layer: str, topic_name: str, reason: str) -> None:
        self.rejected += 1
        log.warning("config from %s rejected: %s", topic_name, reason)
        self._report({"status": "rejected", "layer": layer, "topic": topic_name, "reason": reason,
                      "in_force": self.in_force, "at": time.time()})

    def _report(self, state: dict[str, Any]) -> None:
        self.last_state = state
        self._client.publish(self.state_topic, json.dumps(state, default=str), qos=1, retain=True)

    def publish(self, topic_name: str, payload: bytes) -> None:
        """A retained reported document, QoS 1 (queued by paho while the broker is away)."""
        self._client.publish(topic_name, payload, qos=1, retain=True)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
