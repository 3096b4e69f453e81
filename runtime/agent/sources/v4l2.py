"""A V4L2 camera through OpenCV (``opencv-python-headless``, the ``camera`` extra).

``device`` is ``/dev/videoN``, a bare index ``N``, or anything else OpenCV opens (a video file
or stream URL: what the tests use, as there is no camera on CI machines). A camera that stops
giving frames (unplugged, a file at its end) is closed and opened again, backing off up to
5 s; each failure is logged and counted, and ``read()`` returns None meanwhile.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edgeloop.runtime.errors import ConfigError

from ..seams import Frame

KEY = "v4l2"

log = logging.getLogger("edgeloop.camera")


class V4l2Camera:
    def __init__(self, device: str) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise ConfigError(f"camera.device: '{device}' needs OpenCV, which is not installed",
                              "pip install 'edgeloop[camera]' (opencv-python-headless), or leave camera.device "
                              "empty to replay camera.folder") from exc
        self.cv2 = cv2
        self.device = device
        self.n = 0
        self.failures = 0  # reads that gave no frame
        self.reopened = 0
        self._retry_at = 0.0
        self._backoff = 0.1
        self.cap = self._open()
        if not self.cap.isOpened():
            raise ConfigError(f"camera.device: cannot open '{device}'",
                              "check the device exists (ls /dev/video*) and that this user may read it "
                              "(the 'video' group)")

    def _open(self) -> Any:
        cv2 = self.cv2
        if self.device.isdigit():
            return cv2.VideoCapture(int(self.device), cv2.CAP_V4L2)
        if self.device.startswith("/dev/video"):
            return cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        return cv2.VideoCapture(self.device)

    def read(self) -> Frame | None:
        if self.cap is None:
            if time.monotonic() < self._retry_at:
                return None
            self.cap = self._open()
            self.reopened += 1
            if not self.cap.isOpened():
                self._give_up_for_now("cannot open it")
                return None
        ok, bgr = self.cap.read()
        if not ok or bgr is None:
            self._give_up_for_now("no frame")
            return None
        self._backoff = 0.1
        self.n += 1
        # OpenCV gives BGR: the preprocess kernel converts from it as it resizes.
        return Frame(f"frame-{self.n}", bgr, "BGR" if bgr.ndim == 3 else "GRAY")

    def _give_up_for_now(self, why: str) -> None:
        self.failures += 1
        log.warning("camera %s: %s; opening it again in %.1f s", self.device, why, self._backoff)
        if self.cap is not None:
            self.cap.release()
        self.cap = None
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 5.0)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def open(device: str, folder: str, default_folder: Any) -> V4l2Camera:  # noqa: A001 (the registry's name)
    return V4l2Camera(device)
