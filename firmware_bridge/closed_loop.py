"""The closed loop: sensor windows from the MCU → a decision (a model, a rule) → a command
back to the MCU, acknowledged; the loop latency (window received → command acknowledged) is
measured for every window that led to a command. Telemetry and events go to outbox streams
when an outbox is given."""

from __future__ import annotations

import queue
import time
from typing import Any, Callable

import numpy as np

from .link import McuLink, SerialLinkError

Decision = tuple[str, dict[str, Any]] | None  # (command, args), or nothing to do


class ClosedLoop:
    def __init__(self, link: McuLink, decide: Callable[[dict[str, Any]], Decision], outbox: Any = None) -> None:
        self.link = link
        self.decide = decide
        self.outbox = outbox
        self.latencies_ms: list[float] = []
        self.windows = 0
        self.commands = 0
        self.failures: dict[str, int] = {}
        self.telemetry_every_s = 1.0
        # Kept across run() calls: a caller that serves in short slices still gets its telemetry
        # (a timer started anew in each call of less than a second never fired).
        self._next_telemetry = time.monotonic() + self.telemetry_every_s

    def run(self, seconds: float) -> dict[str, Any]:
        """Serve the loop for ``seconds``; returns its figures."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.outbox is not None and time.monotonic() >= self._next_telemetry:
                self._telemetry()
                self._next_telemetry = max(self._next_telemetry + self.telemetry_every_s, time.monotonic())
            try:
                window = self.link.sensor.get(timeout=0.1)
            except queue.Empty:
                continue
            self.windows += 1
            decision = self.decide(window)
            if decision is None:
                continue
            cmd, args = decision
            try:
                self.link.command(cmd, args)
            except SerialLinkError as exc:  # counted, reported; the loop goes on with the next window
                self.failures[type(exc).__name__] = self.failures.get(type(exc).__name__, 0) + 1
                continue
            self.commands += 1
            self.latencies_ms.append((time.monotonic() - window["rx"]) * 1000.0)
            if self.outbox is not None:
                self.outbox.enqueue("events", {"command": cmd, "args": args, "window": window.get("n")})
        return self.figures()

    def _telemetry(self) -> None:
        """Once a second: the MCU's events as they came, and a summary of the link."""
        events = []
        while not self.link.events.empty():
            frame = self.link.events.get_nowait()
            events.append(("mcu-events", {"type": int(frame.type), "payload": frame.payload}))
        stats = self.link.stats()
        summary = {k: stats[k] for k in ("state", "frames", "rejected", "dropped_sensor", "retransmits", "timeouts")}
        self.outbox.enqueue_many([*events, ("telemetry", {**summary, "windows": self.windows,
                                                         "commands": self.commands})])

    def figures(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms)
        out: dict[str, Any] = {"windows": self.windows, "commands": self.commands, "failures": self.failures}
        if lat.size:
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            out.update(loop_p50_ms=round(float(p50), 3), loop_p95_ms=round(float(p95), 3),
                       loop_p99_ms=round(float(p99), 3))
        return out
