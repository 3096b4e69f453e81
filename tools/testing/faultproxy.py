"""A fault-injecting TCP proxy on loopback (``tc netem`` is not available here), used by the
link-cut test and by ``edgeloop bench sync``.

``cut()`` blackholes the link: bytes are read and dropped, new connections hang, as when a
cable or a radio goes away (the client notices only through its keepalive). ``heal()``
resets what was open and forwards again. ``rtt_s`` adds a round trip: every chunk is held
for half of it in each direction by a delay line (bytes keep flowing meanwhile, as on a long
link; bandwidth is not limited). ``refuse_mqtt5`` makes it look like a broker that speaks
only MQTT 3.1.1."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque


class FaultProxy:
    def __init__(self, target_port: int, rtt_s: float = 0.0, refuse_mqtt5: bool = False) -> None:
        self.target = ("127.0.0.1", target_port)
        self.delay_s = rtt_s / 2
        self.refuse_mqtt5 = refuse_mqtt5
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self._cut.is_set():
            self._pump(client, None)
            return
        head = b""
        if self.refuse_mqtt5:
            head = self._refused_mqtt5(client)
            if head is None:
                return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            upstream.sendall(head)
        except OSError:
            client.close()
            return
        for s in (client, upstream):  # forward small packets (acks) at once, as a router would
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns.append(upstream)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    @staticmethod
    def _refused_mqtt5(client: socket.socket) -> bytes | None:
        """Play a broker that speaks only MQTT 3.1.1: read the CONNECT's protocol level; for
        level 5 answer as MQTT 3.1.1 says (CONNACK 0x01, unacceptable protocol level) and
        hang up. Returns the bytes read, to be forwarded, or None when refused."""
        head = b""
        try:
            client.settimeout(5)
            while True:
                chunk = client.recv(4096)
                if not chunk:
                    client.close()
                    return None
                head += chunk
                # fixed header (1) + remaining length (1..4, high bit = more) + name length (2) + name
                n = 1
                while n < len(head) and head[n] & 0x80:
                    n += 1
                n += 1
                if len(head) >= n + 2:
                    name_len = int.from_bytes(head[n:n + 2], "big")
                    if len(head) > n + 2 + name_len:
                        level = head[n + 2 + name_len]
                        break
            client.settimeout(None)
            if level >= 5:
                client.sendall(b"\x20\x02\x00\x01")
                client.close()
                return None
            return head
        except OSError:
            client.close()
            return None

    def _pump(self, src: socket.socket, dst: socket.socket | None) -> None:
        line: deque[tuple[float, bytes]] = deque()
        ready = threading.Condition()
        if dst is not None and self.delay_s:
            threading.Thread(target=self._deliver, args=(line, ready, dst), daemon=True).start()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._cut.is_set() or dst is None:
                    continue  # blackholed
                if self.delay_s:
                    with ready:
                        line.append((time.monotonic() + self.delay_s, data))
                        ready.notify()
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            with ready:
                line.append((0.0, b""))  # end of stream for the delay line
                ready.notify()
            if not self.delay_s:
                self._close(src, dst)

    def _deliver(self, line: deque[tuple[float, bytes]], ready: threading.Condition, dst: socket.socket) -> None:
        """The far end of the delay line: each chunk leaves when its time has come."""
        try:
            while True:
                with ready:
                    while not line:
                        ready.wait()
                    due, data = line.popleft()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not self._cut.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(dst)

    @staticmethod
    def _close(*sockets: socket.socket | None) -> None:
        for s in sockets:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self._cut.set()

    def heal(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        self._cut.clear()
        for s in conns:  # what was open through the outage is dead: reset it
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.heal()
