"""A Mosquitto broker of our own on loopback, for the tests and ``edgeloop bench sync``:
an ephemeral port, a generated config, started, stopped, killed and restarted on demand."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """``Mosquitto(workdir).start()``; ``stop()`` (SIGTERM: it saves its queues) or ``stop(kill=True)``."""

    def __init__(self, workdir: Path, extra: str = "", autosave_s: int = 1) -> None:
        """``extra``: more configuration appended, e.g. a TLS listener; the plain listener
        stays anonymous (``per_listener_settings``). ``autosave_s``: how often the broker saves
        its queues (1800, Mosquitto's default, is what ``tools/deploy`` ships)."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto; `make test` does it)")
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"per_listener_settings true\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nautosave_interval {autosave_s}\nmax_inflight_messages 0\n"
            "max_queued_messages 0\nlog_dest none\n"
            # Acks are tiny: without this, Nagle holds one back until the peer's delayed ACK.
            "set_tcp_nodelay true\n"
            # Started as root, Mosquitto drops to user "mosquitto", who cannot write its
            # persistence file into the test's directory: stay root here.
            + ("user root\n" if os.geteuid() == 0 else "") + extra)
        self.proc: subprocess.Popen | None = None

    def start(self, nice: int = 0) -> "Mosquitto":
        """``nice``: run below the caller's priority, as a device-local broker should be."""
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=(lambda: os.nice(nice)) if nice else None)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited with {self.proc.returncode} (config {self.conf})")
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} within 10 s")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)
