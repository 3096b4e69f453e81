"""A small file replaced whole and durably: written beside, synced, renamed into place."""

from __future__ import annotations

import os
from pathlib import Path


def replace_durably(path: str | Path, data: bytes) -> None:
    """``path`` holds ``data`` afterwards, or (after a crash) what it held before; never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # the rename itself, through a power cut
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
