"""``edgeloop doctor``: what this device can run: backends, delegates, hardware."""

from __future__ import annotations

import argparse
import ctypes
import platform
from typing import Any


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("doctor", help="backends, delegates and hardware found on this device")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def _library_loads(name: str) -> tuple[bool, str | None]:
    try:
        ctypes.CDLL(name)
        return True, None
    except OSError as exc:
        return False, str(exc)


def report() -> dict[str, Any]:
    import numpy as np

    from edgeloop.runtime import hardware
    from edgeloop.runtime.backends import probe_backends
    from edgeloop.runtime.delegates import edgetpu, gpu
    from edgeloop.runtime.engine import default_threads

    delegates = []
    for kind, library, hint in (("edgetpu", edgetpu.library_name(), edgetpu.INSTALL_HINT),
                                ("gpu", gpu.LIBRARY, gpu.INSTALL_HINT)):
        ok, error = _library_loads(library)
        delegates.append({"name": kind, "library": library, "available": ok,
                          **({} if ok else {"error": error, "fix": hint})})
    backends = probe_backends()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "backends": backends,
        "default_backend": next((b["name"] for b in backends if b["available"]), None),
        "delegates": delegates,
        "hardware": hardware.detect().to_dict(),
        "threads": {"default": default_threads(), "xnnpack": True},
    }


def run(args: argparse.Namespace) -> int:
    from .common import print_json

    data = report()
    if args.json:
        print_json(data)
        return 0
    print(f"python {data['python']}  numpy {data['numpy']}  {data['platform']}")
    for b in data["backends"]:
        state = b["version"] if b["available"] else f"unavailable: {b['error']}"
        print(f"backend  {b['name']:<15} {state}")
    for d in data["delegates"]:
        state = "available" if d["available"] else f"not found ({d['library']}): {d['fix']}"
        print(f"delegate {d['name']:<15} {state}")
    hw = data["hardware"]
    print(f"coral    usb={hw['coral_usb'] or '-'} pcie={hw['coral_pcie'] or '-'}")
    print(f"board    {hw['board'] or '-'}{'  (Raspberry Pi)' if hw['raspberry_pi'] else ''}")
    print(f"jetson   {hw['jetson'] or '-'}")
    cpu = hw["cpu"]
    print(f"cpu      {cpu['arch']} x{cpu['cores']} {cpu['model'] or ''}  features: {' '.join(cpu['features']) or '-'}")
    print(f"threads  default {data['threads']['default']}, xnnpack on")
    return 0 if data["default_backend"] else 1
