"""``edgeloop bench agent``: the device agent end to end, its figures side by side in one run.

- ``startup_to_first_result_s``: ``edgeloop run`` started as a process → its first inference
  (the log line), the median of 5 starts. ``agent_rss_mb``: that process's peak resident memory (VmHWM) over the run;
  ``max_rss_mb``: the largest of it and its children (``ru_maxrss``); ``rss_with_children_mb``:
  the agent, sync worker and simulated MCU together once all are up.
- ``inferences_per_s``: the camera unthrottled with the MCU loop running; ``confirmed_per_s``:
  of those, records confirmed durable by the outbox per second; ``unconfirmed_max_records`` and
  ``unconfirmed_max_ms``: the most records accepted and not yet durable, and the age of the
  oldest of them, sampled every 10 ms: what a kill -9 could lose. ``loop_p50_ms`` /
  ``loop_p99_ms``: MCU window received → decision → command acknowledged.
- ``per_frame_cost_us``: the agent's work on a frame beyond the model's (p50 of a frame through
  the camera stage's path, ``serve`` + decisions + sinks, minus p50 of ``model.run`` on the same
  tensor), in alternating blocks; ``frame_p50_us`` and ``invoke_p50_us`` are the two.
- ``mobilenet_*``: the agent's camera on MobileNet v1 0.25 (128 px, from ``--shared``) over the
  shared photos against an engine-only loop over the same frames (``run_frame``: the fused
  preprocess into the tensor, invoke, top-1) with the same threads: ``mobilenet_ratio`` = agent ÷
  engine.
- ``slow_fsync_*``: the camera's served p99 with the sync worker's ``fsync``/``fdatasync``
  delayed 50 ms (strace fault injection) ÷ without, in ``rounds`` pairs of windows of one agent;
  and that every record confirmed durable is in the outbox afterwards.
- ``p99_ratio_busy``: the demo camera model's invoke p99 while the sync worker drains a backlog
  to a Mosquitto and writes the index, ÷ its p99 alone (median of ``rounds``);
  ``p99_ratio_busy_mobilenet`` the same on MobileNet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _first_result_s(workdir: Path) -> float:
    """One more start of ``edgeloop run``: process start → its first result, then SIGTERM."""
    import signal

    env = {**os.environ, "EDGELOOP_METRICS_PORT": "-1", "EDGELOOP_DATA_DIR": str(workdir / "startup")}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop.tools.cli", "run", "--duration", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    first = float("nan")
    assert proc.stderr is not None
    for line in proc.stderr:
        if "first result" in line:
            first = time.monotonic() - start
            proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    return first


def _startup(workdir: Path, starts: int = 5) -> dict[str, Any]:
    """The memory figures from one full run; the start-up time a median over ``starts`` starts
    (one start is as noisy as the machine)."""
    env = {**os.environ, "EDGELOOP_METRICS_PORT": "0", "EDGELOOP_DATA_DIR": str(workdir / "startup")}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop.tools.cli", "run", "--duration", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    first = None
    rss_total = 0.0
    hwm = [0.0]
    stop = threading.Event()

    def watch() -> None:  # the agent's own peak, read while it runs (VmHWM is gone at exit)
        while not stop.wait(0.1):
            hwm[0] = max(hwm[0], _status_kb(proc.pid, "VmHWM") / 1024)

    threading.Thread(target=watch, daemon=True).start()
    for line in proc.stderr:
        if first is None and "first result" in line:
            first = time.monotonic() - start
        if "serial: session with" in line and not rss_total:  # all up: the agent, its sync worker, the MCU
            rss_total = _tree_rss_mb(proc.pid)
    stop.set()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if first is None or proc.returncode != 0:
        raise RuntimeError(f"bench agent: the agent did not produce a result (exit {proc.returncode})")
    times = [first, *(_first_result_s(workdir) for _ in range(starts - 1))]
    return {"startup_to_first_result_s": round(float(np.median(times)), 3),
            "startup_to_first_result_runs_s": [round(t, 3) for t in times], "agent_rss_mb": round(hwm[0], 1),
            "max_rss_mb": round(usage.ru_maxrss / 1024, 1), "rss_with_children_mb": round(rss_total, 1)}


def _status_kb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the sync worker, the simulated MCU)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # not Linux, or already gone
        return 0.0
    return sum(_status_kb(p, "VmRSS") for p in [pid, *map(int, children)]) / 1024


def _agent(workdir: Path, name: str, engine: Any, camera: dict[str, Any], mcu: bool = True) -> Any:
    from edgeloop.runtime.agent import Agent, load_config

    config = load_config(environ={"EDGELOOP_DATA_DIR": str(workdir / name), "EDGELOOP_METRICS_PORT": "-1",
                                  "EDGELOOP_STATUS_EVERY_S": "3600"})
    config = replace(config, camera=replace(config.camera, **camera),
                     mcu=replace(config.mcu, enabled=mcu, anomaly_every_s=0.5))
    return Agent(config, engine).start()


def _sampled(agent: Any, seconds: float) -> dict[str, Any]:
    """Answers/s, confirmed records/s and the unconfirmed window over ``seconds`` of a running agent."""
    time.sleep(1.0)  # warm: the ladder's prober, the worker's first commits
    records = agent.records
    n0, c0, t0 = agent.inferences, records.confirmed.get("inferences", 0), time.monotonic()
    most, oldest = 0, 0.0
    end = t0 + seconds
    while time.monotonic() < end:
        most = max(most, records.pending())
        oldest = max(oldest, records.queue.oldest_age_s())
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    return {"inferences_per_s": round((agent.inferences - n0) / elapsed, 1),
            "confirmed_per_s": round((records.confirmed.get("inferences", 0) - c0) / elapsed, 1),
            "unconfirmed_max_records": most, "unconfirmed_max_ms": round(oldest * 1000 + 5.0, 1)}


def _throughput(workdir: Path, engine: Any, seconds: float) -> dict[str, Any]:
    agent = _agent(workdir, "throughput", engine, {"fps": 1e6})
    try:
        result = _sampled(agent, seconds)
        loop = agent.loop.figures()
    finally:
        agent.stop()
    return {**result, **{k: v for k, v in loop.items() if k.startswith("loop_")}, "loop_commands": loop["commands"]}


def _alternate(a: Callable[[], Any], b: Callable[[], Any], seconds: float, block: int = 20) -> tuple[float, float]:
    """p50 (µs) of ``a`` and of ``b``, timed in alternating blocks (noise hits both alike)."""
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(block * 5):
        a(), b()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(ta) < 200:
        for fn, out in ((a, ta), (b, tb)):
            for _ in range(block):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return float(np.median(ta)) * 1e6, float(np.median(tb)) * 1e6


def _per_frame(workdir: Path, engine: Any, seconds: float) -> dict[str, Any]:
    """The camera stage's path for one frame (its own thread, as in the stage), against the
    model's run on the same tensor."""
    from edgeloop.runtime.prepared import PreparedFrame

    agent = _agent(workdir, "per-frame", engine, {"fps": 0.01}, mcu=False)  # the stage idles; we drive
    try:
        part = agent.camera
        frame = part.source.read()
        model = part.primary
        x = PreparedFrame(frame.pixels, frame.fmt).tensor_for(model)
        frame_us, invoke_us = _alternate(lambda: agent.answered(part.serve(frame, frame.name, 1, inline=True)),
                                         lambda: model.run(x), seconds)
    finally:
        agent.stop()
    return {"per_frame_cost_us": round(frame_us - invoke_us, 1), "frame_p50_us": round(frame_us, 1),
            "invoke_p50_us": round(invoke_us, 1)}


def _mobilenet(workdir: Path, engine: Any, shared: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """The agent's camera on MobileNet v1 0.25 against the engine's own loop, same threads."""
    from edgeloop.models.store import ModelStore, sha256_of
    from edgeloop.runtime.engine import Engine
    shared = shared.resolve()  # the manifest below names files by absolute path
    model_file = shared / "models" / "coral" / "mobilenet_v1_0.25_128_quant.tflite"
    photos = sorted((shared / "images").glob("*.bmp"))
    manifest = workdir / "mobilenet.toml"
    manifest.write_text(f'schema = 1\n[models.mobilenet_v1_025]\nversion = "1"\nfile = "{model_file}"\n'
                        f'sha256 = "{sha256_of(model_file)}"\n[models.mobilenet_v1_025.input]\nmean = 128.0\n'
                        f'std = 128.0\n[models.mobilenet_v1_025.output]\ndecode = "classification"\n'
                        f'labels = "{shared / "models" / "coral" / "imagenet_labels.txt"}"\n')
    folder = workdir / "photos"
    folder.mkdir()
    for p in photos:
        shutil.copy(p, folder / p.name)
    with Engine(engine.config, ModelStore([manifest])) as eng:
        m = eng.load("mobilenet_v1_025")
        from edgeloop.runtime.agent.sources.folder import decode

        frames = [decode(p) for p in sorted(folder.iterdir())]  # the camera's frames, decoded once as it does

        def engine_loop(seconds: float) -> float:  # the engine alone: frame in, fused preprocess, invoke, top-1
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                m.decode(m.run_frame(*frames[n % len(frames)]), 1)
                n += 1
            return n / (time.perf_counter() - start)

        engine_loop(0.3)
        camera = {"fps": 1e6, "model": "mobilenet_v1_025", "fallback": "", "folder": str(folder), "alert_labels": ()}
        agent = _agent(workdir, "mobilenet", eng, camera, mcu=False)
        fast, paused = agent.config, replace(agent.config, camera=replace(agent.config.camera, fps=0.01))
        ratios, engine_rates, agent_rates = [], [], []
        try:
            time.sleep(1.0)
            # Side by side, in short alternating windows (the noise here drifts slowly): the agent's
            # camera, then the engine alone while the camera pauses.
            for _ in range(2 * rounds + 1):
                n0, t0 = agent.inferences, time.monotonic()
                time.sleep(seconds / 3)
                agent_rates.append((agent.inferences - n0) / (time.monotonic() - t0))
                agent.config = paused
                time.sleep(0.6)  # the stage waits in slices of 0.5 s; the sinks drain
                engine_rates.append(engine_loop(seconds / 3))
                ratios.append(agent_rates[-1] / engine_rates[-1])
                agent.config = fast
                time.sleep(0.6)
        finally:
            agent.stop()
    return {"mobilenet_engine_per_s": round(float(np.median(engine_rates)), 1),
            "mobilenet_agent_per_s": round(float(np.median(agent_rates)), 1),
            "mobilenet_ratio": round(float(np.median(ratios)), 3),
            "mobilenet_ratio_rounds": [round(r, 3) for r in ratios],
            "mobilenet_all_confirmed": agent.records.confirmed.get("inferences", 0) == agent.inferences}


def _window_p99(agent: Any, seconds: float) -> tuple[float, float]:
    """The camera's served p99 (ms) over ``seconds``, and the oldest record not yet durable (ms)."""
    n0 = agent.inferences
    oldest = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        oldest = max(oldest, agent.records.queue.oldest_age_s() * 1000 + 5.0)
        time.sleep(0.005)
    got = min(agent.inferences - n0, agent.latencies_ms.maxlen or 0)
    return float(np.percentile(list(agent.latencies_ms)[-got:], 99)), oldest


def _slow_fsync(workdir: Path, engine: Any, seconds: float, rounds: int) -> dict[str, Any]:
    """The camera's served p99 with the sync worker's fsync delayed 50 ms ÷ without: one agent,
    ``rounds`` pairs of windows side by side (strace attached for the slow one); then every
    record confirmed durable must be in the outbox."""
    strace = shutil.which("strace")
    if strace is None:
        return {"slow_fsync_skipped": "strace is not installed (Debian: apt-get install strace)"}
    from edgeloop.sync.outbox import Outbox

    agent = _agent(workdir, "fsync", engine, {"fps": 200.0, "index_every": 0}, mcu=False)
    normal: list[float] = []
    slow: list[float] = []
    held = {"normal": 0.0, "slow": 0.0}
    try:
        time.sleep(0.5)
        for _ in range(rounds):
            p99, oldest = _window_p99(agent, seconds / 2)
            normal.append(p99)
            held["normal"] = max(held["normal"], oldest)
            tracer = subprocess.Popen([strace, "-f", "-qq", "-p", str(agent.worker.pid), "-e", "trace=fsync,fdatasync",
                                       "-e", "inject=fsync,fdatasync:delay_enter=50000", "-o", "/dev/null"],
                                      stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.3)  # attached
                p99, oldest = _window_p99(agent, seconds / 2)
                slow.append(p99)
                held["slow"] = max(held["slow"], oldest)
            finally:
                tracer.terminate()
                tracer.wait(10)
    finally:
        agent.stop()
    confirmed = agent.records.confirmed.get("inferences", 0)
    with Outbox(workdir / "fsync" / "outbox.db", "bench") as box:
        stored = box.stats()["streams"].get("inferences", {}).get("rows", 0)
    ratios = [b / a for a, b in zip(normal, slow)]
    return {"slow_fsync_normal_p99_ms": round(float(np.median(normal)), 3),
            "slow_fsync_slow_p99_ms": round(float(np.median(slow)), 3),
            "slow_fsync_p99_ratio": round(float(np.median(ratios)), 3),
            "slow_fsync_p99_ratio_rounds": [round(r, 3) for r in ratios],
            "slow_fsync_normal_unconfirmed_max_ms": round(held["normal"], 1),
            "slow_fsync_slow_unconfirmed_max_ms": round(held["slow"], 1),
            "slow_fsync_confirmed_lost": max(0, confirmed - stored)}


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
    from edgeloop.sync.outbox import Outbox
    from edgeloop.sync.worker import SyncSettings, SyncWorker
    from edgeloop.tools.testing.mosquitto import Mosquitto

    from .sync import receiver_process

    loaded = {name: (engine.load(ref), source) for name, (ref, source) in models.items()}
    prepared = {name: (m, m.prepare(source)) for name, (m, source) in loaded.items()}
    # The broker stands for the device-local one of tools/deploy/mosquitto-bridge.conf, run
    # at Nice=10 as that file says (at the default priority: 1.03-1.24x, measured).
    broker = Mosquitto(workdir).start(nice=10)
    # The regional tier that commits and acknowledges (another machine in the field; here a
    # process of its own, niced like the broker so that it takes what inference leaves).
    receiver = receiver_process(str(workdir / "regional.db"), broker.port, "bench-agent-rx", nice=10)
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
        receiver.terminate()
        receiver.wait(30)
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
    """``shared``: with ``models/coral`` and ``images`` there, the camera-sized model's figures
    (MobileNet v1 0.25, 128 px) too."""
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-agent-") as tmp:
        workdir = Path(tmp)
        result: dict[str, Any] = _startup(workdir)
        result.update(_throughput(workdir, engine, seconds))
        result.update(_per_frame(workdir, engine, seconds))
        result.update(_slow_fsync(workdir, engine, seconds, rounds))
        from PIL import Image

        from edgeloop.runtime.agent.camera import bundled_samples

        models: dict[str, Any] = {"digits": ("digits", Image.open(sorted(bundled_samples().glob("*.png"))[0]))}
        mobilenet = shared / "models" / "coral" / "mobilenet_v1_0.25_128_quant.tflite" if shared else None
        photos = sorted((shared / "images").glob("*.bmp")) if shared else []
        if shared is not None and mobilenet is not None and mobilenet.exists() and photos:
            models["mobilenet"] = (str(mobilenet), Image.open(photos[0]).convert("RGB"))
            result.update(_mobilenet(workdir, engine, shared, seconds, rounds))
        result.update(_interference(workdir, engine, seconds, models, rounds))
    return result
