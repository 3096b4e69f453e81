"""The MCU's sensor windows through the firmware bridge: a real port (``mcu.url``) or, without
one, the simulated MCU on a pty in the data folder. ``link.sensor`` is the queue of windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeloop.firmware_bridge.link import LinkConfig, McuLink

KEY = "mcu"


class McuSource:
    def __init__(self, mcu: Any, data_path: Path) -> None:
        self.sim: Any = None
        url = mcu.url
        if not url:
            from edgeloop.firmware_bridge.sim_process import SimProcess

            self.sim = SimProcess(data_path, "--rate", str(mcu.rate_hz), "--anomaly-every", str(mcu.anomaly_every_s),
                                  *(["--vibration"] if mcu.model else []))
            url = str(self.sim.link)
        self.link = McuLink(LinkConfig(url)).start()

    def close(self) -> None:
        self.link.stop()
        if self.sim is not None:
            self.sim.close()


def open(mcu: Any, data_path: Path) -> McuSource:  # noqa: A001 (the registry's name)
    return McuSource(mcu, data_path)
