"""``edgeloop bench agent``: the device agent end to end.

- ``startup_to_first_result_s``: ``edgeloop run`` started as a process → its first inference
  (the log line), then ``max_rss_mb`` of that process over its run.
- ``inferences_per_s``: the camera unthrottled with the MCU loop running; each
  inference is stored durably in the outbox.
- ``loop_p50_ms`` / ``loop_p99_ms``: MCU window received → decision → command acknowledged.
- ``p99_ratio_busy``: the model's invoke p99 while the outbox drains to a Mosquitto and the
  retrieval index takes writes in the same process, ÷ its p99 alone (goal ≤ 1.2).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _startup(workdir: Path) -> dict[str, float]:
    env = {**os.environ, "EDGELOOP_METRICS_PORT": "0", "EDGELOOP_DATA_DIR": str(workdir / "startup")}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop.tools.cli", "run", "--duration", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    first = None
    for line in proc.stderr:
        if first is None and "first result" in line:
            first = time.monotonic() - start
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if first is None or proc.returncode != 0:
        raise RuntimeError(f"bench agent: the agent did not produce a result (exit {proc.returncode})")
    return {"startup_to_first_result_s": round(first, 3), "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _throughput(workdir: Path, engine: Any, seconds: float) -> dict[str, Any]:
    from dataclasses import replace

    from edgeloop.runtime.agent import Agent, load_config

    config = load_config(environ={"EDGELOOP_DATA_DIR": str(workdir / "throughput"), "EDGELOOP_METRICS_PORT": "-1",
                                  "EDGELOOP_STATUS_EVERY_S": "3600"})
    config = replace(config, camera=replace(config.camera, fps=1e6), mcu=replace(config.mcu, anomaly_every_s=0.5))
    agent = Agent(config, engine).start()
    try:
        time.sleep(1.0)
        n0, t0 = agent.inferences, time.monotonic()
        time.sleep(seconds)
        rate = (agent.inferences - n0) / (time.monotonic() - t0)
        loop = agent.loop.figures()
    finally:
        agent.stop()
    return {"inferences_per_s": round(rate, 1), **{k: v for k, v in loop.items() if k.startswith("loop_")},
            "loop_commands": loop["commands"]}


def _interference(workdir: Path, engine: Any, runs: int) -> dict[str, float]:
    from PIL import Image

    from edgeloop.runtime.agent.agent import bundled_samples
    from edgeloop.runtime.retrieval import VectorIndex
    from edgeloop.sync.link import LinkConfig, MqttLink
    from edgeloop.sync.mosquitto import Mosquitto
    from edgeloop.sync.outbox import Outbox

    model = engine.load("digits")
    image = model.prepare(Image.open(sorted(bundled_samples().glob("*.png"))[0]))

    def p99() -> float:
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            model.run(image)
            samples.append(time.perf_counter() - start)
        return float(np.percentile(samples, 99)) * 1000.0

    alone = p99()
    broker = Mosquitto(workdir).start()
    box = Outbox(workdir / "busy.db", "bench")
    for _ in range(20):
        box.enqueue_many([("s", {"pad": "x" * 190})] * 5000)
    link = MqttLink(box, LinkConfig("127.0.0.1", broker.port, device="bench"))
    index = VectorIndex(workdir / "busy-index.db")
    collection = index.create("c", 64)
    stop = threading.Event()

    def writer() -> None:
        k = 0
        while not stop.is_set():
            collection.upsert([f"{k}-{i}" for i in range(100)], np.random.rand(100, 64))
            k += 1

    link.start()
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        while link.stats()["delivered_records"] == 0:
            time.sleep(0.01)
        busy = p99()
    finally:
        stop.set()
        t.join()
        link.stop()
        box.close()
        index.close()
        broker.stop(kill=True)
    return {"invoke_p99_alone_ms": round(alone, 4), "invoke_p99_busy_ms": round(busy, 4),
            "p99_ratio_busy": round(busy / alone, 2)}


def bench_agent(engine: Any, seconds: float = 3.0, runs: int = 3000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-agent-") as tmp:
        workdir = Path(tmp)
        result: dict[str, Any] = _startup(workdir)
        result.update(_throughput(workdir, engine, seconds))
        result.update(_interference(workdir, engine, runs))
    return result
