"""The host end of the serial link to a microcontroller (pyserial).

``McuLink(url)`` opens a device path or a pyserial URL (``loop://``, ``socket://``,
``rfc2217://``), says HELLO and keeps a session with the MCU:

- A reader thread decodes frames and never blocks: sensor windows go into a bounded queue
  (the oldest are dropped, and counted, when the pipeline falls behind).
- When the port fails (a USB adapter pulled out: the node vanishes), the link closes it and
  opens the path again every ``reopen_s`` until it is back, then says HELLO again.
- A HELLO with a new boot id is a new session (the MCU reset): commands still waiting are
  failed with ``SessionReset`` — never sent again, so no command is applied twice.
- ``command()`` waits for the ACK; after ``timeout_s`` it sends the command again with the
  same sequence number (the MCU acknowledges a duplicate without applying it), ``retries``
  times, then raises ``CommandTimeout``.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edgeloop.runtime.errors import EdgeloopError

from .framing import Flags, Frame, FrameReader, MsgType, encode_frame

log = logging.getLogger("edgeloop.serial")

CLOSED, OPENING, HANDSHAKE, READY = "closed", "opening", "handshake", "ready"
SUPPORTED_VERSIONS = (1,)


class SerialLinkError(EdgeloopError):
    """The serial link cannot do what was asked."""


class CommandTimeout(SerialLinkError):
    """No acknowledgement after every retransmission."""


class SessionReset(SerialLinkError):
    """The MCU reset while the command waited: it may or may not have been applied once; it
    will not be sent again."""


@dataclass
class LinkConfig:
    url: str
    baudrate: int = 115200
    timeout_s: float = 0.2  # per command attempt
    retries: int = 3
    reopen_s: float = 0.1  # between attempts to open a port that went away
    hello_s: float = 0.5  # HELLO again until the MCU answers
    heartbeat_s: float = 1.0
    queue_size: int = 1024  # sensor windows waiting for the pipeline


@dataclass
class _Pending:
    seq: int
    frame: bytes
    done: threading.Event = field(default_factory=threading.Event)
    ack: Any = None
    error: EdgeloopError | None = None


class McuLink:
    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.state = CLOSED
        self.session: dict[str, Any] | None = None  # the MCU's HELLO
        self.sensor: queue.Queue[dict[str, Any]] = queue.Queue(config.queue_size)
        self.events: queue.Queue[Frame] = queue.Queue(config.queue_size)
        self.counts = {"sessions": 0, "reopens": 0, "dropped_sensor": 0, "retransmits": 0, "timeouts": 0,
                       "stale": 0, "commands": 0, "acks": 0, "incompatible": 0}
        self.last_rx = 0.0
        self._port: Any = None
        self._reader = FrameReader()
        self._seq = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()  # state, pending, the port
        self._write_lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._running = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "McuLink":
        self._running = True
        for target, name in ((self._read_loop, "mcu-reader"), (self._keepalive_loop, "mcu-keepalive")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._ready:
            while self.state != READY:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(left)
        return True

    def stop(self) -> None:
        self._running = False
        for t in self._threads:
            t.join(2.0)
        self._close()
        self._fail_pending(SerialLinkError("the link was stopped", "start it again"))

    def stats(self) -> dict[str, Any]:
        return {"state": self.state, "session": self.session, "frames": self._reader.frames,
                "rejected": dict(self._reader.rejected), **self.counts}

    # -- the port ----------------------------------------------------------------------

    def _open(self) -> bool:
        import serial

        try:
            port = serial.serial_for_url(self.config.url, baudrate=self.config.baudrate, timeout=0.05,
                                         write_timeout=1.0)
        except (serial.SerialException, OSError, ValueError):
            return False
        with self._lock:
            self._port = port
            self.state = HANDSHAKE
            self._reader.reset()  # half a frame from the old port is garbage now
        self._send(MsgType.HELLO, {"versions": list(SUPPORTED_VERSIONS), "host": "edgeloop"})
        return True

    def _close(self) -> None:
        with self._lock:
            port, self._port = self._port, None
            self.state = CLOSED if not self._running else OPENING
        if port is not None:
            try:
                port.close()
            except Exception:  # a port that vanished may fail to close; it is gone either way
                pass

    def _send(self, type_: int, payload: Any, seq: int | None = None, flags: int = 0) -> bytes:
        data = encode_frame(type_, next(self._seq) & 0xFFFF if seq is None else seq, payload, flags)
        self._write(data)
        return data

    def _write(self, data: bytes) -> bool:
        port = self._port
        if port is None:
            return False
        try:
            with self._write_lock:
                port.write(data)
            return True
        except Exception as exc:  # pyserial raises SerialException, OSError, or a TypeError when closed
            log.debug("serial write failed: %s", exc)
            return False

    # -- reading -----------------------------------------------------------------------

    def _read_loop(self) -> None:
        while self._running:
            port = self._port
            if port is None:
                if self._open():
                    log.info("serial: %s open", self.config.url)
                else:
                    time.sleep(self.config.reopen_s)
                continue
            try:
                data = port.read(1)  # waits up to the port's timeout, then whatever else is there
                if data and port.in_waiting:
                    data += port.read(port.in_waiting)
            except Exception as exc:  # the adapter went away: reopen the path until it is back
                log.warning("serial: %s lost (%s); reopening", self.config.url, exc)
                self.counts["reopens"] += 1
                self._close()
                continue
            if data:
                self.last_rx = time.monotonic()
                for frame in self._reader.feed(data):
                    self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        if frame.type == MsgType.SENSOR:
            try:
                self.sensor.put_nowait({**payload, "rx": self.last_rx})
            except queue.Full:
                self.counts["dropped_sensor"] += 1
        elif frame.type == MsgType.ACK:
            with self._lock:
                pending = self._pending.pop(frame.seq, None)
            if pending is not None:
                pending.ack = payload
                self.counts["acks"] += 1
                pending.done.set()
        elif frame.type == MsgType.HELLO and "boot" in payload:  # an MCU's (a loop echoes ours)
            self._hello(payload)
        elif frame.type == MsgType.ERROR and payload.get("error") == "stale session":
            self.counts["stale"] += 1
            with self._lock:
                pending = self._pending.pop(int(payload.get("seq", -1)), None)
            if pending is not None:
                pending.error = SessionReset("the MCU reset before it took the command; it was not applied",
                                             "send it again if it is still wanted")
                pending.done.set()
        elif frame.type in (MsgType.EVENT, MsgType.ERROR):
            try:
                self.events.put_nowait(frame)
            except queue.Full:
                pass

    def _hello(self, payload: dict[str, Any]) -> None:
        boot = payload.get("boot")
        if payload.get("version") not in SUPPORTED_VERSIONS:
            log.error("serial: the MCU speaks protocol version %r; this host speaks %s: update one side",
                      payload.get("version"), SUPPORTED_VERSIONS)
            self.counts["incompatible"] += 1
            return
        with self._ready:
            new = self.session is None or self.session.get("boot") != boot
            # The commands of the old session are taken out before anyone can see READY: a
            # command sent in the new session (right after wait_ready) must not be failed with them.
            stale, self._pending = (list(self._pending.values()), {}) if new else ([], self._pending)
            self.session = payload
            self.state = READY
            self._ready.notify_all()
        for pending in stale:
            pending.error = SessionReset("the MCU reset while the command waited; it may have been "
                                         "applied once and will not be sent again",
                                         "check the MCU's state, then send it again if needed")
            pending.done.set()
        if new:
            self.counts["sessions"] += 1
            log.info("serial: session with %s (boot %s)", payload.get("fw"), boot)

    def _fail_pending(self, error: EdgeloopError) -> None:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            p.error = error
            p.done.set()

    # -- keepalive ---------------------------------------------------------------------

    def _keepalive_loop(self) -> None:
        last_hello = last_beat = 0.0
        while self._running:
            now = time.monotonic()
            if self.state == HANDSHAKE and now - last_hello >= self.config.hello_s:
                self._send(MsgType.HELLO, {"versions": list(SUPPORTED_VERSIONS), "host": "edgeloop"})
                last_hello = now
            elif self.state == READY and now - last_beat >= self.config.heartbeat_s:
                self._send(MsgType.HEARTBEAT, {})
                last_beat = now
            time.sleep(0.02)

    # -- commands ----------------------------------------------------------------------

    def command(self, cmd: str, args: dict[str, Any] | None = None, *, command_id: str | None = None,
                timeout_s: float | None = None, retries: int | None = None) -> dict[str, Any]:
        """Send a command and wait for its ACK; the ACK's payload is returned."""
        if self.state != READY or self.session is None:
            raise SerialLinkError(f"the MCU link is {self.state}", "wait for the session (wait_ready)")
        seq = next(self._seq) & 0xFFFF
        payload = {"id": command_id or f"c{seq}", "cmd": cmd, "args": args or {}, "boot": self.session.get("boot")}
        pending = _Pending(seq, encode_frame(MsgType.COMMAND, seq, payload))
        with self._lock:
            self._pending[seq] = pending
        self.counts["commands"] += 1
        attempts = 1 + (self.config.retries if retries is None else retries)
        wait = self.config.timeout_s if timeout_s is None else timeout_s
        for attempt in range(attempts):
            if attempt:
                self.counts["retransmits"] += 1
                frame = encode_frame(MsgType.COMMAND, seq, payload, Flags.RETRANSMIT)
            else:
                frame = pending.frame
            self._write(frame)
            if pending.done.wait(wait):
                if pending.error is not None:
                    raise pending.error
                return pending.ack
        with self._lock:
            self._pending.pop(seq, None)
        self.counts["timeouts"] += 1
        raise CommandTimeout(f"command '{cmd}' (seq {seq}) not acknowledged after {attempts} attempts",
                             "check the MCU and the cable; the command may or may not have been applied")
