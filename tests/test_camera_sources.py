"""The agent's camera sources. There is no camera on these machines: the V4L2 source is
driven through OpenCV's same VideoCapture on a video file it writes; only the /dev/video
ioctl path below OpenCV goes untested here."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import camera_agent_config, running_agent, wait_for

from edgeloop.runtime.agent.agent import bundled_samples
from edgeloop.runtime.agent.sources import open_camera
from edgeloop.runtime.errors import ConfigError

cv2 = pytest.importorskip("cv2", reason="OpenCV (the 'camera' extra) is not installed")


def write_video(path, digits, repeat=3, size=96):
    from PIL import Image

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size, size))
    assert writer.isOpened()
    for digit in digits:
        grey = np.asarray(Image.open(bundled_samples() / f"digit_{digit}.png").convert("L").resize((size, size)))
        for _ in range(repeat):
            writer.write(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_frames_come_in_order_and_the_source_reopens_at_the_end(tmp_path):
    video = write_video(tmp_path / "cam.avi", [1, 2], repeat=2)
    camera = open_camera(str(video), "", bundled_samples())
    try:
        frames = [camera.read() for _ in range(4)]
        assert [f.name for f in frames] == ["frame-1", "frame-2", "frame-3", "frame-4"]
        assert frames[0].pixels.shape == (96, 96, 3) and frames[0].fmt == "BGR"  # as OpenCV gives it
        assert frames[0].raw()[:8] == b"\x89PNG\r\n\x1a\n"  # no file behind a frame: kept as PNG
        assert camera.read() is None and camera.failures == 1  # the end: closed, to be opened again
        wait_for(lambda: camera.read() is not None, 5, "the source opened again")
        assert camera.reopened == 1
    finally:
        camera.close()


def test_a_missing_device_or_opencv_is_a_config_error_that_says_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"camera.device: cannot open '/dev/video77'.*video' group"):
        open_camera("/dev/video77", "", bundled_samples())
    with pytest.raises(ConfigError, match="camera.folder: no images"):
        open_camera("", str(tmp_path), bundled_samples())
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    with pytest.raises(ConfigError, match=r"needs OpenCV.*edgeloop\[camera\]"):
        open_camera("/dev/video0", "", bundled_samples())


def test_the_agent_classifies_a_camera_through_opencv(tmp_path):
    video = write_video(tmp_path / "cam.avi", [7, 3], repeat=5)
    config = camera_agent_config(tmp_path / "data", device=str(video), fps=100.0)
    with running_agent(config) as agent:
        wait_for(lambda: agent.inferences >= 25, 20, "a pass through the video and into the next")
    import msgpack

    from edgeloop.sync.outbox import Outbox

    with Outbox(tmp_path / "data" / "outbox.db", "gw-1") as box:
        records = box.next_batch(max_bytes=1 << 30, max_records=100_000, live_share=0)
    labels = [msgpack.unpackb(r["body"])["label"] for r in records if r["stream"] == "inferences"]
    assert labels[:10] == ["7"] * 5 + ["3"] * 5, labels[:10]
    assert agent.alerts >= 5  # 7 is the demo's alert label
