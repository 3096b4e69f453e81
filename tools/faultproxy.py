"""A fault-injecting TCP proxy on loopback (``tc netem`` is not available here), used by the
link-cut test and by ``edgeloop bench sync``.

``cut()`` blackholes the link: bytes are read and dropped, new connections hang, as when a
cable or a radio goes away (the client notices only through its keepalive). ``heal()``
resets what was open and forwards again. ``rtt_s`` adds a round trip: every chunk is held
for half of it in each direction by a delay line (bytes keep flowing meanwhile, as on a long
link; bandwidth is not limited)."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque


class FaultProxy:
    def __init__(self, target_port: int, rtt_s: float = 0.0) -> None:
        self.target = ("127.0.0.1", target_port)
        self.delay_s = rtt_s / 2
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
            if self._cut.is_set():
                threading.Thread(target=self._pump, args=(client, None), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for s in (client, upstream):  # forward small packets (acks) at once, as a router would
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

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
