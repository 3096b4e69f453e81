"""``edgeloop bench rollout``: what a rollout costs the camera that keeps serving through it.

One agent (the embedded demo's camera at ``fps``, no MCU) on a Mosquitto and a TUF repository
on a loopback HTTP server of the bench's own. In ``rounds`` pairs of windows side by side: a
steady window of the same length as the rollout window, then a rollout of the bundled digits
model released again under a new version (the same file: what is measured is the rollout's
machinery, not another model), from the document's publication to its commit: the refresh,
the fetch into the standby slot, the golden set, the switch through the router, the probation.

- ``served_p99_ratio``: the camera's served p99 during the rollout window ÷ the steady
  window's (median of the rounds); ``served_p99_ms_*`` both medians.
- ``max_gap_ms_*``: the longest time between two answers in each window (median of the rounds;
  the frame period is ``1000 / fps``); ``gap_ratio`` = rollout ÷ steady.
- ``rollout_s``: publication → committed (median); ``switch_s``: publication → the switch;
  ``committed``: rounds that committed. ``served_p99_ms_until_switch``: the served p99 from the
  publication to just after the switch (the refresh, fetch, model load and golden set share the
  cores with the camera then); ``served_max_ms_rollout``: the slowest answer of the window.
- The steady window starts once the old slot has been closed (``RETIRE_AFTER_S``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _window(samples: list[tuple[float, float]], start: float, end: float) -> tuple[float, float]:
    """(served p99 ms, longest gap between answers ms) of the answers in [start, end]."""
    inside = [(t, ms) for t, ms in samples if start <= t <= end]
    if len(inside) < 2:
        return float("nan"), float("nan")
    times = np.asarray([start] + [t for t, _ in inside] + [end])
    return float(np.percentile([ms for _, ms in inside], 99)), float(np.max(np.diff(times)) * 1000.0)


def bench_rollout(rounds: int = 5, fps: float = 200.0, probation_s: float = 10.0,
                  progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    from edgeloop.models.store import BUNDLED_MANIFEST, ModelStore
    from edgeloop.runtime.agent import Agent, load_config
    from edgeloop.runtime.agent.rollout_deploy import RETIRE_AFTER_S
    from edgeloop.runtime.agent.config import RolloutConfig
    from edgeloop.runtime.engine import Engine, EngineConfig
    from edgeloop.sync.bundle import ProbationSpec
    from edgeloop.sync.rollout_doc import RolloutDoc
    from edgeloop.tools.fleet.view import FleetView
    from edgeloop.tools.release.bundle import make_bundle, reversioned
    from edgeloop.tools.release.repository import ReleaseRepository
    from edgeloop.tools.testing.bundle_server import BundleServer
    from edgeloop.tools.testing.mosquitto import Mosquitto
    from edgeloop.sync.mqtt_client import BrokerConfig

    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-rollout-"))
    broker = Mosquitto(workdir).start()
    samples: list[tuple[float, float]] = []
    rows: list[dict[str, float]] = []
    try:
        repo = ReleaseRepository(workdir / "repo", workdir / "keys")
        repo.init(["bench"])
        root = workdir / "root.json"
        shutil.copyfile(repo.metadata / "root.json", root)
        probation = ProbationSpec(window_s=probation_s, min_requests=int(fps * probation_s / 2), max_error_rate=0.05,
                                  max_stepdowns=2)
        with BundleServer(repo.repo) as server, Engine(EngineConfig(num_threads=1), ModelStore()) as engine:
            config = load_config(environ={"EDGELOOP_DATA_DIR": str(workdir / "device"), "EDGELOOP_METRICS_PORT": "-1",
                                          "EDGELOOP_STATUS_EVERY_S": "3600"})
            config = replace(config, device="bench-1", fleet="bench", group="bench", broker=f"127.0.0.1:{broker.port}",
                             camera=replace(config.camera, fps=fps, index_every=0),
                             mcu=replace(config.mcu, enabled=False),
                             rollout=RolloutConfig(repo_url=server.url, root=str(root), retry_s=1.0))
            agent = Agent(config, engine)
            answered = agent.answered

            def noted(inference: Any) -> None:
                samples.append((time.monotonic(), inference.served.latency_ms))
                answered(inference)

            agent.answered = noted  # type: ignore[method-assign]  (before start: the camera stage takes this one)
            agent.start()
            view = FleetView(BrokerConfig("127.0.0.1", broker.port), "bench", "bench-operator")
            try:
                view.settle()
                time.sleep(2.0)  # past the first frames and the model's warm-up
                for k in range(1, rounds + 1):
                    version = f"1.0.{k}"
                    folder = workdir / f"bundle-{version}"
                    manifest = reversioned(BUNDLED_MANIFEST, "digits", version, workdir / f"manifest-{version}.toml")
                    spec = make_bundle(manifest, "digits", folder, probation)
                    repo.add_bundle("bench", spec, folder)
                    repo.publish()
                    started = time.monotonic()
                    view.publish("bench", RolloutDoc(f"bench-{k}", "digits", version, 100.0, "bench"))
                    deadline = started + 60.0
                    switched_at = None
                    while time.monotonic() < deadline:
                        s = agent.rollout.store.state if agent.rollout else None
                        if switched_at is None and s is not None and s.state == "probation":
                            switched_at = time.monotonic() - started
                        if s is not None and s.state in ("committed", "rolled_back", "failed") and s.target == version:
                            break
                        time.sleep(0.01)
                    ended = time.monotonic()
                    state = agent.rollout.store.state.state if agent.rollout else "none"
                    time.sleep(RETIRE_AFTER_S + 0.5)  # the old slot closed: not in the steady window
                    steady_start = time.monotonic()
                    time.sleep(ended - started)
                    steady_end = time.monotonic()
                    p99_roll, gap_roll = _window(samples, started, ended)
                    p99_stage, _ = _window(samples, started, started + (switched_at or 0.0) + 0.05)
                    p99_steady, gap_steady = _window(samples, steady_start, steady_end)
                    rows.append({"switch_s": switched_at or float("nan"), "p99_staging": p99_stage,
                                 "max_rollout": max(ms for t, ms in samples if started <= t <= ended),
                                 "rollout_s": ended - started, "committed": state == "committed",
                                 "p99_rollout": p99_roll, "p99_steady": p99_steady, "gap_rollout": gap_roll,
                                 "gap_steady": gap_steady})
                    progress(f"round {k}: {state} in {ended - started:.2f} s, served p99 {p99_roll:.2f} ms "
                             f"(steady {p99_steady:.2f}), longest gap {gap_roll:.1f} ms (steady {gap_steady:.1f})")
            finally:
                view.close()
                agent.stop()
    finally:
        broker.stop(kill=True)
        shutil.rmtree(workdir, ignore_errors=True)

    def median(key: str) -> float:
        return round(float(np.median([r[key] for r in rows])), 3)

    return {
        "rounds": rounds, "fps": fps, "probation_s": probation_s,
        "committed": sum(1 for r in rows if r["committed"]), "rollout_s": median("rollout_s"),
        "served_p99_ms_rollout": median("p99_rollout"), "served_p99_ms_steady": median("p99_steady"),
        "served_p99_ratio": round(float(np.median([r["p99_rollout"] / r["p99_steady"] for r in rows])), 3),
        "served_p99_ratio_rounds": [round(r["p99_rollout"] / r["p99_steady"], 3) for r in rows],
        "switch_s": median("switch_s"), "served_p99_ms_until_switch": median("p99_staging"),
        "served_max_ms_rollout": median("max_rollout"),
        "max_gap_ms_rollout": median("gap_rollout"), "max_gap_ms_steady": median("gap_steady"),
        "gap_ratio": round(float(np.median([r["gap_rollout"] / r["gap_steady"] for r in rows])), 3),
        "frame_period_ms": round(1000.0 / fps, 3),
    }
