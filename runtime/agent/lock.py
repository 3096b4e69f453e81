"""One agent per data folder: an exclusive ``flock`` on ``agent.lock`` in it, held while the
agent runs (the kernel drops it when the process dies, however it dies). A second agent on the
same folder is refused before it touches the outbox or the MCU's port."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from edgeloop.runtime.errors import ConfigError


class DataDirLock:
    def __init__(self, data_path: Path) -> None:
        self.path = data_path / "agent.lock"
        self._fd: int | None = None

    def acquire(self) -> "DataDirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise ConfigError(f"data_dir: another agent (pid {holder}) is running on {self.path.parent}",
                              "stop it first, or give this one its own --data-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
