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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.runtime.errors import EdgeloopError, InputError
from edgeloop.runtime.logs import Throttled
from edgeloop.runtime.source_bytes import from_bytes, to_bytes
from edgeloop.runtime.watchdog.rungs import Rung, RungFailed, RungTimeout

from .mqtt_client import BrokerConfig, Guard, connect_properties, make_client
from .request_limit import RequestLimiter
from .topics import has_wildcard, topic

log = logging.getLogger("edgeloop.offload")

MAX_ANSWER_BYTES = 1024 * 1024  # what the broker may send an asker: answers are small dicts


class Offloader:
    """The device end: ``request(task, source, timeout_s)`` → the regional answer (a dict)."""

    def __init__(self, broker: BrokerConfig, fleet: str, device: str, request_topic: str | None = None,
                 response_topic: str | None = None) -> None:
        """``request_topic``: where requests go (default: this device's ``req``, which the
        regional responders answer; a device agent answers on its ``req/infer``). ``device``
        names the asker. The answers come on ``response_topic``: by default this device's
        ``res``, or, when asking another device, ``{that device}/res/{asker}``: a device answers
        only under its own topics, the only ones an ACL lets it publish to."""
        self.fleet, self.device = fleet, device
        self.request_topic = request_topic or topic(fleet, device, "req")
        if response_topic is None and request_topic is not None and request_topic.endswith("/req/infer"):
            response_topic = f"{request_topic.removesuffix('/req/infer')}/res/{device}"
        self.response_topic = response_topic or topic(fleet, device, "res")
        self.online = threading.Event()
        self._waiting: dict[bytes, tuple[threading.Event, list[Any]]] = {}
        self._lock = threading.Lock()
        self.guard = Guard("offload")
        self._client = make_client(broker, f"edgeloop-offload-{fleet}-{device}", protocol="5")
        self._client.on_connect = self.guard(self._on_connect)
        self._client.on_disconnect = self.guard(lambda *a: self.online.clear())
        self._client.on_message = self.guard(self._on_message)
        self._client.connect_async(broker.host, broker.port, keepalive=15,
                                   properties=connect_properties(MAX_ANSWER_BYTES))
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

    def request(self, task: str, source: Any, timeout_s: float,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
        """``params``: for a task that takes them (``nearest``: model, model_version, k)."""
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
            request = {"task": task, "input": data, "kind": kind, "deadline_ms": timeout_s * 1000}
            if params:
                request["params"] = params
            payload = msgpack.packb(request, use_bin_type=True)
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
    subscription); a device agent gives its own ``subscription``.

    MQTT 5 makes correlation data optional: a request without it is answered without it. A
    request without a usable response topic (none, or one with a wildcard, which the broker
    forwards but no client may publish to) cannot be answered: it is logged and counted in
    ``unanswerable``. An error answer names the problem and the fix, never an internal repr."""

    MAX_REQUEST_BYTES = 8 * 1024 * 1024

    def __init__(self, broker: BrokerConfig, fleet: str, models: dict[str, Callable[[Any], dict[str, Any]]],
                 share: str | None = None, client_id: str = "edgeloop-responder",
                 subscription: str | None = None,
                 queries: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] | None = None,
                 limiter: RequestLimiter | None = None, reply_prefix: str | None = None) -> None:
        """``queries``: tasks answered with the request's ``params`` too (``nearest``).
        ``limiter``: requests over its buckets are counted in ``rate_limited`` and not answered
        (an answer would cost the flood's publish back). ``reply_prefix``: answers go only to
        response topics under it (a device's own ``…/res/``): the device is no reflector that
        publishes wherever a request says."""
        self.models = models
        self.queries = dict(queries or {})
        self.limiter = limiter
        self.reply_prefix = reply_prefix
        self.answered = 0
        self.failed = 0
        self.unanswerable = 0
        self.rate_limited = 0
        self._limited_log = Throttled(log)
        self._unanswerable_log = Throttled(log)  # any client can send these at will
        self.connected = threading.Event()
        wanted = subscription or topic(fleet, "+", "req")
        self._subscription = f"$share/{share}/{wanted}" if share else wanted
        self.guard = Guard("responder")
        self._client = make_client(broker, client_id, protocol="5")
        self._client.on_connect = self.guard(self._on_connect)
        self._client.on_message = self.guard(self._on_message)
        self._client.connect_async(broker.host, broker.port, keepalive=15,
                                   properties=connect_properties(self.MAX_REQUEST_BYTES + 64 * 1024))

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
        why = "no response topic" if not reply_to else \
            f"response topic {reply_to[:200]!r} has a wildcard" if has_wildcard(reply_to) else \
            f"response topic {reply_to[:200]!r} is not under {self.reply_prefix!r}, this device's own" \
            if self.reply_prefix and not reply_to.startswith(self.reply_prefix) else None
        if why:
            self.unanswerable += 1
            self._unanswerable_log.warning("request on %s: %s; not answered", message.topic, why)
            return
        if self.limiter is not None and not self.limiter.allow(reply_to):
            self.rate_limited += 1
            self._limited_log.warning("requests: over the rate limit (%d so far, from %s); not answered",
                                      self.rate_limited, ", ".join(sorted(self.limiter.limited_requesters)[:4]))
            return
        answer = self.answer(message.payload)
        out = Properties(PacketTypes.PUBLISH)
        if cid is not None:
            out.CorrelationData = cid
        client.publish(reply_to, msgpack.packb(answer, use_bin_type=True), qos=0, properties=out)

    def answer(self, payload: bytes) -> dict[str, Any]:
        """The answer to one request's payload: ``{ok, result}`` or ``{ok: false, error}``."""
        try:
            result = self._answer(payload)
        except RequestRefused as exc:
            self.failed += 1
            return {"ok": False, "error": str(exc)}
        except EdgeloopError as exc:  # the model's own typed error: its problem and fix
            self.failed += 1
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # ours, not the asker's: logged here, not sent
            self.failed += 1
            log.exception("request: answering failed")
            return {"ok": False, "error": f"the device could not answer ({type(exc).__name__}); "
                                          "its log has the details"}
        self.answered += 1
        return {"ok": True, "result": result}

    def _answer(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > self.MAX_REQUEST_BYTES:
            raise RequestRefused(f"the request is {len(payload)} bytes; at most {self.MAX_REQUEST_BYTES} are "
                                 "taken: send a smaller image")
        try:
            request = msgpack.unpackb(payload, raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise RequestRefused("the request is not one msgpack map: send {task, input: bytes, kind}") from exc
        if not isinstance(request, dict) or not isinstance(request.get("input"), bytes):
            raise RequestRefused("a request is a msgpack map {task, input: bytes, kind}")
        task = request.get("task")
        model = self.models.get(task) if isinstance(task, str) else None
        query = self.queries.get(task) if isinstance(task, str) else None
        if model is None and query is None:
            raise RequestRefused(f"no model for task {task!r} here; tasks: "
                                 f"{', '.join(sorted([*self.models, *self.queries]))}")
        params = request.get("params", {})
        if not isinstance(params, dict) or len(params) > 32 or not all(isinstance(k, str) for k in params):
            raise RequestRefused("params is a msgpack map of at most 32 named values")
        kind = request.get("kind", "png")
        try:
            source = from_bytes(request["input"], kind if isinstance(kind, str) else "")
        except InputError as exc:  # too large, or a header that lies: said as it is
            raise RequestRefused(str(exc)) from exc
        except Exception as exc:
            raise RequestRefused(f"the input does not decode as {kind!r}: send PNG/JPEG/BMP bytes (kind 'png' "
                                 "or 'jpg') or numpy.save bytes (kind 'npy')") from exc
        return model(source) if model is not None else query(source, params)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class RequestRefused(Exception):
    """A request that cannot be answered, said to the asker as it is."""
