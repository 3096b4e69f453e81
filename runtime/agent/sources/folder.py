"""A folder of images replayed as a camera, in name order, round and round."""

from __future__ import annotations

from pathlib import Path

from edgeloop.runtime.errors import ConfigError

from . import Frame

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class FolderCamera:
    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise ConfigError(f"camera.folder: {folder} is not a folder", "point it at a folder of PNG/JPEG/BMP files")
        self.images = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        if not self.images:
            raise ConfigError(f"camera.folder: no images in {folder}", "point it at a folder of PNG/JPEG/BMP files")
        self.n = 0

    def read(self) -> Frame:
        from PIL import Image

        path = self.images[self.n % len(self.images)]
        self.n += 1
        return Frame(path.name, Image.open(path), path)

    def close(self) -> None:
        pass
