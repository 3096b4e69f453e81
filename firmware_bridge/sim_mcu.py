"""A simulated microcontroller on the far end of a pty pair, speaking the edgeloop framing.

``python -m edgeloop.firmware_bridge.sim_mcu --link PATH`` opens a pty, points the symlink
``PATH`` at its device node (what a udev rule does for a USB adapter) and then:

- answers HELLO with its version, firmware and boot id, and says HELLO itself after a reset;
- streams SENSOR frames (an accelerometer window of ``--window`` int16 samples) at ``--rate``
  windows a second (0: as fast as it can), with a spike anomaly when told;
- obeys COMMANDs (``motor`` on/off, ``ping``) and ACKs them; a retransmitted command (same
  sequence number in this boot) is acknowledged again, never applied twice; a command addressed
  to an earlier boot (the host had not yet seen the reset) is refused with an ERROR;
- sends a HEARTBEAT every 0.5 s.

Control lines on stdin (for tests and the demo): ``reset``, ``silent SECONDS``, ``ber RATE``,
``anomaly on|off``, ``unplug``, ``replug``, ``rate HZ``, ``drop-acks N``, ``quit``. On stdout it reports, one
line each: ``ready``, ``applied BOOT SEQ ID CMD``, ``duplicate BOOT SEQ``, ``plugged``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import select
import sys
import threading
import time
import tty
from pathlib import Path

import numpy as np

from .framing import FrameReader, MsgType, encode_frame

FIRMWARE = "sim-mcu 1.0"


def window_check(window: dict) -> str:
    """A check over a window's content (blake2b, 8 bytes), for tests that count corrupt windows."""
    return hashlib.blake2b(repr((window["n"], window["t"], window["samples"])).encode(), digest_size=8).hexdigest()


class SimMcu:
    def __init__(self, link: Path, rate: float, window: int, ber: float, seed: int, verify: bool = False,
                 vibration: bool = False) -> None:
        self.verify = verify
        self.vibration = vibration  # windows from the demo models' signal generator (128 samples)
        self.link = link
        self.rate = rate
        self.window = window
        self.ber = ber
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.lock = threading.Lock()  # one writer at a time on the pty
        self.master = -1
        self.slave = -1
        self.silent_until = 0.0
        self.anomaly = False
        self.motor = True
        self.drop_acks = 0  # ACKs to lose after applying (a noisy line, for the retransmit tests)
        self.running = True
        self._reset_state()
        self.plug()

    def _reset_state(self) -> None:
        self.boot = self.rng.randrange(1, 2**31)
        self.seq = 0
        self.applied: set[int] = set()  # command sequence numbers applied in this boot
        self.reader = FrameReader()
        self.t0 = time.monotonic()

    # -- the pty, as a USB adapter that can be pulled out ------------------------------

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)  # the node appears at once, never half-made
        with self.lock:
            self.master, self.slave = master, slave
        self.say("plugged")

    def unplug(self) -> None:
        with self.lock:
            master, slave, self.master, self.slave = self.master, self.slave, -1, -1
        self.link.unlink(missing_ok=True)
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)

    # -- sending ---------------------------------------------------------------------------

    def send(self, type_: int, payload: object, seq: int | None = None) -> None:
        if time.monotonic() < self.silent_until:
            return
        if seq is None:
            self.seq = (self.seq + 1) & 0xFFFF
            seq = self.seq
        data = encode_frame(type_, seq, payload)
        if self.ber > 0:
            data = self._corrupt(data)
        with self.lock:
            if self.master < 0:
                return
            try:
                os.write(self.master, data)
            except OSError:
                pass  # nobody has the other end open, or the buffer is full: a real line drops bytes too

    def _corrupt(self, data: bytes) -> bytes:
        buf = bytearray(data)
        bit = -1
        while True:
            bit += int(self.np_rng.geometric(self.ber))
            if bit >= len(buf) * 8:
                return bytes(buf)
            buf[bit // 8] ^= 1 << (bit % 8)

    def hello(self) -> None:
        self.send(MsgType.HELLO, {"version": 1, "boot": self.boot, "fw": FIRMWARE, "device": self.link.name})

    # -- loops -----------------------------------------------------------------------------

    def sensor_loop(self) -> None:
        n = 0
        next_at = time.monotonic()
        while self.running:
            t = (time.monotonic() - self.t0)
            if self.vibration:  # normal running; a bearing defect while an anomaly is injected
                from edgeloop.models.demo_data import vibration_windows

                counts, _ = vibration_windows(1, int(self.np_rng.integers(2**31)), classes=(3 if self.anomaly else 0,))
                samples = counts[0].astype(np.float64) if self.motor else self.np_rng.normal(0, 40, counts.shape[1])
            else:
                # a running motor: 1x and 2x rotation plus noise; a spike when an anomaly is injected
                k = np.arange(self.window)
                wave = 900 * np.sin(2 * np.pi * (t * 1000 + k) / 40) + 300 * np.sin(2 * np.pi * (t * 1000 + k) / 20)
                samples = (wave if self.motor else 0 * wave) + self.np_rng.normal(0, 40, self.window)
                if self.anomaly:
                    samples[self.window // 2] += 12000
            window = {"stream": "accel", "n": n, "t": round(t, 6),
                      "samples": np.clip(samples, -32768, 32767).astype(int).tolist()}
            if self.verify:  # an end-to-end check, independent of the frame CRC, to count what gets through
                window["check"] = window_check(window)
            self.send(MsgType.SENSOR, window)
            n += 1
            if self.rate > 0:
                next_at += 1.0 / self.rate
                time.sleep(max(0.0, next_at - time.monotonic()))
            elif n % 64 == 0:
                time.sleep(0)  # let the reader thread in

    def knock_loop(self, every_s: float) -> None:
        """The demo's faults: a bearing knock now and then; the motor is restarted after it."""
        while self.running:
            time.sleep(every_s)
            self.anomaly = True
            time.sleep(0.2)
            self.anomaly = False
            self.motor = True

    def heartbeat_loop(self) -> None:
        while self.running:
            self.send(MsgType.HEARTBEAT, {"boot": self.boot, "uptime": round(time.monotonic() - self.t0, 3)})
            time.sleep(0.5)

    def read_loop(self) -> None:
        while self.running:
            fd = self.master
            if fd < 0:
                time.sleep(0.01)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
                data = os.read(fd, 4096) if ready else b""
            except OSError:
                time.sleep(0.01)  # unplugged under us, or the host side is not open yet
                continue
            for frame in self.reader.feed(data):
                if time.monotonic() < self.silent_until:
                    continue
                self.handle(frame)

    def handle(self, frame: object) -> None:
        if frame.type == MsgType.HELLO:
            self.hello()
        elif frame.type == MsgType.COMMAND:
            payload = frame.payload if isinstance(frame.payload, dict) else {}
            if payload.get("boot") != self.boot:
                # Meant for the MCU before a reset: applying it could apply it twice.
                self.send(MsgType.ERROR, {"error": "stale session", "seq": frame.seq, "boot": self.boot})
                return
            if frame.seq in self.applied:  # a retransmit of what was applied: ack it again only
                self.say(f"duplicate {self.boot} {frame.seq}")
            else:
                self.applied.add(frame.seq)
                self.apply(payload)
                self.say(f"applied {self.boot} {frame.seq} {payload.get('id')} {payload.get('cmd')}")
            if self.drop_acks > 0:
                self.drop_acks -= 1
                return
            self.send(MsgType.ACK, {"ok": True, "motor": self.motor}, seq=frame.seq)

    def apply(self, command: dict) -> None:
        if command.get("cmd") == "motor":
            self.motor = bool(command.get("args", {}).get("on", False))

    # -- control ---------------------------------------------------------------------------

    def control(self, line: str) -> bool:
        word, _, arg = line.strip().partition(" ")
        if word == "reset":
            self.silent_until = time.monotonic() + 0.05  # a reboot takes a moment
            self._reset_state()
            time.sleep(0.06)
            self.hello()
        elif word == "silent":
            self.silent_until = time.monotonic() + float(arg)
        elif word == "ber":
            self.ber = float(arg)
        elif word == "anomaly":
            self.anomaly = arg == "on"
        elif word == "drop-acks":
            self.drop_acks = int(arg)
        elif word == "rate":
            self.rate = float(arg)
        elif word == "unplug":
            self.unplug()
        elif word == "replug":
            self.plug()
            self.hello()
        elif word == "event":  # what a firmware reports on its own: a button, an overcurrent
            self.send(MsgType.EVENT, {"event": arg or "demo"})
        elif word == "quit":
            return False
        return True

    @staticmethod
    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a simulated MCU on a pty")
    p.add_argument("--link", type=Path, required=True, help="symlink to create for the pty's device node")
    p.add_argument("--rate", type=float, default=100.0, help="sensor windows a second (0: as fast as possible)")
    p.add_argument("--window", type=int, default=32, help="samples a window")
    p.add_argument("--ber", type=float, default=0.0, help="bit-error rate on what it sends")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verify", action="store_true", help="add an end-to-end check to every sensor window")
    p.add_argument("--vibration", action="store_true",
                   help="send the demo vibration signals (128-sample windows; a bearing defect as the anomaly)")
    p.add_argument("--anomaly-every", type=float, default=0.0,
                   help="a 0.2 s knock every this many seconds, and the motor back on after it (demo)")
    args = p.parse_args(argv)
    mcu = SimMcu(args.link, args.rate, args.window, args.ber, args.seed, args.verify, args.vibration)
    for loop in (mcu.read_loop, mcu.sensor_loop, mcu.heartbeat_loop):
        threading.Thread(target=loop, daemon=True).start()
    if args.anomaly_every > 0:
        threading.Thread(target=mcu.knock_loop, args=(args.anomaly_every,), daemon=True).start()
    mcu.say("ready")
    try:
        for line in sys.stdin:
            if not mcu.control(line):
                break
    finally:
        mcu.running = False
        mcu.unplug()
    return 0


if __name__ == "__main__":
    sys.exit(main())
