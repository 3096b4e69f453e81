"""Coral Edge TPU delegate (libedgetpu)."""

from __future__ import annotations

import platform
import re
from typing import Any

from ..errors import ConfigError, DelegateUnavailable

NAME = "edgetpu"
CUSTOM_OPS = ("edgetpu-custom-op",)
LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
INSTALL_HINT = ("install the Edge TPU runtime (Debian/Ubuntu: apt-get install libedgetpu1-std "
                "from Coral's package repository) and plug in the Coral")
# "usb", "usb:0", "pci", "pci:0", or ":0" (the Nth TPU of any kind), as libedgetpu accepts.
_DEVICE = re.compile(r"^(usb|pci)(:\d+)?$|^:\d+$")


def library_name(system: str | None = None) -> str:
    return LIBRARIES.get(system or platform.system(), LIBRARIES["Linux"])


def validate_device(device: str | None) -> None:
    if device is not None and not _DEVICE.match(device):
        raise ConfigError(f"edgetpu_device: '{device}' is not an Edge TPU device string",
                          "use usb, usb:N, pci, pci:N or :N")


def load(backend: Any, spec: Any) -> Any:
    options = dict(spec.options)
    if spec.device:
        options["device"] = spec.device
    library = spec.library or library_name()
    try:
        return backend.load_delegate(library, options)
    except DelegateUnavailable as exc:
        from ..hardware import detect_coral

        found = detect_coral()
        where = f"Coral found at {', '.join(found)}" if found else "no Edge TPU found"
        raise DelegateUnavailable(f"Edge TPU delegate unavailable ({where}; {exc.problem})",
                                  INSTALL_HINT) from exc
