"""``edgeloop bench flood``: what a request flood costs the camera.

One agent (the embedded demo's camera at ``fps``, no MCU) on a Mosquitto of the bench's own. In
``rounds`` pairs of windows side by side: a quiet window, then a window in which another process
publishes ``rate`` inference requests a second (QoS 0, a real digit PNG, one response topic, as
one misbehaving asker would) on the device's ``req/infer``.

- ``served_p99_ratio``: the camera's served p99 in the flood window ÷ the quiet window's
  (median of the rounds); ``served_p99_ms_*`` both medians.
- ``flood_rate``: requests/s the device received in the flood window (answered, refused by the
  rate limit, failed or unanswerable), median; ``offered_rate`` what the flooder sent.
- ``answered_per_s`` and ``rate_limited_per_s`` in the flood window (medians).
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _flooder(port: int, request_topic: str, reply_topic: str, rate: float, seconds: float, sent: Any) -> None:
    """In its own process: ``rate`` requests/s for ``seconds``, paced in 10 ms slices."""
    import msgpack
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from edgeloop.runtime.agent.camera import bundled_samples

    payload = msgpack.packb({"task": "digits", "input": (bundled_samples() / "digit_3.png").read_bytes(),
                             "kind": "png"}, use_bin_type=True)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = b"flood"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-flooder", protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    n = 0
    start = time.monotonic()
    end = start + seconds
    while (now := time.monotonic()) < end:
        due = int((now - start) * rate)
        while n < due:
            client.publish(request_topic, payload, qos=0, properties=props)
            n += 1
        time.sleep(0.01)
    sent.value = n
    client.loop_stop()
    client.disconnect()


def bench_flood(rounds: int = 5, fps: float = 100.0, rate: float = 10_000.0, window_s: float = 5.0,
                progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.agent import Agent, load_config
    from edgeloop.runtime.engine import Engine, EngineConfig
    from edgeloop.sync.topics import topic
    from edgeloop.tools.testing.mosquitto import Mosquitto

    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-flood-"))
    broker = Mosquitto(workdir).start()
    samples: list[tuple[float, float]] = []
    rows: list[dict[str, float]] = []
    spawn = multiprocessing.get_context("spawn")
    try:
        with Engine(EngineConfig(num_threads=1), ModelStore()) as engine:
            config = load_config(environ={"EDGELOOP_DATA_DIR": str(workdir / "device"), "EDGELOOP_METRICS_PORT": "-1",
                                          "EDGELOOP_STATUS_EVERY_S": "3600"})
            config = replace(config, device="bench-1", fleet="bench", broker=f"127.0.0.1:{broker.port}",
                             camera=replace(config.camera, fps=fps, index_every=0),
                             mcu=replace(config.mcu, enabled=False))
            agent = Agent(config, engine)
            answered = agent.answered

            def noted(inference: Any) -> None:
                samples.append((time.monotonic(), inference.served.latency_ms))
                answered(inference)

            agent.answered = noted  # type: ignore[method-assign]  (before start: the camera stage takes this one)
            agent.start()
            try:
                deadline = time.monotonic() + 20
                while not (agent.responder and agent.responder.connected.is_set()) and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(2.0)  # past the first frames and the model's warm-up
                r = agent.responder
                for k in range(1, rounds + 1):
                    quiet_start = time.monotonic()
                    time.sleep(window_s)
                    quiet_end = time.monotonic()
                    sent = spawn.Value("q", 0)
                    flooder = spawn.Process(target=_flooder, args=(
                        broker.port, topic("bench", "bench-1", "req/infer"), topic("bench", "bench-1", "res/flooder"),
                        rate, window_s + 1.0, sent))
                    flooder.start()
                    time.sleep(1.0)  # the flooder's interpreter starting is not the flood
                    flood_start = time.monotonic()
                    at_start = (r.answered, r.rate_limited, r.failed, r.unanswerable)
                    time.sleep(window_s)
                    flood_end = time.monotonic()
                    got = sum((r.answered, r.rate_limited, r.failed, r.unanswerable)) - sum(at_start)
                    flooder.join(30)
                    time.sleep(1.0)  # the broker's queue drained before the next quiet window
                    quiet = [ms for t, ms in samples if quiet_start <= t <= quiet_end]
                    flood = [ms for t, ms in samples if flood_start <= t <= flood_end]
                    span = flood_end - flood_start
                    row = {"p99_quiet": float(np.percentile(quiet, 99)), "p99_flood": float(np.percentile(flood, 99)),
                           "flood_rate": got / span, "offered_rate": sent.value / (window_s + 1.0),
                           "answered_per_s": (r.answered - at_start[0]) / span,
                           "rate_limited_per_s": (r.rate_limited - at_start[1]) / span,
                           "frames_quiet": len(quiet), "frames_flood": len(flood)}
                    rows.append(row)
                    progress(f"round {k}: served p99 {row['p99_flood']:.2f} ms under {row['flood_rate']:.0f} req/s "
                             f"(quiet {row['p99_quiet']:.2f} ms); answered {row['answered_per_s']:.0f}/s, "
                             f"rate-limited {row['rate_limited_per_s']:.0f}/s")
            finally:
                agent.stop()
    finally:
        broker.stop(kill=True)
        shutil.rmtree(workdir, ignore_errors=True)

    def median(key: str) -> float:
        return round(float(np.median([r[key] for r in rows])), 3)

    return {
        "rounds": rounds, "fps": fps, "rate": rate, "window_s": window_s,
        "served_p99_ms_quiet": median("p99_quiet"), "served_p99_ms_flood": median("p99_flood"),
        "served_p99_ratio": round(float(np.median([r["p99_flood"] / r["p99_quiet"] for r in rows])), 3),
        "served_p99_ratio_rounds": [round(r["p99_flood"] / r["p99_quiet"], 3) for r in rows],
        "flood_rate": median("flood_rate"), "offered_rate": median("offered_rate"),
        "answered_per_s": median("answered_per_s"), "rate_limited_per_s": median("rate_limited_per_s"),
        "frames_per_window": median("frames_flood"),
    }
