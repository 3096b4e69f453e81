"""Logging for every edgeloop process: the agent, its sync worker, the CLI.

``configure(json=True)`` makes every line on stderr one JSON object (``ts``, ``level``,
``logger``, ``msg``): Python's records through the formatter, and what native libraries write
to file descriptor 2 themselves (LiteRT's "Created TensorFlow Lite XNNPACK delegate", a
delegate's warnings) through a pipe whose lines are wrapped as ``logger: "native"``. The choice
travels to child processes in ``EDGELOOP_LOG_FORMAT``.
"""

from __future__ import annotations

import json as _json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

FORMAT_ENV = "EDGELOOP_LOG_FORMAT"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _json.dumps(entry, default=str)


def json_wanted() -> bool:
    return os.environ.get(FORMAT_ENV, "").lower() == "json"


def _capture_native_stderr() -> TextIO:
    """Route fd 2 through a pipe; returns a stream on the real stderr for our own lines."""
    real = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    lock = threading.Lock()

    def pump() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                text = line.rstrip("\n")
                if text.startswith("{") and text.endswith("}"):  # a child's JSON line, as it is
                    with lock:
                        real.write(text + "\n")
                elif text:
                    entry = {"ts": round(time.time(), 6), "level": "info", "logger": "native", "msg": text}
                    with lock:
                        real.write(_json.dumps(entry) + "\n")

    threading.Thread(target=pump, name="native-stderr", daemon=True).start()
    sys.stderr = real  # Python-level writes (tracebacks, warnings) go straight out
    return real


def configure(json: bool | None = None, verbose: bool = False, prefix: str = "edgeloop") -> None:
    """Set up the root logger once for this process; ``json`` None: from the environment."""
    json = json_wanted() if json is None else json
    if json:
        os.environ[FORMAT_ENV] = "json"  # children (the sync worker, the simulator) do the same
        stream = _capture_native_stderr()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{prefix}: %(levelname)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def say(message: str, logger: str = "edgeloop", **fields: Any) -> None:
    """A line for the user on stdout (the agent's status lines, its start and stop): as it is,
    or under ``--log-json`` one JSON object like the log's, with ``fields`` beside ``msg``."""
    if json_wanted():
        entry = {"ts": round(time.time(), 6), "level": "info", "logger": logger, "msg": message, **fields}
        sys.stdout.write(_json.dumps(entry, default=str) + "\n")
    else:
        sys.stdout.write(message + "\n")
    sys.stdout.flush()


class Throttled:
    """A warning that hostile or broken peers can repeat at will (a malformed message, a
    refused request): the first is logged, then at most one line per ``every_s``, saying how
    many came since. The caller still counts each one in its metrics."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held += 1
                return
            held, self._held, self._next = self._held, 0, now + self.every_s
        if held:
            message += f" (and {held} more like it since the last such line)"
        self.logger.warning(message, *args)
