"""Desired configuration over MQTT: retained documents on
``edgeloop/v1/{fleet}/group/{group}/config`` and ``edgeloop/v1/{fleet}/{device}/config``
(JSON), merged device over group over file, validated, applied by the agent (live where it
can, by restarting the affected part otherwise). The outcome is reported as a retained
``edgeloop/v1/{fleet}/{device}/state``: ``applied`` with the config in force, or ``rejected``
with the reason, the last good config staying in force."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop.runtime.errors import EdgeloopError
from edgeloop.sync.link import topic

log = logging.getLogger("edgeloop.config")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, tables merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class RemoteConfig:
    """``apply(merged_table) -> report`` is the agent's; it raises EdgeloopError to reject."""

    def __init__(self, host: str, port: int, fleet: str, device: str, group: str | None,
                 apply: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.apply = apply
        self.device_topic = topic(fleet, device, "config")
        self.group_topic = topic(fleet, "group", f"{group}/config") if group else None
        self.state_topic = topic(fleet, device, "state")
        self.layers: dict[str, dict[str, Any]] = {}
        self.applied = threading.Event()
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgeloop-config-{fleet}-{device}",
                                   protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in (self.group_topic, self.device_topic) if t])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        layer = "device" if message.topic == self.device_topic else "group"
        with self._lock:
            try:
                document = json.loads(message.payload or b"{}")
                if not isinstance(document, dict):
                    raise ValueError("the document is not a JSON object")
            except ValueError as exc:
                self._report({"status": "rejected", "layer": layer,
                              "reason": f"{message.topic}: not a JSON object ({exc})"})
                return
            candidate = dict(self.layers, **{layer: document})
            merged = merge(candidate.get("group", {}), candidate.get("device", {}))
            try:
                report = self.apply(merged)
            except EdgeloopError as exc:
                log.warning("config from %s rejected: %s", message.topic, exc)
                self._report({"status": "rejected", "layer": layer, "reason": str(exc)})
                return
            self.layers = candidate
            self._report({"status": "applied", **report})
            self.applied.set()

    def _report(self, state: dict[str, Any]) -> None:
        self._client.publish(self.state_topic, json.dumps(state, default=str), qos=1, retain=True)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
