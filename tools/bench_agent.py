"""``edgeloop bench agent``: the device agent end to end.

- ``startup_to_first_result_s``: ``edgeloop run`` started as a process → its first inference
  (the log line), then ``max_rss_mb``, the largest of that process and its children over the
  run (``ru_maxrss``), and ``rss_with_children_mb``, the agent, sync worker and simulated MCU
  together once all are up.
- ``inferences_per_s``: the camera unthrottled with the MCU loop running; each
  inference is stored durably in the outbox.
- ``loop_p50_ms`` / ``loop_p99_ms``: MCU window received → decision → command acknowledged.
- ``p99_ratio_busy``: the demo camera model's invoke p99 (tens of µs) while the agent's sync
  worker drains the outbox to a Mosquitto and writes the retrieval index, ÷ its p99 alone
  (goal ≤ 1.2); ``p99_ratio_busy_mobilenet`` the same for a camera-sized model from
  ``--shared`` (MobileNet v1 0.25, about 0.6 ms). The interpreter uses the agent's threads
  (every core but one).
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
    rss_total = 0.0
    for line in proc.stderr:
        if first is None and "first result" in line:
            first = time.monotonic() - start
        if "serial: session with" in line and not rss_total:  # all up: the agent, its sync worker, the MCU
            rss_total = _tree_rss_mb(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if first is None or proc.returncode != 0:
        raise RuntimeError(f"bench agent: the agent did not produce a result (exit {proc.returncode})")
    return {"startup_to_first_result_s": round(first, 3), "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "rss_with_children_mb": round(rss_total, 1)}


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the sync worker, the simulated MCU)."""
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for p in [pid, *map(int, children)]:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    except OSError:  # not Linux, or a child already gone
        pass
    return total


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


def _invoke_p99(model: Any, source: Any, seconds: float, worker: Any = None) -> float:
    """The model's invoke p99 (ms) over ``seconds`` of invoking back to back (a camera at full
    rate). With ``worker``, every 25th result's embedding goes to its index, as the agent's
    camera sends one frame in 25 (not waited for); only the invoke is timed."""
    samples = []
    vector = np.random.rand(64).astype(np.float32)
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        model.run(source)
        samples.append(time.perf_counter() - start)
        if worker is not None and len(samples) % 25 == 0:
            worker.index_add("frames", "bench", "1", [str(len(samples))], [vector])
    return float(np.percentile(samples, 99)) * 1000.0


def _interference(workdir: Path, engine: Any, seconds: float, models: dict[str, Any]) -> dict[str, Any]:
    """The agent's arrangement: each model invoked in this process (``_invoke_p99``) alone,
    then while the sync worker (a niced child) drains a backlog to a real Mosquitto at the
    agent's default cap and writes the index."""
    from edgeloop.runtime.agent import AgentConfig
    from edgeloop.runtime.agent.sync_worker import SyncSettings, SyncWorker
    from edgeloop.sync.mosquitto import Mosquitto
    from edgeloop.sync.outbox import Outbox

    loaded = {name: (engine.load(ref), source) for name, (ref, source) in models.items()}
    prepared = {name: (m, m.prepare(source)) for name, (m, source) in loaded.items()}
    alone = {name: _invoke_p99(m, x, seconds) for name, (m, x) in prepared.items()}
    broker = Mosquitto(workdir).start()
    backlog = int(seconds * len(models) * 60) + 20  # x 5,000 records: more than it drains meanwhile
    with Outbox(workdir / "busy" / "outbox.db", "bench") as prefill:
        for _ in range(backlog):
            prefill.enqueue_many([("backlog", {"pad": "x" * 190})] * 5000)
    worker = SyncWorker(SyncSettings(str(workdir / "busy"), "bench", "bench", broker=f"127.0.0.1:{broker.port}",
                                     drain_per_s=AgentConfig().drain_per_s))  # the agent's default cap
    try:
        while (worker.stats()["link"] or {}).get("delivered_records", 0) == 0:
            time.sleep(0.01)
        before = worker.stats()
        start = time.monotonic()
        busy = {name: _invoke_p99(m, x, seconds, worker) for name, (m, x) in prepared.items()}
        elapsed = time.monotonic() - start
        after = worker.stats()
    finally:
        worker.close()
        broker.stop(kill=True)
    drained = after["link"]["delivered_records"] - before["link"]["delivered_records"]
    if not drained or not after["index"].get("frames") or not after["streams"].get("backlog", {}).get("rows"):
        raise RuntimeError(f"bench agent: the load did not last the measurement (drained {drained}, "
                           f"index {after['index']}, backlog left {after['streams'].get('backlog')})")
    result: dict[str, Any] = {"inference_threads": engine.config.num_threads,
                              "busy_drained_per_s": round(drained / elapsed),
                              "busy_indexed_per_s": round(after["index"]["frames"] / elapsed)}
    for name in models:
        suffix = "" if name == "digits" else f"_{name}"
        result.update({f"invoke_p99_alone_ms{suffix}": round(alone[name], 4),
                       f"invoke_p99_busy_ms{suffix}": round(busy[name], 4),
                       f"p99_ratio_busy{suffix}": round(busy[name] / alone[name], 2)})
    return result


def bench_agent(engine: Any, seconds: float = 3.0, shared: Path | None = None) -> dict[str, Any]:
    """``shared``: with ``models/coral`` and ``images`` there, the interference is also measured
    on a camera-sized model (MobileNet v1 0.25, 128 px)."""
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-agent-") as tmp:
        workdir = Path(tmp)
        result: dict[str, Any] = _startup(workdir)
        result.update(_throughput(workdir, engine, seconds))
        from PIL import Image

        from edgeloop.runtime.agent.agent import bundled_samples

        models: dict[str, Any] = {"digits": ("digits", Image.open(sorted(bundled_samples().glob("*.png"))[0]))}
        mobilenet = shared / "models" / "coral" / "mobilenet_v1_0.25_128_quant.tflite" if shared else None
        photos = sorted((shared / "images").glob("*.bmp")) if shared else []
        if mobilenet is not None and mobilenet.exists() and photos:
            models["mobilenet"] = (str(mobilenet), Image.open(photos[0]).convert("RGB"))
        result.update(_interference(workdir, engine, seconds, models))
    return result
