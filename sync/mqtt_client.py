"""The one place MQTT clients are made: every part (the link, desired config, the request
responder, the offloader, the regional receiver) gets its paho client here, so each speaks
MQTT 5 (3.1.1 where asked or refused), TLS with mutual TLS, credentials, a client id, backoff
and a last will the same way.

Callbacks are guarded: paho re-raises an exception from a callback in its network thread and
that thread ends, so a part would stop for good on one bad message while the process looks
alive. ``guard`` logs it, counts it in ``Guard.errors`` and goes on.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.private_file import check_private_file

log = logging.getLogger("edgeloop.mqtt")


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int = 1883
    protocol: str = "5"  # "5" or "3.1.1"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # TLS when set: the broker's certificate must chain to it
    cert_file: str | None = None  # mutual TLS, with key_file
    key_file: str | None = None
    keepalive_s: int = 30
    backoff_min_s: float = 0.2
    backoff_max_s: float = 30.0
    fallbacks: tuple[tuple[str, int], ...] = ()  # the other nodes of a broker cluster, tried in turn

    def __repr__(self) -> str:  # never a password in a log line
        return f"BrokerConfig({self.address}, mqtt {self.protocol}, tls {'on' if self.ca_file else 'off'})"

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return ((self.host, self.port), *self.fallbacks)

    @property
    def address(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.addresses)


def parse_brokers(text: str, key: str = "--broker") -> list[tuple[str, int]]:
    """``HOST[:PORT]``, or several separated by commas (the nodes of one broker cluster); 1883
    when no port is given."""
    addresses = []
    for part in text.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep:
            host, port = part.strip(), "1883"
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
            raise ConfigError(f"{key}: '{text}' is not HOST[:PORT] or a comma-separated list of them",
                              f"for example {key} 127.0.0.1:1883 or {key} node1:1883,node2:1883")
        addresses.append((host, int(port)))
    return addresses


def parse_broker(text: str, key: str = "--broker") -> tuple[str, int, tuple[tuple[str, int], ...]]:
    """The first address of ``text`` and the others (see ``parse_brokers``)."""
    (host, port), *others = parse_brokers(text, key)
    return host, port, tuple(others)


def _next_node(addresses: tuple[tuple[str, int], ...]) -> Callable[[mqtt.Client, Any], None]:
    """paho's pre-connect callback that takes the next node for every connection attempt after
    the first: a node that died is left for the next one, and any node of a cluster will do."""
    turn = itertools.count()

    def pre_connect(client: mqtt.Client, userdata: Any) -> None:
        host, port = addresses[next(turn) % len(addresses)]
        # paho's host/port setters refuse while it is connecting, which is when it calls this.
        client._host, client._port = host, port

    return pre_connect


def refuses_mqtt5(reason: Any) -> bool:
    """A CONNACK that refuses the protocol version: the broker speaks only 3.1.1 (NATS, old
    brokers), and a new client speaking 3.1.1 should try again."""
    return reason.is_failure and "protocol" in str(reason).lower()


class Guard:
    """Counts the callback errors of one client."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.errors = 0
        self.last_error = ""

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # paho would end its network thread: log, count, go on
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("mqtt %s: a callback failed (%s); the client goes on", self.part, self.last_error)
                return None
        return guarded


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle on: a small publish would wait for the broker's delayed ACK.
    if hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_properties(max_packet_bytes: int, **values: Any) -> Properties:
    """MQTT 5 CONNECT properties that include the largest packet this client takes: the broker
    drops a larger message for it instead of sending it (Mosquitto's own limit is 256 MB, which a
    device would otherwise read into memory before any check of ours could refuse it)."""
    properties = Properties(PacketTypes.CONNECT)
    properties.MaximumPacketSize = max_packet_bytes
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


def make_client(broker: BrokerConfig, client_id: str, *, protocol: str | None = None,
                will: tuple[str, bytes] | None = None, manual_ack: bool = False,
                persistent: bool = False) -> mqtt.Client:
    """A paho client for ``broker``; ``persistent`` keeps the session (3.1.1: clean_session off).
    Callbacks set on it afterwards should be wrapped in a ``Guard``."""
    version = mqtt.MQTTv5 if (protocol or broker.protocol) == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                         clean_session=None if version == mqtt.MQTTv5 else not persistent, manual_ack=manual_ack)
    client.reconnect_delay_set(broker.backoff_min_s, broker.backoff_max_s)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.ca_file:
        if broker.key_file:
            check_private_file(Path(broker.key_file).expanduser(), "mqtt key_file")
        try:
            client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt: cannot use the TLS files ({exc})",
                              "check ca_file, cert_file and key_file exist and are PEM") from exc
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.on_socket_open = _nodelay
    if broker.fallbacks:
        client.on_pre_connect = _next_node(broker.addresses)
    return client

