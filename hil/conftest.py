"""Hardware-in-the-loop fixtures: each test skips, saying why, when the rig lacks its hardware."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("EDGELOOP_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
CORAL = SHARED / "models" / "coral"
IMAGES = SHARED / "images"


@pytest.fixture(scope="session")
def hardware():
    from edgeloop.runtime import hardware as hw

    return hw.detect()


@pytest.fixture(scope="session")
def edgetpu_ready(hardware):
    from edgeloop.runtime.backends import get_backend
    from edgeloop.runtime.delegates import DelegateSpec, load_delegate
    from edgeloop.runtime.errors import DelegateUnavailable

    if not (hardware.coral_usb or hardware.coral_pcie):
        pytest.skip("no Coral Edge TPU on this rig (none on USB 1a6e:089a/18d1:9302, no /dev/apex_*)")
    try:
        load_delegate(get_backend("auto"), DelegateSpec("edgetpu"))
    except DelegateUnavailable as exc:
        pytest.skip(f"Coral present but its runtime is not: {exc}")
    return True
