"""Offload to the regional edge: MQTT 5 request/response (response topic, correlation data).

``Offloader`` (device side) publishes a request on ``edgeloop/v1/{fleet}/{device}/req`` with
its response topic, a random correlation id and a message expiry of the time left; it waits
for the answer with that correlation id until the deadline. When the link is down it fails
at once, so the ladder's next rung answers. ``Responder`` (regional side, next to the
regional receiver) runs a model on what arrives and answers on the response topic.

Payloads are msgpack: a request ``{task, input: bytes, kind, deadline_ms}`` (``source_bytes``); an
answer ``{ok: true, result: {...}}`` or ``{ok: false, error: "..."}``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.runtime.source_bytes import from_bytes, to_bytes
from edgeloop.runtime.watchdog.rungs import Rung, RungFailed, RungTimeout

from .link import topic

log = logging.getLogger("edgeloop.offload")


class Offloader:
    """The device end: ``request(task, source, timeout_s)`` → the regional answer (a dict)."""

    def __init__(self, host: str, port: int, fleet: str, device: str, request_topic: str | None = None) -> None:
        """``request_topic``: where requests go (default: this device's ``req``, which the
        regional responders answer; a device agent answers on its ``req/infer``)."""
        self.fleet, self.device = fleet, device
        self.response_topic = topic(fleet, device, "res")
        self.request_topic = request_topic or topic(fleet, device, "req")
        self.online = threading.Event()
        self._waiting: dict[bytes, tuple[threading.Event, list[Any]]] = {}
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgeloop-offload-{fleet}-{device}",
                                   protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *a: self.online.clear()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.2, 5.0)
        self._client.connect_async(host, port, keepalive=15)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.response_topic, qos=1)
            self.online.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        cid = getattr(message.properties, "CorrelationData", None)
        with self._lock:
            waiter = self._waiting.get(cid) if cid else None
        if waiter is None:
            return  # an answer that came after its deadline
        try:
            waiter[1].append(msgpack.unpackb(message.payload, raw=False))
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            waiter[1].append({"ok": False, "error": "the answer does not decode"})
        waiter[0].set()

    def request(self, task: str, source: Any, timeout_s: float) -> dict[str, Any]:
        if not self.online.is_set():
            raise RungFailed("the link to the regional edge is down")
        data, kind = to_bytes(source)
        cid = os.urandom(12)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.response_topic
        props.CorrelationData = cid
        props.MessageExpiryInterval = max(1, int(timeout_s + 0.999))  # the broker drops it once useless
        done, box = threading.Event(), []
        with self._lock:
            self._waiting[cid] = (done, box)
        try:
            payload = msgpack.packb({"task": task, "input": data, "kind": kind, "deadline_ms": timeout_s * 1000},
                                    use_bin_type=True)
            self._client.publish(self.request_topic, payload, qos=0, properties=props)
            if not done.wait(timeout_s):
                raise RungTimeout(f"the regional edge did not answer within {timeout_s * 1000:.1f} ms")
        finally:
            with self._lock:
                self._waiting.pop(cid, None)
        answer = box[0]
        if not answer.get("ok"):
            raise RungFailed(f"the regional edge refused: {answer.get('error')}")
        return answer["result"]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class OffloadRung(Rung):
    """A ladder rung that asks the regional edge (fails at once while the link is down)."""

    def __init__(self, offloader: Offloader, task: str, expected_s: float = 0.02) -> None:
        self.name = "offload"
        self.offloader = offloader
        self.task = task
        self.expected_s = expected_s

    def serve(self, source: Any, timeout_s: float) -> Any:
        return self.offloader.request(self.task, source, timeout_s)


class Responder:
    """Answers requests with ``models[task](input)`` (each a callable returning a dict). The
    regional end answers ``fleet``'s devices (``share`` puts several responders on one shared
    subscription); a device agent gives its own ``subscription``."""

    MAX_REQUEST_BYTES = 8 * 1024 * 1024

    def __init__(self, host: str, port: int, fleet: str, models: dict[str, Callable[[Any], dict[str, Any]]],
                 share: str | None = None, client_id: str = "edgeloop-responder",
                 subscription: str | None = None) -> None:
        self.models = models
        self.answered = 0
        self.failed = 0
        self.connected = threading.Event()
        wanted = subscription or topic(fleet, "+", "req")
        self._subscription = f"$share/{share}/{wanted}" if share else wanted
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect_async(host, port, keepalive=15)

    def start(self) -> "Responder":
        self._client.loop_start()
        return self

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self._subscription, qos=0)
            self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        reply_to = getattr(props, "ResponseTopic", None)
        cid = getattr(props, "CorrelationData", None)
        if not reply_to or cid is None:
            self.failed += 1
            return  # not a request we can answer
        try:
            if len(message.payload) > self.MAX_REQUEST_BYTES:
                raise ValueError(f"the request is {len(message.payload)} bytes; at most {self.MAX_REQUEST_BYTES} "
                                 "are taken: send a smaller image")
            request = msgpack.unpackb(message.payload, raw=False)
            if not isinstance(request, dict) or not isinstance(request.get("input"), bytes):
                raise ValueError("a request is a msgpack map {task, input: bytes, kind}")
            model = self.models.get(request.get("task"))
            if model is None:
                self.failed += 1
                answer = {"ok": False, "error": f"no model for task {request.get('task')!r} here; "
                                                f"tasks: {', '.join(sorted(self.models))}"}
            else:
                answer = {"ok": True, "result": model(from_bytes(request["input"], request.get("kind", "png")))}
                self.answered += 1
        except Exception as exc:  # a bad request gets an answer saying so; the responder goes on
            self.failed += 1
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out = Properties(PacketTypes.PUBLISH)
        out.CorrelationData = cid
        client.publish(reply_to, msgpack.packb(answer, use_bin_type=True), qos=0, properties=out)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
