"""A simulated fleet in one process: light agents that run the device's real rollout code.

Each ``LightAgent`` is one device with the agent's own rollout driver, deployer and camera part
(its models loaded on the backend, the router, the ladder, the probation tap), the bundled digit
samples fed to it at ``fps`` on one thread, its own MQTT client, rollout state and slots on disk.
The frames go through the agent's own camera stage under its supervisor. It leaves out what a
rollout does not touch: the sync worker process, the MCU, metrics, systemd.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeloop.models.store import ModelStore
from edgeloop.runtime.agent.camera import CameraPart, CameraStage
from edgeloop.runtime.agent.config import AgentConfig, CameraConfig, McuConfig
from edgeloop.runtime.agent.rollout import RolloutDriver, RolloutSettings, desired_topic
from edgeloop.runtime.agent.rollout_deploy import CameraDeployer
from edgeloop.runtime.agent.supervisor import Supervisor
from edgeloop.runtime.engine import Engine, EngineConfig
from edgeloop.sync.fetch import FetchPolicy
from edgeloop.sync.mqtt_client import BrokerConfig, Guard, make_client



class _Records:
    """Where the camera part's events go: counted, not stored."""

    def __init__(self) -> None:
        self.count = 0

    def put(self, record: Any) -> None:
        self.count += 1


class LightAgent:
    def __init__(self, device: str, fleet: str, group: str, broker: BrokerConfig, folder: Path, repo_url: str,
                 root: Path, fps: float = 5.0, retry_s: float = 1.0, deadline_ms: float = 500.0) -> None:
        """``deadline_ms``: generous by default, as many devices share a few cores here (a
        simulation of the rollout, not of latency)."""
        self.config = replace(AgentConfig(), device=device, fleet=fleet, group=group, data_dir=str(folder),
                              camera=CameraConfig(fps=fps, index_every=0, deadline_ms=deadline_ms),
                              mcu=McuConfig(enabled=False))
        self.engine = Engine(EngineConfig(num_threads=1), ModelStore())
        self.records = _Records()
        self._swap = threading.Lock()
        self.camera: CameraPart | None = None
        self.answers = 0
        self._stop = threading.Event()
        settings = RolloutSettings(device, fleet, group, self.config.camera.model, folder / "rollout", repo_url, root,
                                   retry_s=retry_s, policy=FetchPolicy(backoff_s=0.05, backoff_cap_s=1.0))
        self.driver = RolloutDriver(settings, CameraDeployer(self), publish=self._publish)
        self.driver.open()
        self.camera = CameraPart(self.config, self.engine, self.records.put)
        self.guard = Guard(f"sim-{device}")
        self.client = make_client(broker, f"sim-{fleet}-{device}")
        topic = desired_topic(fleet, group)
        self.client.on_connect = self.guard(lambda c, u, f, reason, p=None: c.subscribe(topic, 1))
        self.client.on_message = self.guard(lambda c, u, m: self.driver.offer(m.payload))
        self.client.connect_async(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        # The camera stage itself, under the agent's supervisor (a failing frame is logged,
        # counted and the stage started again, as on a device).
        self.supervisor = Supervisor()
        self._start_camera()
        self._rollout = threading.Thread(target=self.driver.run, args=(self._stop,), name=f"sim-{device}-rollout",
                                         daemon=True)
        self._rollout.start()

    def _start_camera(self) -> None:
        assert self.camera is not None
        stage = CameraStage(self.camera, lambda: self.config, self._answered)
        self.supervisor.start("camera", stage.run, stuck_s=CameraStage.STUCK_S)

    def _answered(self, inference: Any) -> None:
        self.answers += 1

    @property
    def errors(self) -> int:
        """Camera stage failures (each logged with its traceback by the supervisor)."""
        stage = self.supervisor.stages.get("camera")
        return stage.restarts if stage is not None else 0

    def _publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1, retain=True)

    def rebuild_camera(self) -> None:
        with self._swap:
            part = CameraPart(self.config, self.engine, self.records.put)
            self.supervisor.stop("camera")
            old, self.camera = self.camera, part
            self._start_camera()
        if old is not None:
            old.close()

    def close(self) -> None:
        self._stop.set()
        self._rollout.join(10)
        self.supervisor.stop_all()
        self.client.loop_stop()
        self.client.disconnect()
        if self.camera is not None:
            self.camera.close()
        self.driver.close()
        self.engine.close()


def close_all(agents: list[LightAgent]) -> None:
    """Close every agent at once (each takes about a second on its own)."""
    closing = [threading.Thread(target=a.close) for a in agents]
    for t in closing:
        t.start()
    for t in closing:
        t.join(30)
