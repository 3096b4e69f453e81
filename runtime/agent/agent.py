"""The device agent's lifecycle: it builds the pipeline from the config, runs every stage under
the supervisor, swaps parts when a desired configuration changes them, and stops cleanly.

    sources ─► one conversion ─► router ─► ladder ─► decisions ─► sinks
    (camera.py, mcu.py,           (task,    (model,  (decisions/)  (sinks/: queued in this
     sources/mqtt_requests.py)     canary)   smaller,               process, handed to the sync
                                             cache)                 worker in batches)

- Stages (``supervisor.py``): ``camera``, ``mcu``, ``sink-outbox``, ``sink-index``, ``status``;
  the MQTT parts (desired config, requests) run in paho's threads behind guarded callbacks.
- The hot path never waits on disk or on the sync worker: records and vectors go to bounded
  queues (``sinks/``); durability is confirmed by the outbox's group commit, asynchronously.
- systemd: ``READY=1`` after the first result, ``WATCHDOG=1`` only while the pipeline makes
  progress and every stage runs, ``STATUS=`` a short line, ``STOPPING=1`` at the end.
- ``stop()`` (SIGINT/SIGTERM) stops the sources, lets in-flight work finish, hands every queued
  record to the outbox and waits for it to be durable, then closes the link and the files.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop.runtime.errors import ConfigError, EdgeloopError, InputError
from edgeloop.runtime.watchdog.systemd import ProgressWatchdog
from edgeloop.sync.worker import SyncSettings, SyncWorker

from .camera import CameraPart, CameraStage, bundled_samples
from .config import AgentConfig, check_resources, merge, with_overrides
from .decisions import decisions_for
from .histogram import LatencyHistogram
from .last_good import LastGood
from .lock import DataDirLock
from .seams import Command, Frame, IndexVector, Inference, Record
from .sinks.index import IndexSink
from .sinks.outbox import OutboxSink
from .status import agent_status, status_line

if TYPE_CHECKING:  # imported where they start: the first result does not wait for them
    from edgeloop.firmware_bridge.closed_loop import ClosedLoop
    from edgeloop.firmware_bridge.link import McuLink
    from edgeloop.runtime.drift import DriftMonitor
    from edgeloop.runtime.engine import Engine
    from edgeloop.runtime.watchdog import Ladder
    from edgeloop.sync.mqtt_client import BrokerConfig
    from edgeloop.sync.offload import Responder

    from .desired import DesiredConfig
    from .mcu import McuPart, McuStage
    from .rollout import RolloutDriver
    from .supervisor import Supervisor

log = logging.getLogger("edgeloop.agent")

__all__ = ["Agent", "bundled_samples", "inference_threads"]


def inference_threads() -> int:
    """Interpreter threads for the agent: every core but one (at most 4), which is left to the
    sync worker, the MCU loop and the broker link. Measured here (2 cores, a 0.6 ms model): on
    both cores its p99 was tripled by a drain on the second; on one, about 1.0x."""
    from edgeloop.runtime import kernels
    from edgeloop.runtime.engine import default_threads

    threads = max(1, default_threads() - 1)
    # A large frame's preprocess splits over threads too; on the core left to the sync worker
    # it waited for that core (47% of the camera thread's time, against 34% in invoke, measured
    # on MobileNet at 1,300 frames/s): it keeps to the inference threads' count.
    kernels.set_threads(threads)
    return threads


def broker_of(config: AgentConfig) -> BrokerConfig | None:
    """The BrokerConfig every MQTT part of the agent uses (None without a broker)."""
    if not config.broker:
        return None
    from edgeloop.sync.mqtt_client import BrokerConfig, parse_broker

    host, port, fallbacks = parse_broker(config.broker, "broker")
    m = config.mqtt
    password = None
    if m.password_file:
        from pathlib import Path

        from edgeloop.sync.private_file import check_private_file

        path = Path(m.password_file).expanduser()
        check_private_file(path, "mqtt.password_file")
        password = path.read_text().strip()
    return BrokerConfig(host, port, m.protocol, m.username or None, password, m.ca_file or None, m.cert_file or None,
                        m.key_file or None, fallbacks=fallbacks)


class Agent:
    FIXED = ("device", "fleet", "data_dir", "broker", "group", "mqtt", "rollout")  # set where the agent starts
    RESTART = {"camera": ("model", "fallback", "folder", "device", "deadline_ms", "canary", "canary_share",
                          "shadow", "shadow_share"),
               "mcu": ("enabled", "url", "rate_hz", "anomaly_every_s", "model", "fallback")}

    def __init__(self, config: AgentConfig, engine: Engine) -> None:
        self.config = config
        self.base_config = config  # the file, environment and flags: desired documents go over this
        self.engine = engine
        self.stopping = threading.Event()
        self.supervisor: Supervisor | None = None
        self.inferences = 0
        self.alerts = 0
        self.latencies_ms: deque[float] = deque(maxlen=2000)
        self.served_by: dict[tuple[str, str], int] = {}  # (slot, rung) -> answers
        self.final: dict[str, Any] = {}
        self.started_at = time.time()
        self.first_result = threading.Event()
        self.worker: SyncWorker | None = None
        self.records: OutboxSink | None = None
        self.vectors: IndexSink | None = None
        self.camera: CameraPart | None = None
        self.camera_stage: CameraStage | None = None
        self.mcu_part: McuPart | None = None
        self.mcu_stage: McuStage | None = None
        self.desired: DesiredConfig | None = None
        self.responder: Responder | None = None
        self.rollout: RolloutDriver | None = None
        self.latency = LatencyHistogram()  # per (task, slot, rung), for the metrics
        self.metrics_server: Any = None  # http.server.ThreadingHTTPServer
        self.metrics_url = ""
        self.systemd: ProgressWatchdog | None = None
        self.last_error = ""
        self._camera_decisions = decisions_for("camera")
        self._swap = threading.Lock()
        self._lock: DataDirLock | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "Agent":
        c = self.config
        check_resources(c, self.engine.store)  # before anything starts: models, folders, TLS files
        c.data_path.mkdir(parents=True, exist_ok=True)
        self._lock = DataDirLock(c.data_path).acquire()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from .supervisor import Supervisor

        self.supervisor = Supervisor()
        self.systemd = ProgressWatchdog(self.progress, healthy=self.supervisor.healthy,
                                        status=lambda: status_line(self.status(fast=True)))
        last_good = LastGood(self.config.data_path)
        layers = last_good.load() if self.config.broker else {}
        if layers:  # the desired config that was in force when the agent last ran
            try:
                self.config = self._desired_config(merge(layers.get("group", {}), layers.get("device", {})))
                log.info("desired config: the last applied layers (%s) are in force", ", ".join(layers))
            except EdgeloopError as exc:
                log.error("desired config: the last applied layers no longer apply (%s); using the file's", exc)
                layers = {}
        c = self.config
        # The camera comes first (the first result is what systemd and a user wait for); the sync
        # worker's interpreter starts meanwhile on the other core, and records queue in memory
        # until it is ready.
        self.worker = SyncWorker(SyncSettings(str(c.data_path), c.device, c.fleet, c.broker, nice=c.sync_nice,
                                              drain_per_s=c.drain_per_s,
                                              index_share_every_s=c.index_share_every_s if c.broker else 0.0,
                                              index_share_labels=c.index_share_labels, **self._link_tls(c)),
                                 wait=False)
        self.records = OutboxSink(self.worker)
        self.vectors = IndexSink(self.worker)
        self._open_rollout()  # before the camera: it loads the version a rollout committed
        self._start_camera(self._first_camera(c))
        self.worker.wait_ready()
        if self.worker.salvage:
            log.error("outbox: the file was damaged and salvaged: %s", self.worker.salvage)
        self.supervisor.start("sink-outbox", self.records.run)
        self.supervisor.start("sink-index", self.vectors.run)
        if c.mcu.enabled:
            from .mcu import McuPart

            self._start_mcu(McuPart(c, self.engine, self.records))
        broker = broker_of(c)
        if broker is not None:
            from .desired import DesiredConfig

            extra = {}
            if self.rollout is not None:
                from .rollout import desired_topic

                extra[desired_topic(c.fleet, c.group)] = self.rollout
            self.desired = DesiredConfig(broker, c.fleet, c.device, c.group or None, self.apply, last_good, layers,
                                         extra, self._desired_gate(c))
            if self.rollout is not None:
                self.rollout.publish = self.desired.publish
                self.supervisor.start("rollout", self.rollout.run)
            if layers:
                self.desired.in_force = {"layers": layers, "config": c.table(), "since": time.time()}
            if c.answer_requests:
                from .sources import mqtt_requests

                from edgeloop.sync.request_limit import RateLimits

                limits = RateLimits(c.requests_per_s, 2 * c.requests_per_s, c.requests_total_per_s,
                                    2 * c.requests_total_per_s)
                self.responder = mqtt_requests.open(broker, c.fleet, c.device, self._request_tasks(), limits)
        self.supervisor.start("status", self._status_loop)
        self._start_metrics()
        self.systemd.start(ready=self.first_result.is_set())

    @staticmethod
    def _desired_gate(c: AgentConfig) -> Any:
        """The check of the operator's signatures on desired documents; None (said loudly) when
        no operator key is configured. A key that cannot be read stops the start."""
        if not c.mqtt.operator_keys:
            log.warning("desired documents are taken unsigned: anyone who may publish to this device's config "
                        "and rollout topics can reconfigure it (set mqtt.operator_keys)")
            return None
        from edgeloop.sync.signed_doc import Gate, Verifier, VersionBook, load_public_key

        return Gate(Verifier([load_public_key(k) for k in c.mqtt.operator_keys]),
                    VersionBook(c.data_path / "desired_versions.json"))

    def _open_rollout(self) -> None:
        c = self.config
        if not (c.broker and c.group and c.rollout.repo_url):
            return
        from pathlib import Path

        from .rollout import RolloutDriver, RolloutSettings
        from .rollout_deploy import CameraDeployer

        settings = RolloutSettings(c.device, c.fleet, c.group, c.camera.model, c.data_path / "rollout",
                                   c.rollout.repo_url, Path(c.rollout.root).expanduser(), c.rollout.retry_s)
        try:
            self.rollout = RolloutDriver(settings, CameraDeployer(self), publish=lambda t, p: None)
            self.rollout.open()
        except Exception as exc:  # serving does not depend on rollouts: without them, said loudly
            self.last_error = f"rollout: {type(exc).__name__}: {exc}"
            log.error("rollout: the rollout state in %s cannot be used (%s); running without rollouts",
                      settings.folder, exc)
            self.engine.store.uninstall(c.camera.model)
            self.rollout = None

    def _first_camera(self, c: AgentConfig) -> CameraPart:
        """The camera on the version a rollout committed; on the bundled model, loudly, when
        that version does not load here any more."""
        try:
            return CameraPart(c, self.engine, self.records.put)
        except EdgeloopError as exc:
            installed = self.engine.store.installed(c.camera.model)
            if installed is None:
                raise
            self.last_error = f"camera: {installed.name} {installed.version} from its rollout slot: {exc}"
            log.error("camera: %s %s (committed by a rollout) does not load (%s); the bundled model serves",
                      installed.name, installed.version, exc)
            self.engine.store.uninstall(c.camera.model)
            if self.rollout is not None:
                self.rollout.store.note(serving_version=self.rollout.initial_version,
                                        reason=f"load: {installed.version} from its slot: {exc}")
            return CameraPart(c, self.engine, self.records.put)

    @staticmethod
    def _link_tls(c: AgentConfig) -> dict[str, Any]:
        b = broker_of(c)
        if b is None:
            return {}
        return {"protocol": b.protocol, "username": b.username, "password": b.password, "ca_file": b.ca_file,
                "cert_file": b.cert_file, "key_file": b.key_file}

    def _start_metrics(self) -> None:
        c = self.config
        if c.metrics_port < 0:
            return
        from .metrics import serve

        try:
            self.metrics_server = serve(self, c.metrics_port)
        except OSError as exc:  # serving goes on without metrics; said loudly
            log.error("metrics: cannot listen on 127.0.0.1:%d (%s); running without them "
                      "(set metrics_port, 0 for any free port)", c.metrics_port, exc)
            return
        self.metrics_url = f"http://127.0.0.1:{self.metrics_server.server_port}/metrics"
        log.info("metrics on %s", self.metrics_url)

    def progress(self) -> int:
        """Work finished: camera and request answers, MCU windows (the systemd watchdog's measure)."""
        return self.inferences + (self.mcu_stage.loop.windows if self.mcu_stage is not None else 0)

    def stop(self) -> None:
        """Stop the sources, finish what is in flight, store every record accepted, close."""
        self.stopping.set()
        if self.systemd is not None:
            self.systemd.stop()
        for part in (self.desired, self.responder):
            if part is not None:
                part.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        sup = self.supervisor
        if sup is not None:
            sup.stop_all(order=[n for n in ("rollout", "camera", "mcu", "status") if n in sup.stages])
        if self.worker is not None:
            if self.records is not None and not self.records.drain():
                log.error("outbox: %d record(s) were not confirmed durable before the stop", self.records.pending())
            if self.vectors is not None:
                self.vectors.flush_once()
            self.final = self.status()  # what was done, before closing
        if sup is not None:
            sup.stop_all()
        self._close_mcu()
        self._close_camera()
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.rollout is not None:
            self.rollout.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def run(self, duration_s: float | None = None) -> int:
        self.start()
        try:
            self.stopping.wait(duration_s)
        finally:
            self.stop()
        return 0

    # -- the camera and the MCU --------------------------------------------------------

    def _start_camera(self, part: CameraPart) -> None:
        self.camera = part
        self.camera_stage = CameraStage(part, lambda: self.config, self.answered)
        self.supervisor.start("camera", self.camera_stage.run, stuck_s=CameraStage.STUCK_S)

    def _close_camera(self) -> None:
        if self.camera is not None:
            self.camera.close()
            self.camera = None

    def _start_mcu(self, part: McuPart) -> None:
        from .mcu import McuStage

        self.mcu_part = part
        self.mcu_stage = McuStage(part, lambda: self.config, self.records)
        self.supervisor.start("mcu", self.mcu_stage.run)

    def _close_mcu(self) -> None:
        if self.mcu_part is not None:
            self.mcu_part.close()
        self.mcu_part = self.mcu_stage = None

    @property
    def mcu(self) -> McuLink | None:
        """The firmware bridge's link to the MCU (None without one)."""
        return self.mcu_stage.link if self.mcu_stage is not None else None

    @property
    def sim(self) -> Any:
        return self.mcu_stage.sim if self.mcu_stage is not None else None

    @property
    def loop(self) -> ClosedLoop | None:
        return self.mcu_stage.loop if self.mcu_stage is not None else None

    @property
    def ladder(self) -> Ladder | None:
        return self.camera.ladder if self.camera is not None else None

    @property
    def drift(self) -> DriftMonitor | None:
        return self.camera.drift if self.camera is not None else None

    # -- the hot path after the router ----------------------------------------------------

    def answered(self, inference: Inference) -> None:
        """Count an answer, queue its record and run the decisions (nothing here waits)."""
        assert self.records is not None and self.vectors is not None
        served = inference.served
        self.records.put(Record("inferences", inference.record(), inference.trace))
        self.inferences += 1
        self.latencies_ms.append(served.latency_ms)
        key = (inference.slot, served.rung)
        self.served_by[key] = self.served_by.get(key, 0) + 1
        self.latency.observe((inference.task, inference.slot, served.rung), served.latency_ms / 1000.0)
        if not self.first_result.is_set():
            self.first_result.set()
            log.info("first result: %s from %s", served.rung, inference.source)
            if self.systemd is not None:
                self.systemd.ready()
        drift = self.camera.drift if self.camera is not None else None
        if drift is not None:
            drift.add(inference.features)
        config = self.config
        for decide in self._camera_decisions:
            for action in decide(inference, config):
                if isinstance(action, Record):
                    if isinstance(action.body, dict) and action.body.get("kind") == "alert":
                        self.alerts += 1
                    self.records.put(action)
                elif isinstance(action, IndexVector):
                    self.vectors.put(action)
                elif isinstance(action, Command):
                    log.warning("a camera decision asked for the MCU command '%s'; camera decisions do not "
                                "command the MCU", action.name)

    # -- inference requests over MQTT ---------------------------------------------------

    def _request_tasks(self) -> dict[str, Any]:
        c = self.config
        tasks = {c.camera.model: self._answer_image}
        if c.mcu.enabled and c.mcu.model:
            tasks[c.mcu.model] = self._answer_window
        return tasks

    def _answered_request(self, inference: Inference) -> dict[str, Any]:
        self.answered(inference)
        return {**inference.record(), "trace": inference.trace}

    def _answer_image(self, image: Any) -> dict[str, Any]:
        if not hasattr(image, "convert"):
            raise InputError("the camera's model takes an image", "send PNG or JPEG bytes with kind 'png' or 'jpg'")
        part = self.camera
        if part is None:
            raise InputError("the camera's model is not running", "try again in a moment")
        frame = Frame("mqtt", np.asarray(image.convert("RGB")), "RGB")
        return self._answered_request(part.serve(frame, "mqtt", task=self.config.camera.model))

    def _answer_window(self, samples: Any) -> dict[str, Any]:
        part = self.mcu_part
        classifier = part.classifier if part is not None else None
        if classifier is None:
            raise InputError("the MCU's model is not running", "enable [mcu] with a model")
        if not isinstance(samples, np.ndarray) or samples.ndim != 1:
            raise InputError("a window is a 1-D array of samples", "send numpy.save bytes with kind 'npy'")
        served = classifier.classify(samples.tolist())
        if served is None:
            raise InputError(f"a window of {samples.size} samples does not fit the model",
                             f"send {classifier.width} samples, as the MCU's windows hold")
        inference = Inference("mqtt", classifier.task, classifier.task, served, os.urandom(8).hex(),
                              classifier.primary.entry.version, extra={"task": self.config.mcu.model})
        return self._answered_request(inference)

    # -- configuration changes -----------------------------------------------------------

    def _desired_config(self, table: dict[str, Any]) -> AgentConfig:
        fixed = [k for k in self.FIXED if k in table and table[k] != self.base_config.table()[k]]
        if fixed:
            raise ConfigError(f"{', '.join(fixed)}: cannot be changed over MQTT",
                              "change it in the config file or the environment and restart the agent")
        new = with_overrides(self.base_config, table)
        check_resources(new, self.engine.store)
        return new

    def apply(self, table: dict[str, Any]) -> dict[str, Any]:
        """A desired configuration (a partial table over the file's): validated whole, then
        thresholds and rates change live and a part whose model, source or port changed is built
        beside the running one before it replaces it. ConfigError (the last good config stays,
        still serving) for documents that do not validate or cannot be built."""
        with self._swap:
            new = self._desired_config(table)
            old = self.config
            restarted = [part for part, keys in self.RESTART.items()
                         if any(getattr(getattr(old, part), k) != getattr(getattr(new, part), k) for k in keys)]
            camera = None
            if "camera" in restarted:
                try:
                    camera = CameraPart(new, self.engine, self.records.put if self.records else lambda r: None)
                except EdgeloopError as exc:
                    raise ConfigError(f"camera: the new configuration cannot be built ({exc.problem})", exc.fix) \
                        from exc
                except Exception as exc:
                    raise ConfigError(f"camera: the new configuration cannot be built ({type(exc).__name__}: "
                                      f"{exc})", "check the models and the camera") from exc
            self.config = new
            if camera is not None:
                self._replace_camera(camera)
            if "mcu" in restarted:
                # One serial port cannot be opened twice: the old part goes first; a new one that
                # fails to start is said in the log and the MCU stays off until a good document.
                self.supervisor.stop("mcu")
                self._close_mcu()
                if new.mcu.enabled:
                    from .mcu import McuPart

                    try:
                        self._start_mcu(McuPart(new, self.engine, self.records))
                    except Exception as exc:
                        self.last_error = f"mcu: {type(exc).__name__}: {exc}"
                        log.error("mcu: the new configuration did not start (%s)", exc)
            log.info("config applied (restarted: %s)", ", ".join(restarted) or "nothing")
            return {"config": new.table(), "restarted": restarted}

    def _replace_camera(self, camera: CameraPart) -> None:
        self.supervisor.stop("camera")
        self._close_camera()
        self._start_camera(camera)

    def rebuild_camera(self) -> None:
        """The camera built again on the current config and the store's models (a rollback
        after a desired config rebuilt the camera on the candidate). A part that cannot be built
        leaves the running one serving, said in the log."""
        with self._swap:
            try:
                camera = CameraPart(self.config, self.engine, self.records.put if self.records else lambda r: None)
            except Exception as exc:
                self.last_error = f"camera: {type(exc).__name__}: {exc}"
                log.error("camera: rebuilding it failed (%s); the running part goes on", exc)
                return
            self._replace_camera(camera)

    # -- status ------------------------------------------------------------------------

    def status(self, fast: bool = False) -> dict[str, Any]:
        """Everything ``edgeloop status`` shows; ``fast`` skips the sync worker's figures."""
        return agent_status(self, fast)

    def _status_loop(self, stop: threading.Event) -> None:
        from edgeloop.runtime import logs

        last_n, last_t = self.inferences, time.monotonic()
        while not stop.wait(self.config.status_every_s):
            s = self.status()
            now = time.monotonic()
            s["rate"] = (s["inferences"] - last_n) / max(now - last_t, 1e-9)
            last_n, last_t = s["inferences"], now
            logs.say(status_line(s), "edgeloop.status", status=s)
