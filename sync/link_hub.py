"""One thread for many MQTT links: a gateway that speaks for many devices, each with its own
outbox, client id, session and topics, and the fleet simulator's hundreds of devices per process.

A link of its own has two threads (paho's network loop and its drain). A hundred links would be
two hundred threads waking each other for every message, and on two cores most of the time went
to switching between them and waiting for the interpreter lock (measured: about 220 µs per
record at 150 devices in one process, against 24 µs for the outbox work itself). The hub runs
paho's external loop instead: one ``selectors`` poll over every link's socket (epoll, so no
``select()`` limit of 1023 descriptors), then the drain of each link that has work, on the same
thread. The links' code is the same; only what drives it differs.

Connecting is blocking on the hub's thread (paho's ``reconnect()``): meant for brokers a short
round trip away, as a gateway's and a simulator's are.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import paho.mqtt.client as mqtt

from .topics import topic

if TYPE_CHECKING:
    from .link import MqttLink

log = logging.getLogger("edgeloop.link")

POLL_S = 0.1  # each link's own deadlines (the idle poll, resends, retries) are looked at this often
MISC_S = 1.0  # paho's keepalive work for every client this often


class LinkHub:
    """``hub = LinkHub()``; ``MqttLink(outbox, config, hub=hub)`` for each device, ``start()`` each;
    ``link.stop()`` each, then ``hub.stop()``."""

    def __init__(self, name: str = "link-hub") -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._links: list[MqttLink] = []
        self._ready: set[MqttLink] = set()
        self._connect_at: dict[MqttLink, float] = {}
        self._calls: list[Callable[[], None]] = []  # from other threads, run on the hub's
        self._later: list[Callable[[], None]] = []  # from the hub's thread, run on its next turn
        self._signalled = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._running = True
        self._next_poll = self._next_misc = 0.0  # monotonic: the links' deadlines, paho's keepalive
        self.errors = 0  # failures in a link's network or drain work, logged; the hub goes on
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- what links call ------------------------------------------------------------------

    def adopt(self, link: "MqttLink", client: mqtt.Client) -> None:
        """A new paho client of ``link``: its socket goes into the hub's poll."""
        opened = client.on_socket_open

        def on_open(c: mqtt.Client, userdata: Any, sock: Any) -> None:
            if opened is not None:
                opened(c, userdata, sock)
            self._on_hub(lambda: self._watch(sock, link, write=False))

        client.on_socket_open = on_open
        client.on_socket_close = lambda c, u, sock: self._on_hub(lambda: self._unwatch(sock))
        client.on_socket_register_write = lambda c, u, sock: self._on_hub(lambda: self._watch(sock, link, True))
        client.on_socket_unregister_write = lambda c, u, sock: self._on_hub(lambda: self._watch(sock, link, False))

    def connect_soon(self, link: "MqttLink") -> None:
        with self._lock:
            if link not in self._links:
                self._links.append(link)
        self.reconnect_in(link, 0.0)

    def reconnect_in(self, link: "MqttLink", seconds: float) -> None:
        self._on_hub(lambda: self._connect_at.__setitem__(link, time.monotonic() + seconds))

    def ready(self, link: "MqttLink") -> None:
        """``link`` has drain work (any thread)."""
        with self._lock:
            self._ready.add(link)
        if threading.get_ident() != self._thread.ident:
            self._signal()

    def forget(self, link: "MqttLink") -> None:
        """Drop ``link``'s current client (it is about to get a new one)."""
        self._on_hub(lambda: self._drop_client(link))

    def close(self, link: "MqttLink", timeout_s: float) -> None:
        """Say ``offline`` for ``link``, disconnect it and let it go; returns when done or after
        ``timeout_s``."""
        done = threading.Event()
        self._on_hub(lambda: self._close(link, timeout_s, done))
        done.wait(timeout_s + 1.0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            links = list(self._links)
        return {"links": len(links), "online": sum(1 for link in links if link.state == "online"),
                "alive": self._thread.is_alive(), "errors": self.errors}

    def stop(self) -> None:
        self._running = False
        self._signal()
        self._thread.join(10)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the hub's thread ------------------------------------------------------------------

    def _on_hub(self, call: Callable[[], None]) -> None:
        if threading.get_ident() == self._thread.ident:
            call()
            return
        with self._lock:
            self._calls.append(call)
        self._signal()

    def _signal(self) -> None:
        with self._lock:
            if self._signalled:
                return
            self._signalled = True
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def _watch(self, sock: Any, link: "MqttLink", write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        try:
            self._selector.modify(sock, events, link)
        except KeyError:
            self._selector.register(sock, events, link)
        except (ValueError, OSError):  # closed meanwhile
            pass

    def _unwatch(self, sock: Any) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop_client(self, link: "MqttLink") -> None:
        client = link._client
        sock = client.socket()
        if sock is not None:
            client.disconnect()
            client.loop_write()  # the DISCONNECT, and paho closes the socket
            self._unwatch(sock)
        self._connect_at.pop(link, None)

    def _close(self, link: "MqttLink", timeout_s: float, done: threading.Event) -> None:
        client = link._client
        info = None
        if link.state == "online":
            c = link.config
            info = client.publish(topic(c.fleet, c.device, "status"), b"offline", qos=1, retain=True)
        deadline = time.monotonic() + timeout_s

        def finish() -> None:
            if info is not None and not info.is_published() and time.monotonic() < deadline \
                    and client.socket() is not None:
                self._later.append(finish)  # the PUBACK comes through the poll
                return
            client.disconnect()
            client.loop_write()
            sock = client.socket()
            if sock is not None:
                self._unwatch(sock)
            with self._lock:
                if link in self._links:
                    self._links.remove(link)
                self._ready.discard(link)
            self._connect_at.pop(link, None)
            done.set()

        finish()

    def _connect(self, link: "MqttLink") -> None:
        try:
            link._client.reconnect()
        except (OSError, ValueError) as exc:  # refused, unreachable, timed out: the link's backoff
            link._back_off()
            self._connect_at[link] = time.monotonic() + link.last_backoff_s
            log.debug("link hub: %s cannot connect (%s); again in %.1f s", link.config.device, exc,
                      link.last_backoff_s)

    def _guarded(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # one link's failure must not stop the others
            self.errors += 1
            log.exception("link hub: %s failed; the hub goes on", what)

    def _run(self) -> None:
        while self._running:
            try:
                self._turn()
            except Exception:  # the hub's own work: logged, counted, and the loop goes on
                self.errors += 1
                log.exception("link hub: a turn failed; the hub goes on")
                time.sleep(0.1)

    def _turn(self) -> None:
        """One pass: wait on every socket, read and write, then each link's drain work."""
        with self._lock:
            busy = bool(self._ready or self._calls)
        for key, mask in self._selector.select(0 if busy or self._later else POLL_S / 2):
            if key.data is None:
                with self._lock:
                    self._signalled = False
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            client = key.data._client
            if mask & selectors.EVENT_READ:
                self._guarded("a read", client.loop_read)
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                self._guarded("a write", client.loop_write)
        with self._lock:
            calls, self._calls = self._calls, []
            ready, self._ready = self._ready, set()
            links = list(self._links)
        later, self._later = self._later, []
        for call in calls + later:
            self._guarded("a call", call)
        now = time.monotonic()
        for link, at in list(self._connect_at.items()):
            if now >= at and link._running:
                del self._connect_at[link]
                self._guarded("a connect", lambda: self._connect(link))
        if now >= self._next_poll:  # each link's own deadlines
            ready.update(links)
            self._next_poll = now + POLL_S
        for link in ready:
            self._guarded(f"{link.config.device}'s drain", lambda: link.hub_step(now))
        if now >= self._next_misc:
            for link in links:
                if link._client.socket() is not None:
                    self._guarded("keepalive", link._client.loop_misc)
            self._next_misc = now + MISC_S
