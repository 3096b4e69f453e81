"""Hardware detection reads sysfs, /dev, the device tree and /etc; tested on fake trees."""

from __future__ import annotations

from pathlib import Path

from edgeloop.runtime import hardware


def touch(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_coral_usb_both_ids_and_pcie(tmp_path):
    touch(tmp_path, "sys/bus/usb/devices/2-1/idVendor", "1a6e\n")
    touch(tmp_path, "sys/bus/usb/devices/2-1/idProduct", "089a\n")
    touch(tmp_path, "sys/bus/usb/devices/2-2/idVendor", "18d1\n")
    touch(tmp_path, "sys/bus/usb/devices/2-2/idProduct", "9302\n")
    touch(tmp_path, "sys/bus/usb/devices/1-1/idVendor", "046d\n")  # a webcam, not a Coral
    touch(tmp_path, "sys/bus/usb/devices/1-1/idProduct", "0825\n")
    touch(tmp_path, "dev/apex_0")
    hw = hardware.detect(str(tmp_path))
    assert hw.coral_usb == ["usb:2-1", "usb:2-2"]
    assert hw.coral_pcie == ["pci:/dev/apex_0"]


def test_raspberry_pi_and_jetson(tmp_path):
    touch(tmp_path, "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    touch(tmp_path, "etc/nv_tegra_release", "# R36 (release), REVISION: 3.0, GCID: 1\nmore\n")
    touch(tmp_path, "proc/cpuinfo", "processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp i8mm\n")
    hw = hardware.detect(str(tmp_path))
    assert hw.board == "Raspberry Pi 5 Model B Rev 1.0" and hw.raspberry_pi
    assert hw.jetson == "# R36 (release), REVISION: 3.0, GCID: 1"
    assert hw.cpu["features"] == ["asimd", "asimddp", "i8mm"]


def test_nothing_found_on_an_empty_tree(tmp_path):
    hw = hardware.detect(str(tmp_path))
    assert (hw.coral_usb, hw.coral_pcie, hw.board, hw.raspberry_pi, hw.jetson) == ([], [], None, False, None)
    assert hw.cpu["features"] == []
