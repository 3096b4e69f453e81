"""Inference requests over MQTT 5 on ``edgeloop/v1/{fleet}/{device}/req/infer`` (msgpack
``{task, input, kind}``), answered on the response topic with the correlation data by the
``Responder`` (``sync.offload``); ``tasks`` maps a task to the function that answers it."""

from __future__ import annotations

from typing import Any, Callable

from edgeloop.sync.mqtt_client import BrokerConfig
from edgeloop.sync.offload import Responder
from edgeloop.sync.request_limit import RateLimits, RequestLimiter
from edgeloop.sync.topics import topic

KEY = "mqtt-requests"


def open(broker: BrokerConfig, fleet: str, device: str,  # noqa: A001 (the registry's name)
         tasks: dict[str, Callable[[Any], dict[str, Any]]], limits: RateLimits = RateLimits()) -> Responder:
    """Answers only on response topics under the device's own ``…/res/`` and within ``limits``
    (per requester and in all): a request flood costs the camera no model time."""
    return Responder(broker, fleet, tasks, client_id=f"edgeloop-{fleet}-{device}-requests",
                     subscription=topic(fleet, device, "req/infer"), limiter=RequestLimiter(limits),
                     reply_prefix=topic(fleet, device, "res/")).start()
