"""Hardware detection without root: Coral (USB, PCIe), Raspberry Pi, Jetson, CPU features.

Every function takes ``root`` so tests can point it at a fake filesystem tree.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Coral USB Accelerator: 1a6e:089a before its firmware loads, 18d1:9302 after.
CORAL_USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}
# CPU flags that matter to TFLite kernels (XNNPACK picks its paths by these).
_INTERESTING_FLAGS = ("avx", "avx2", "avx512f", "avx512vnni", "avxvnni", "fma", "sse4_2",
                      "f16c", "neon", "asimd", "asimddp", "sve", "i8mm", "fphp", "asimdhp")


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().rstrip(b"\x00\n").decode("utf-8", "replace").strip()
    except OSError:
        return None


def detect_coral_usb(root: str = "/") -> list[str]:
    """``usb:<bus-port>`` for every Coral USB Accelerator on the bus."""
    found = []
    devices = Path(root, "sys/bus/usb/devices")
    for dev in sorted(devices.glob("*")) if devices.is_dir() else ():
        ids = (_read(dev / "idVendor"), _read(dev / "idProduct"))
        if ids in CORAL_USB_IDS:
            found.append(f"usb:{dev.name}")
    return found


def detect_coral_pcie(root: str = "/") -> list[str]:
    """``pci:/dev/apex_N`` for every Coral PCIe/M.2 accelerator with its driver loaded."""
    return [f"pci:/dev/{p.name}" for p in sorted(Path(root, "dev").glob("apex_*"))]


def detect_coral(root: str = "/") -> list[str]:
    return detect_coral_usb(root) + detect_coral_pcie(root)


def detect_board(root: str = "/") -> str | None:
    """The board model from the device tree (Raspberry Pi and most ARM boards)."""
    return _read(Path(root, "proc/device-tree/model"))


def detect_jetson(root: str = "/") -> str | None:
    """The L4T release line on NVIDIA Jetson, else None."""
    text = _read(Path(root, "etc/nv_tegra_release"))
    return text.splitlines()[0] if text else None


def detect_cpu(root: str = "/") -> dict[str, object]:
    flags: set[str] = set()
    model = None
    text = _read(Path(root, "proc/cpuinfo")) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in ("model name", "hardware") and model is None:
            model = value.strip()
    return {
        "arch": platform.machine(),
        "model": model,
        "cores": os.cpu_count(),
        "features": sorted(f for f in _INTERESTING_FLAGS if f in flags),
    }


@dataclass
class Hardware:
    coral_usb: list[str] = field(default_factory=list)
    coral_pcie: list[str] = field(default_factory=list)
    board: str | None = None
    raspberry_pi: bool = False
    jetson: str | None = None
    cpu: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def detect(root: str = "/") -> Hardware:
    board = detect_board(root)
    return Hardware(
        coral_usb=detect_coral_usb(root),
        coral_pcie=detect_coral_pcie(root),
        board=board,
        raspberry_pi=bool(board and board.startswith("Raspberry Pi")),
        jetson=detect_jetson(root),
        cpu=detect_cpu(root),
    )
