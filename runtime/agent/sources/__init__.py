"""The agent's sources, one file each, found by ``KEY``: camera sources (``folder``: an image
folder replayed as a camera; ``v4l2``: a camera through OpenCV), each with
``open(camera_config, default_folder) -> CameraSource``; the MCU's windows (``mcu``) and MQTT
requests (``mqtt-requests``). A source's key is its file's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeloop.runtime.errors import ConfigError

from ..registry import failed, load
from ..seams import CameraSource, Frame


def camera_kind(device: str) -> str:
    return "v4l2" if device else "folder"


def open_camera(device: str, folder: str, default_folder: Path) -> CameraSource:
    """``device`` set: that V4L2 camera (or video file); else the folder (or ``default_folder``)."""
    kind = camera_kind(device)
    module: Any = load(__name__, kind)
    if module is None:
        why = failed.get(f"{__name__}.{kind}", "no such source")
        raise ConfigError(f"camera: the '{kind}' source is not available ({why})", "see the log for why")
    return module.open(device=device, folder=folder, default_folder=default_folder)


__all__ = ["Frame", "open_camera", "camera_kind"]
