"""The desired configuration last applied, kept in ``desired.json`` in the data folder (written
atomically) and applied at the next start: a rejected document still retained on the broker
cannot take the device back to its file's configuration."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgeloop.runtime.durable_file import replace_durably

log = logging.getLogger("edgeloop.config")


class LastGood:
    """The applied layers on disk (written atomically), for the next start."""

    def __init__(self, data_path: Path) -> None:
        self.path = data_path / "desired.json"

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            layers = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("desired config: %s is unreadable (%s); starting from the file's config", self.path, exc)
            return {}
        return {k: v for k, v in layers.items() if k in ("group", "device") and isinstance(v, dict)} \
            if isinstance(layers, dict) else {}

    def save(self, layers: dict[str, dict[str, Any]]) -> None:
        replace_durably(self.path, json.dumps(layers).encode())
