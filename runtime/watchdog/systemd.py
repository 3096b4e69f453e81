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
    (a counter of finished work, e.g. inferences served) keeps moving; a stuck pipeline is
    left for systemd to restart. ``start()`` also sends ``READY=1``."""

    def __init__(self, progress: Callable[[], int], interval_s: float | None = None) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        self.interval_s = interval_s if interval_s is not None else (int(usec) / 2e6 if usec else 5.0)
        self.progress = progress
        self.pings = 0
        self.skipped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sd-watchdog", daemon=True)

    def start(self) -> "ProgressWatchdog":
        notify("READY=1")
        self._thread.start()
        return self

    def _loop(self) -> None:
        last = self.progress()
        while not self._stop.wait(self.interval_s):
            now = self.progress()
            if now != last:
                notify("WATCHDOG=1")
                self.pings += 1
            else:
                self.skipped += 1
                log.warning("systemd watchdog: no progress in %.1f s; not pinging", self.interval_s)
            last = now

    def stop(self) -> None:
        notify("STOPPING=1")
        self._stop.set()
        self._thread.join(self.interval_s + 1)
