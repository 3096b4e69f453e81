"""The device agent: sources → ladder → decisions → sinks.

- Camera: an image folder replayed at ``fps`` (or a V4L2 camera through OpenCV,
  ``camera.device``) through a degradation ladder (the model, its smaller fallback, the cache,
  a default); every inference goes to the outbox stream ``inferences`` and an alert label to
  ``events``, each with a trace id made at the source.
- MCU: sensor windows from the firmware bridge (the simulated MCU on a pty unless a port is
  configured) through the closed loop; the vibration model (or, without one, a peak over the
  threshold) finds a fault and the motor is stopped; commands, MCU events and link telemetry
  go to the outbox.
- Requests: with a broker, MQTT 5 requests on ``edgeloop/v1/{fleet}/{device}/req/infer``
  (msgpack ``{task, input, kind}``, answered on the response topic with the correlation data;
  ``Offloader(request_topic=...)`` sends them) for the camera's model (through its ladder) and
  the MCU's (a window of samples as ``.npy``). Each is recorded like a camera inference.
- Sinks: the durable outbox under ``data_dir``, drained to ``broker`` when one is set, and the
  local retrieval index (embeddings of every ``camera.index_every``-th frame and of alerts),
  both kept by the sync worker, a child process (``sync/worker.py``).
- A status line every ``status_every_s``. ``stop()`` (SIGINT/SIGTERM) stops the sources,
  lets in-flight work finish, closes the link and the outbox; nothing accepted is lost.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from .config import AgentConfig

log = logging.getLogger("edgeloop.agent")

def bundled_samples() -> Path:
    """The demo's camera folder: the digit samples shipped with the models."""
    from edgeloop.models import store

    return Path(store.__file__).resolve().parent / "samples"


def inference_threads() -> int:
    """Interpreter threads for the agent: every core but one (at most 4), which is left to the
    sync worker, the MCU loop and the broker link. Measured here (2 cores, a 0.6 ms model): on
    both cores its p99 was tripled by a drain on the second; on one, about 1.0x."""
    from edgeloop.runtime.engine import default_threads

    return max(1, default_threads() - 1)


def _top(served: Any) -> Any:
    """The best class of a ladder's answer (None for an answer without classes)."""
    result = served.result
    return result.top[0] if result is not None and getattr(result, "top", None) else None


class Agent:
    def __init__(self, config: AgentConfig, engine: Any) -> None:
        self.config = config
        self.base_config = config  # the file and environment: remote documents go over this
        self.engine = engine
        self.stopping = threading.Event()
        self.inferences = 0
        self.latencies_ms: deque[float] = deque(maxlen=2000)
        self.alerts = 0
        self.final: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        self.outbox: Any = None  # the SyncWorker: the outbox's calls, the link and the index in a child
        self.ladder: Any = None
        self.mcu: Any = None
        self.sim: Any = None
        self.loop: Any = None
        self.remote: Any = None
        self.responder: Any = None
        self.camera: Any = None  # a source from .sources: the image folder or a V4L2 camera
        self.classify_window: Any = None
        self.drift: Any = None
        self.mcu_ladder: Any = None
        self.metrics_server: Any = None
        self.metrics_url = ""
        self._part_stop = {"camera": threading.Event(), "mcu": threading.Event()}
        self._part_thread: dict[str, threading.Thread] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "Agent":
        from edgeloop.sync.worker import SyncSettings, SyncWorker

        c = self.config
        c.data_path.mkdir(parents=True, exist_ok=True)
        self.outbox = SyncWorker(SyncSettings(str(c.data_path), c.device, c.fleet, c.broker, nice=c.sync_nice,
                                                  drain_per_s=c.drain_per_s))
        if self.outbox.salvage:
            log.error("outbox: the file was damaged and salvaged: %s", self.outbox.salvage)
        if c.broker:
            from edgeloop.sync.link import parse_broker

            host, port = parse_broker(c.broker)
            from .remote_config import RemoteConfig

            self.remote = RemoteConfig(host, port, c.fleet, c.device, c.group or None, self.apply)
        self._start_camera()
        if c.mcu.enabled:
            self._start_mcu()
        if c.broker and c.answer_requests:
            self._start_requests(host, port)
        self._spawn(self._status_loop, "status")
        if c.metrics_port >= 0:
            from .metrics import serve_metrics

            try:
                self.metrics_server, _ = serve_metrics(self, int(c.metrics_port), c.device_power_w, c.price_per_kwh)
            except OSError as exc:  # serving goes on without metrics; said loudly
                log.error("metrics: cannot listen on 127.0.0.1:%d (%s); running without them "
                          "(set metrics_port, 0 for any free port)", int(c.metrics_port), exc)
            else:
                self.metrics_url = f"http://127.0.0.1:{self.metrics_server.server_port}/metrics"
                log.info("metrics on %s", self.metrics_url)
        return self

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=f"agent-{name}", daemon=True)
        t.start()
        if name in self._part_stop:
            self._part_thread[name] = t
        else:
            self._threads.append(t)

    def _running(self, part: str) -> bool:
        return not self.stopping.is_set() and not self._part_stop[part].is_set()

    def stop(self) -> None:
        """Stop the sources, finish what is in flight, close the link and the outbox."""
        self.stopping.set()
        if self.remote is not None:
            self.remote.stop()
        if self.responder is not None:
            self.responder.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        for t in [*self._threads, *self._part_thread.values()]:
            t.join(10)
        self.final = self.status() if self.outbox is not None else {}  # what was done, before closing
        self._close_mcu()
        self._close_camera()
        if self.outbox is not None:
            self.outbox.close()

    def run(self, duration_s: float | None = None) -> int:
        self.start()
        try:
            self.stopping.wait(duration_s)
        finally:
            self.stop()
        return 0

    # -- the camera --------------------------------------------------------------------

    def _start_camera(self) -> None:
        from edgeloop.runtime.watchdog import CacheRung, DefaultRung, Ladder, LadderConfig, ModelRung

        from .sources import open_camera

        cam = self.config.camera
        self.camera = open_camera(cam.device, cam.folder, bundled_samples())
        model = self.engine.load(cam.model)
        self.drift = None
        if model.entry.baseline:
            from edgeloop.runtime.drift import DriftMonitor

            def drifted(event: dict[str, Any]) -> None:
                log.warning("drift: %s PSI %.3f over %.2f", event["feature"], event["psi"], event["threshold"])
                self.outbox.enqueue("events", {**event, "model": cam.model})

            self.drift = DriftMonitor(model.entry.baseline, on_drift=drifted)
        rungs = [ModelRung("cpu", model, hang_s=1.0)]
        if cam.fallback:
            rungs.append(ModelRung("small", self.engine.load(cam.fallback), hang_s=1.0, degraded=True))
        self.ladder = Ladder("camera", [*rungs, CacheRung(), DefaultRung(None)],
                             LadderConfig(deadline_s=cam.deadline_ms / 1000.0),
                             on_event=lambda event: self.outbox.enqueue("events", {"kind": "ladder", **event}))
        self._spawn(self._camera_loop, "camera")

    def _camera_loop(self) -> None:
        from edgeloop.runtime.drift import features as drift_features

        next_at = time.monotonic()
        while self._running("camera"):
            cam = self.config.camera  # read each time: thresholds and rate change live
            period = 1.0 / cam.fps
            frame = self.camera.read()
            if frame is None:  # the camera is being opened again (said in the log)
                self.stopping.wait(min(period, 0.1))
                next_at = time.monotonic()
                continue
            image = frame.image
            served = self.ladder.serve(image)
            if self.inferences == 0:
                log.info("first result: %s from %s", served.rung, frame.name)
            top = _top(served)
            record, trace = self._record(frame.name, served, top)
            if self.drift is not None:
                self.drift.add(drift_features(image, served.result))
            hard = top is not None and top.score < cam.hard_below
            alert = top is not None and top.label in cam.alert_labels and top.score >= cam.min_score
            index = bool(cam.index_every) and (alert or self.inferences % cam.index_every == 0)
            # The embedding comes with the primary model's answer (the same invoke); a fallback's
            # lives in another space, and the camera thread never invokes a model itself.
            primary = self.ladder.rungs[0]
            embedding = getattr(served.result, "embedding", None) if served.rung == primary.name else None
            vector = embedding.vector if embedding is not None else None
            if hard:
                self._hard_example(frame, record, trace, vector)
            if alert:
                self.alerts += 1
                self.outbox.enqueue("events", {"kind": "alert", **record}, trace=trace)
            if index and vector is not None:
                model = primary.model
                self.outbox.index_add(model.name, model.name, model.entry.version, [trace], [vector], [record["label"]])
            next_at += period
            self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def _record(self, source: str, served: Any, top: Any, **extra: Any) -> tuple[dict[str, Any], str]:
        """Count an answer and store it in ``inferences`` under a new trace id (made at the
        source, carried in the envelope to the regional edge); returns (record, trace)."""
        trace = os.urandom(8).hex()
        record = {"source": source, **extra, "rung": served.rung, "latency_ms": round(served.latency_ms, 3),
                  "label": top.label if top else None, "score": round(top.score, 4) if top else None}
        self.inferences += 1
        self.latencies_ms.append(served.latency_ms)
        self.outbox.enqueue("inferences", record, trace=trace)
        return record, trace

    def _hard_example(self, frame: Any, record: dict[str, Any], trace: str, vector: Any) -> None:
        """Features always, the embedding when the primary model answered, the raw image only
        when the config allows."""
        from edgeloop.runtime.drift import features

        example: dict[str, Any] = {**record, "features": features(frame.image, None)}
        if vector is not None:
            example["embedding"] = vector.astype("float16").tobytes()
        if self.config.camera.upload_raw:
            example["image"] = frame.raw()
        self.outbox.enqueue("hard-examples", example, trace=trace)

    # -- inference requests over MQTT ---------------------------------------------------

    def _start_requests(self, host: str, port: int) -> None:
        from edgeloop.sync.link import topic
        from edgeloop.sync.offload import Responder

        c = self.config
        tasks = {c.camera.model: self._answer_image}
        if c.mcu.enabled and c.mcu.model:
            tasks[c.mcu.model] = self._answer_window
        self.responder = Responder(host, port, c.fleet, tasks, client_id=f"edgeloop-{c.fleet}-{c.device}-requests",
                                   subscription=topic(c.fleet, c.device, "req/infer")).start()

    def _answered(self, task: str, served: Any) -> dict[str, Any]:
        record, trace = self._record("mqtt", served, _top(served), task=task)
        return {**record, "trace": trace}

    def _answer_image(self, image: Any) -> dict[str, Any]:
        from edgeloop.runtime.errors import InputError

        if isinstance(image, np.ndarray) or isinstance(image, str):
            raise InputError("the camera's model takes an image", "send PNG or JPEG bytes with kind 'png' or 'jpg'")
        return self._answered(self.config.camera.model, self.ladder.serve(image))

    def _answer_window(self, samples: Any) -> dict[str, Any]:
        from edgeloop.runtime.errors import InputError

        classify = self.classify_window
        if classify is None:
            raise InputError("the MCU's model is not running", "enable [mcu] with a model")
        if not isinstance(samples, np.ndarray) or samples.ndim != 1:
            raise InputError("a window is a 1-D array of samples", "send numpy.save bytes with kind 'npy'")
        served = classify(samples.tolist())
        if served is None:
            raise InputError(f"a window of {samples.size} samples does not fit the model",
                             "send as many samples as the MCU's windows hold")
        return self._answered(self.config.mcu.model, served)

    # -- the MCU -----------------------------------------------------------------------

    def _start_mcu(self) -> None:
        from edgeloop.firmware_bridge.closed_loop import ClosedLoop
        from edgeloop.firmware_bridge.link import LinkConfig, McuLink

        m = self.config.mcu
        url = m.url
        if not url:
            from edgeloop.firmware_bridge.sim_process import SimProcess

            self.sim = SimProcess(self.config.data_path, "--rate", str(m.rate_hz),
                                  "--anomaly-every", str(m.anomaly_every_s), *(["--vibration"] if m.model else []))
            url = str(self.sim.link)
        self.mcu = McuLink(LinkConfig(url)).start()

        classify = self.classify_window = self._window_classifier(m) if m.model else None

        def decide(window: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
            if classify is not None:
                served = classify(window.get("samples", []))
                top = _top(served) if served is not None else None
                fault = top is not None and top.label != "normal" and top.score >= self.config.mcu.min_score  # live
                return ("motor", {"on": False, "fault": top.label}) if fault else None
            peak = max((abs(v) for v in window.get("samples", [])), default=0)
            return ("motor", {"on": False}) if peak > self.config.mcu.peak_threshold else None  # live

        self.loop = ClosedLoop(self.mcu, decide, outbox=self.outbox)
        self._spawn(self._mcu_loop, "mcu")

    def _window_classifier(self, m: Any) -> Any:
        """Windows through a ladder of the vibration model, its smaller fallback and 'normal'."""
        from edgeloop.runtime.results import Class, Classification
        from edgeloop.runtime.tensors import quantize
        from edgeloop.runtime.watchdog import DefaultRung, Ladder, LadderConfig, ModelRung
        from edgeloop.models.demo_data import vibration_features

        primary = self.engine.load(m.model)
        rungs = [ModelRung(m.model, primary, hang_s=0.5)]
        if m.fallback:
            rungs.append(ModelRung(m.fallback, self.engine.load(m.fallback), hang_s=0.5, degraded=True))
        rungs.append(DefaultRung(Classification((Class(0, "normal", 0.0),))))
        self.mcu_ladder = Ladder("vibration", rungs, LadderConfig(deadline_s=0.02),
                                 on_event=lambda event: self.outbox.enqueue("events", {"kind": "ladder", **event}))
        spec = primary.inputs[0]
        width = spec.shape[1]

        def classify(samples: list[int]) -> Any:  # the Served answer, or None for a window that does not fit
            if len(samples) != width:
                return None
            x = quantize(vibration_features(np.asarray(samples)[None]), spec.quantization, spec.dtype)
            return self.mcu_ladder.serve(x)

        return classify

    def _mcu_loop(self) -> None:
        while self._running("mcu"):
            self.loop.run(0.5)

    # -- configuration changes -----------------------------------------------------------

    FIXED = ("device", "fleet", "data_dir", "broker", "group")  # set where the agent starts
    RESTART = {"camera": ("model", "fallback", "folder", "device", "deadline_ms"),
               "mcu": ("enabled", "url", "rate_hz", "anomaly_every_s", "model", "fallback")}

    def apply(self, table: dict[str, Any]) -> dict[str, Any]:
        """A desired configuration (a partial table over the file's): validated; thresholds and
        rates change live, a part whose model or port changed is restarted. ConfigError (the
        last good config stays) for invalid documents or keys only the file can set."""
        from dataclasses import asdict

        from edgeloop.runtime.errors import ConfigError

        from .config import with_overrides

        fixed = [k for k in self.FIXED if k in table and table[k] != getattr(self.base_config, k)]
        if fixed:
            raise ConfigError(f"{', '.join(fixed)}: cannot be changed over MQTT",
                              "change it in the config file or the environment and restart the agent")
        new = with_overrides(self.base_config, table)
        old, self.config = self.config, new
        restarted = [part for part, keys in self.RESTART.items()
                     if any(getattr(getattr(old, part), k) != getattr(getattr(new, part), k) for k in keys)]
        for part in restarted:
            self._restart(part)
        log.info("config applied (restarted: %s)", ", ".join(restarted) or "nothing")
        return {"config": asdict(new), "restarted": restarted}

    def _restart(self, part: str) -> None:
        self._part_stop[part].set()
        thread = self._part_thread.pop(part, None)
        if thread is not None:
            thread.join(10)
        if part == "camera":
            self._close_camera()
            self._part_stop[part].clear()
            self._start_camera()
        else:
            self._close_mcu()
            self._part_stop[part].clear()
            if self.config.mcu.enabled:
                self._start_mcu()

    def _close_camera(self) -> None:
        for part in (self.ladder, self.camera):
            if part is not None:
                part.close()
        self.ladder = self.camera = None

    def _close_mcu(self) -> None:
        if self.mcu is not None:
            self.mcu.stop()
        for part in (self.sim, self.mcu_ladder):
            if part is not None:
                part.close()
        self.mcu = self.sim = self.loop = self.mcu_ladder = self.classify_window = None

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else None
        sync = self.outbox.stats() if self.outbox is not None else {"streams": {}, "link": None, "index": {}}
        streams = sync["streams"]
        out: dict[str, Any] = {
            "inferences": self.inferences, "alerts": self.alerts,
            "outbox_rows": sum(s["rows"] for s in streams.values()),
            "outbox_bytes": sum(s["bytes"] for s in streams.values()),
            "link": sync["link"]["state"] if sync["link"] is not None else "none (records wait in the outbox)",
            "index_items": sum(sync["index"].values()),
            "rung": self.ladder.stats()["rung"] if self.ladder is not None else None,
            "requests": {"answered": self.responder.answered, "failed": self.responder.failed}
            if self.responder is not None else None,
            "drift": {k: round(v, 3) for k, v in self.drift.scores().items()} if self.drift is not None else {}}
        if lat is not None:
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            out.update(p50_ms=round(float(p50), 2), p95_ms=round(float(p95), 2), p99_ms=round(float(p99), 2))
        if self.loop is not None:
            out["mcu"] = {"state": self.mcu.state, "windows": self.loop.windows, "commands": self.loop.commands,
                          **{k: v for k, v in self.loop.figures().items() if k.startswith("loop_p99")}}
        return out

    def _status_loop(self) -> None:
        last_n, last_t = 0, time.monotonic()
        while not self.stopping.wait(self.config.status_every_s):
            s = self.status()
            now = time.monotonic()
            rate = (s["inferences"] - last_n) / (now - last_t)
            last_n, last_t = s["inferences"], now
            mcu = s.get("mcu", {})
            print(f"edgeloop: {rate:.1f} inf/s  p50 {s.get('p50_ms', '-')} p95 {s.get('p95_ms', '-')} "
                  f"p99 {s.get('p99_ms', '-')} ms | rung {s['rung']} | outbox {s['outbox_rows']} rows "
                  f"{s['outbox_bytes'] / 1024:.0f} KB | link {s['link']} | alerts {s['alerts']}"
                  + (f" | drift psi {max(s['drift'].values()):.2f}" if s["drift"] else "")
                  + (f" | mcu {mcu.get('state')} {mcu.get('windows')} windows {mcu.get('commands')} commands"
                     + (f" loop p99 {mcu['loop_p99_ms']} ms" if "loop_p99_ms" in mcu else "") if mcu else ""),
                  flush=True)
