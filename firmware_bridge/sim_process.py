"""The simulated MCU as a child process, for the tests, the benchmark and the demo: started on
a pty behind a symlink, driven through its stdin, its reports (applied / duplicate commands)
collected from its stdout (read all along: a full pipe would stop it mid-write)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path


class SimProcess:
    def __init__(self, workdir: Path, *args: str, name: str = "ttyMCU") -> None:
        self.link = workdir / name
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeloop.firmware_bridge.sim_mcu", "--link",
                                      str(self.link), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._collect, daemon=True).start()
        assert self._ready.wait(10), "the simulated MCU did not start"

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("ready"):
                self._ready.set()

    def tell(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def applied(self) -> list[tuple[int, int, str]]:
        """(boot, seq, command id) of every command the MCU applied."""
        out = []
        for line in list(self.lines):
            if line.startswith("applied "):
                _, boot, seq, cid, _ = line.split(" ", 4)
                out.append((int(boot), int(seq), cid))
        return out

    def close(self) -> None:
        try:
            self.tell("quit")
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()

    def wait_for_line(self, prefix: str, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return
            time.sleep(0.01)
        raise AssertionError(f"the simulated MCU never said '{prefix}'")
