"""systemd integration: ``READY=1`` once serving, and ``WATCHDOG=1`` pings only while the
pipeline makes progress. A process that is truly stuck stops pinging, and systemd
(``WatchdogSec=`` in ``tools/deploy/edgeloop.service``) restarts it. The notify protocol is
one datagram per message on ``$NOTIFY_SOCKET``; without it (not under systemd) nothing is sent."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable

log = logging.getLogger("edgeloop.systemd")


def notify(message: str) -> bool:
    """Send one sd_notify message; False when not running under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # the abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", message, exc)
            return False
    return True


class ProgressWatchdog:
    """Pings systemd every half ``WATCHDOG_USEC`` (or ``interval_s``) while ``progress()``
    (a counter of finished work, e.g. inferences served) keeps moving and ``healthy()`` holds
    (every stage running); a stuck or broken pipeline is left for systemd to restart.
    ``status()``, when given, is sent as ``STATUS=`` each interval (what ``systemctl status``
    shows). ``start()`` also sends ``READY=1`` unless ``ready=False`` (then ``ready()`` does,
    e.g. after the first result)."""

    def __init__(self, progress: Callable[[], int], interval_s: float | None = None,
                 healthy: Callable[[], bool] = lambda: True, status: Callable[[], str] | None = None) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        self.interval_s = interval_s if interval_s is not None else (int(usec) / 2e6 if usec else 5.0)
        self.progress = progress
        self.healthy = healthy
        self.status = status
        self.pings = 0
        self.skipped = 0
        self.is_ready = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sd-watchdog", daemon=True)

    def start(self, ready: bool = True) -> "ProgressWatchdog":
        if ready:
            self.ready()
        self._thread.start()
        return self

    def ready(self) -> None:
        if not self.is_ready:
            self.is_ready = True
            notify("READY=1")

    def _loop(self) -> None:
        last = self.progress()
        while not self._stop.wait(self.interval_s):
            now = self.progress()
            healthy = self.healthy()
            if now != last and healthy and self.is_ready:
                notify("WATCHDOG=1")
                self.pings += 1
            else:
                self.skipped += 1
                log.warning("systemd watchdog: %s in %.1f s; not pinging",
                            "not healthy" if not healthy else "no progress" if self.is_ready else "not ready",
                            self.interval_s)
            if self.status is not None and self.is_ready:
                notify("STATUS=" + self.status()[:200])
            last = now

    def stop(self) -> None:
        notify("STOPPING=1")
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval_s + 1)
