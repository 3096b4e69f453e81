"""The agent's camera sources: a folder of images replayed as a camera (``folder.py``) or a
V4L2 camera through OpenCV (``v4l2.py``). Each has ``read() -> Frame | None`` (None: no frame
now, try again) and ``close()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple


class Frame(NamedTuple):
    name: str  # the file's name, or the camera's frame counter
    image: Any  # a PIL image (RGB or as the file holds it)
    path: Path | None = None  # the file, for a replayed folder

    def raw(self) -> bytes:
        """The frame's bytes as they came (the file), else as PNG."""
        if self.path is not None:
            return self.path.read_bytes()
        from edgeloop.runtime.source_bytes import to_bytes

        return to_bytes(self.image)[0]


def open_camera(device: str, folder: str, default_folder: Path) -> Any:
    """``device`` set: that V4L2 camera (or video file); else the folder (or ``default_folder``)."""
    if device:
        from .v4l2 import V4l2Camera

        return V4l2Camera(device)
    from .folder import FolderCamera

    return FolderCamera(Path(folder).expanduser() if folder else default_folder)


__all__ = ["Frame", "open_camera"]
