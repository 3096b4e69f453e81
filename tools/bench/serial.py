"""``edgeloop bench serial``: the firmware bridge over a pty with the simulated MCU.

- ``frames_per_s``: SENSOR frames with ~64-byte payloads sent as fast as the simulator can,
  received and decoded by the link (``payload_bytes`` says the mean payload size).
- ``rtt_p50_ms`` / ``rtt_p99_ms``: command → acknowledgement, one at a time.
- ``loop_p50_ms`` / ``loop_p99_ms``: window received → a real model (the demo model
  ``digits``: the window drawn as a 32x32 image; a stand-in until the vibration model) → the
  command it decides → acknowledged.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _percentiles(ms: list[float], prefix: str) -> dict[str, float]:
    p50, p99 = np.percentile(np.asarray(ms), [50, 99])
    return {f"{prefix}_p50_ms": round(float(p50), 3), f"{prefix}_p99_ms": round(float(p99), 3)}


def window_image(samples: list[int]) -> np.ndarray:
    """A window as a 32x32 grey image for the digits model: the outer product of the samples."""
    v = np.resize(np.asarray(samples, np.float32), 32)
    img = np.abs(np.outer(v, v))
    return (255 * img / max(float(img.max()), 1.0)).astype(np.uint8)[None, ..., None]


def bench_serial(seconds: float = 2.0, engine: Any = None) -> dict[str, Any]:
    from edgeloop.firmware_bridge.closed_loop import ClosedLoop
    from edgeloop.firmware_bridge.link import LinkConfig, McuLink
    from edgeloop.firmware_bridge.sim_process import SimProcess

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-serial-") as tmp:
        sim = SimProcess(Path(tmp), "--rate", "0", "--window", "10")
        link = McuLink(LinkConfig(str(sim.link), queue_size=100_000)).start()
        try:
            if not link.wait_ready(10):
                raise RuntimeError(f"bench serial: no session with the simulated MCU ({link.stats()})")
            time.sleep(0.3)
            start_frames, start = link.stats()["frames"], time.perf_counter()
            sizes = []
            time.sleep(seconds)
            frames = link.stats()["frames"] - start_frames
            elapsed = time.perf_counter() - start
            import msgpack
            while not link.sensor.empty() and len(sizes) < 1000:
                w = link.sensor.get_nowait()
                sizes.append(len(msgpack.packb({k: w[k] for k in ("stream", "n", "t", "samples")})))
            result.update(frames_per_s=round(frames / elapsed, 1), payload_bytes=round(float(np.mean(sizes)), 1),
                          rejected=sum(link.stats()["rejected"].values()))
        finally:
            link.stop()
            sim.close()

        sim = SimProcess(Path(tmp), "--rate", "200")
        link = McuLink(LinkConfig(str(sim.link))).start()
        try:
            link.wait_ready(10)
            rtts = []
            for _ in range(50):
                link.command("ping")  # warm-up
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                t = time.perf_counter()
                link.command("ping")
                rtts.append((time.perf_counter() - t) * 1000.0)
            result.update(_percentiles(rtts, "rtt"), commands=len(rtts))
            if engine is not None:
                model = engine.load("digits")
                scores = model.entry.output.index

                def decide(window: dict[str, Any]) -> tuple[str, dict[str, Any]]:
                    top = int(model.run(window_image(window["samples"]))[scores].argmax())
                    return "motor", {"on": top != 9}  # the decision travels back whatever it is

                while not link.sensor.empty():
                    link.sensor.get_nowait()
                loop = ClosedLoop(link, decide).run(seconds)
                result.update({k: v for k, v in loop.items() if k.startswith("loop_")},
                              loop_windows=loop["windows"])
        finally:
            link.stop()
            sim.close()
    return result
