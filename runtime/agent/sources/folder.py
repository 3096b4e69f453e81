"""A folder of images replayed as a camera, in name order, round and round.

Each file is decoded once and its pixels kept (up to ``CACHE_BYTES`` in all; past that, decoded
each time); a file that changes is decoded again (its mtime is looked at once a second). A file that does not decode (a text file named ``.png``, a half-written JPEG) is
skipped: logged once, counted in ``rejected``; it is tried again when it changes. Only a folder
with no decodable image left makes ``read()`` return None (said in the log)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edgeloop.runtime.errors import ConfigError

from ..seams import Frame

KEY = "folder"
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CACHE_BYTES = 64 * 1024 * 1024
STAT_EVERY_S = 1.0  # a changed file is seen within this long (a stat per frame cost 1.5% at 2,000/s)

log = logging.getLogger("edgeloop.camera")


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"camera.folder: {folder} is not a folder", "point it at a folder of PNG/JPEG/BMP files")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    if not images:
        raise ConfigError(f"camera.folder: no images in {folder}", "point it at a folder of PNG/JPEG/BMP files")
    return images


def decode(path: Path) -> tuple[np.ndarray, str]:
    """(pixels, format): GRAY for grey files, RGB for everything else."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("L", "1", "I;16", "I", "F"):
            return np.asarray(image.convert("L")), "GRAY"
        return np.asarray(image.convert("RGB")), "RGB"


class FolderCamera:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.images = list_images(folder)
        self.n = 0
        self.rejected = 0  # reads of files that did not decode
        self._cache: dict[Path, tuple[tuple[float, int], np.ndarray, str]] = {}
        self._cached_bytes = 0
        self._bad: dict[Path, tuple[float, int]] = {}  # file -> (mtime, size) when it failed
        self._checked: dict[Path, float] = {}  # file -> when to look at its mtime again

    def read(self) -> Frame | None:
        for _ in range(len(self.images)):
            path = self.images[self.n % len(self.images)]
            self.n += 1
            frame = self._frame(path)
            if frame is not None:
                return frame
        log.error("camera.folder: none of the %d files in %s decodes; waiting for a good one",
                  len(self.images), self.folder)
        return None

    def _frame(self, path: Path) -> Frame | None:
        hit = self._cache.get(path)
        now = time.monotonic()
        if hit is not None and now < self._checked.get(path, 0.0):  # looked at less than a second ago
            return Frame(path.name, hit[1], hit[2], path)
        try:
            st = path.stat()
        except OSError:
            return None  # removed since it was listed
        self._checked[path] = now + STAT_EVERY_S
        stamp = (st.st_mtime, st.st_size)
        if hit is not None and hit[0] == stamp:
            return Frame(path.name, hit[1], hit[2], path)
        if self._bad.get(path) == stamp:
            self.rejected += 1
            return None
        try:
            pixels, fmt = decode(path)
        except Exception as exc:  # Pillow raises many types for a bad file; none may stop the camera
            self.rejected += 1
            self._bad[path] = stamp
            log.warning("camera.folder: skipping %s: it does not decode as an image (%s: %s)", path.name,
                        type(exc).__name__, exc)
            return None
        self._bad.pop(path, None)
        if self._cached_bytes + pixels.nbytes <= CACHE_BYTES:
            old = self._cache.pop(path, None)
            self._cached_bytes += pixels.nbytes - (old[1].nbytes if old else 0)
            self._cache[path] = (stamp, pixels, fmt)
        return Frame(path.name, pixels, fmt, path)

    def close(self) -> None:
        self._cache.clear()


def open(device: str, folder: str, default_folder: Path) -> FolderCamera:  # noqa: A001 (the registry's name)
    return FolderCamera(Path(folder).expanduser() if folder else default_folder)
