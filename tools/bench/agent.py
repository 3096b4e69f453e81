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
  (goal ≤ 1.2): the median of ``rounds`` measured side by side; ``p99_ratio_busy_mobilenet``
  the same for a camera-sized model from ``--shared`` (MobileNet v1 0.25, about 0.6 ms). The
  interpreter uses the agent's threads (every core but one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
    rate). With ``worker``, an embedding goes to its index every 5 ms between invokes (200
    vectors/s, 40 times what the demo camera sends; not waited for); only the invoke is timed."""
    samples = []
    vector = np.random.rand(64).astype(np.float32)
    end = time.perf_counter() + seconds
    next_vector = 0.0
    while (start := time.perf_counter()) < end:
        model.run(source)
        done = time.perf_counter()
        samples.append(done - start)
        if worker is not None and done >= next_vector:
            worker.index_add("frames", "bench", "1", [str(len(samples))], [vector])
            next_vector = done + 0.005
    return float(np.percentile(samples, 99)) * 1000.0


def _interference(workdir: Path, engine: Any, seconds: float, models: dict[str, Any],
                  rounds: int = 3) -> dict[str, Any]:
    """The agent's arrangement: each model invoked in this process (``_invoke_p99``) alone,
    then while the sync worker (a niced child) drains a backlog to a real Mosquitto at the
    agent's default cap and writes the index; ``rounds`` times, alone and busy side by side,
    for a median of the per-round ratios (this machine is shared and noisy)."""
    from edgeloop.runtime.agent import AgentConfig
    from edgeloop.sync.worker import SyncSettings, SyncWorker
    from edgeloop.tools.testing.mosquitto import Mosquitto
    from edgeloop.sync.outbox import Outbox

    loaded = {name: (engine.load(ref), source) for name, (ref, source) in models.items()}
    prepared = {name: (m, m.prepare(source)) for name, (m, source) in loaded.items()}
    # The broker stands for the device-local one of tools/deploy/mosquitto-bridge.conf, run
    # at Nice=10 as that file says (at the default priority: 1.03-1.24x, measured).
    broker = Mosquitto(workdir).start(nice=10)
    cap = AgentConfig().drain_per_s  # the agent's default
    backlog = int(cap * seconds * len(models) * rounds / 5000) + 20  # x 5,000 records: more than it drains
    with Outbox(workdir / "busy" / "outbox.db", "bench") as prefill:
        for _ in range(backlog):
            prefill.enqueue_many([("backlog", {"pad": "x" * 190})] * 5000)
    ratios: dict[str, list[float]] = {name: [] for name in models}
    alone: dict[str, list[float]] = {name: [] for name in models}
    busy: dict[str, list[float]] = {name: [] for name in models}
    drained = indexed = 0
    elapsed = 0.0
    try:
        for _ in range(rounds):
            for name, (m, x) in prepared.items():
                alone[name].append(_invoke_p99(m, x, seconds))
            worker = SyncWorker(SyncSettings(str(workdir / "busy"), "bench", "bench",
                                             broker=f"127.0.0.1:{broker.port}", drain_per_s=cap))
            try:
                while (worker.stats()["link"] or {}).get("delivered_records", 0) == 0:
                    time.sleep(0.01)
                before = worker.stats()
                start = time.monotonic()
                for name, (m, x) in prepared.items():
                    busy[name].append(_invoke_p99(m, x, seconds, worker))
                elapsed += time.monotonic() - start
                after = worker.stats()
            finally:
                worker.close()
            drained += after["link"]["delivered_records"] - before["link"]["delivered_records"]
            indexed += after["index"].get("frames", 0) - before["index"].get("frames", 0)
            if not after["streams"].get("backlog", {}).get("rows"):
                raise RuntimeError("bench agent: the backlog ran out during the measurement")
            for name in models:
                ratios[name].append(busy[name][-1] / alone[name][-1])
    finally:
        broker.stop(kill=True)
    if not drained or not indexed:
        raise RuntimeError(f"bench agent: the load did not run (drained {drained}, indexed {indexed})")
    result: dict[str, Any] = {"inference_threads": engine.config.num_threads,
                              "busy_drained_per_s": round(drained / elapsed),
                              "busy_indexed_per_s": round(indexed / elapsed)}
    for name in models:
        suffix = "" if name == "digits" else f"_{name}"
        result.update({f"invoke_p99_alone_ms{suffix}": round(float(np.median(alone[name])), 4),
                       f"invoke_p99_busy_ms{suffix}": round(float(np.median(busy[name])), 4),
                       f"p99_ratio_busy{suffix}": round(float(np.median(ratios[name])), 2),
                       f"p99_ratio_busy_rounds{suffix}": [round(r, 2) for r in ratios[name]]})
    return result


def bench_agent(engine: Any, seconds: float = 3.0, shared: Path | None = None, rounds: int = 5) -> dict[str, Any]:
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
        result.update(_interference(workdir, engine, seconds, models, rounds))
    return result
