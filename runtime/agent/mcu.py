"""The MCU's part of the pipeline: sensor windows → the vibration model's ladder (the model, its
smaller fallback, ``normal``) or the peak rule → the ``mcu`` decisions (stop the motor) → an
acknowledged command, through the firmware bridge's closed loop (which measures the loop
latency and sends telemetry and MCU events to the outbox sink)."""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from edgeloop.firmware_bridge.closed_loop import ClosedLoop
from edgeloop.models.demo_data import vibration_features
from edgeloop.runtime.results import Class, Classification
from edgeloop.runtime.tensors import quantize
from edgeloop.runtime.watchdog import DefaultRung, Ladder, LadderConfig, ModelRung
from edgeloop.runtime.watchdog.ladder import Served

from .config import AgentConfig
from .decisions import decisions_for
from .seams import Command, Inference, Record
from .sources.mcu import McuSource

HANG_S = 0.5
DEADLINE_S = 0.02


class WindowClassifier:
    """Windows through a ladder of the vibration model, its smaller fallback and 'normal'."""

    def __init__(self, engine: Any, model: str, fallback: str, on_event: Callable[[Record], None]) -> None:
        self.task = model
        self.primary = engine.load(model)
        rungs = [ModelRung(model, self.primary, hang_s=HANG_S)]
        if fallback:
            rungs.append(ModelRung(fallback, engine.load(fallback), hang_s=HANG_S, degraded=True))
        rungs.append(DefaultRung(Classification((Class(0, "normal", 0.0),))))
        self.ladder = Ladder("vibration", rungs, LadderConfig(deadline_s=DEADLINE_S),
                             on_event=lambda event: on_event(Record("events", {"kind": "ladder", **event})))
        self.spec = self.primary.inputs[0]
        self.width = self.spec.shape[1]

    def classify(self, samples: Any) -> Served | None:
        """The ladder's answer, or None for a window that does not fit the model."""
        if len(samples) != self.width:
            return None
        x = quantize(vibration_features(np.asarray(samples)[None]), self.spec.quantization, self.spec.dtype)
        return self.ladder.serve(x)

    def close(self) -> None:
        self.ladder.close()


class McuPart:
    def __init__(self, config: AgentConfig, engine: Any, sink: Any) -> None:
        m = config.mcu
        self.classifier: WindowClassifier | None = None
        self.source: McuSource | None = None
        try:
            if m.model:
                self.classifier = WindowClassifier(engine, m.model, m.fallback, sink.put)
            self.source = McuSource(m, config.data_path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
        if self.classifier is not None:
            self.classifier.close()


class McuStage:
    def __init__(self, part: McuPart, config: Callable[[], AgentConfig], sink: Any) -> None:
        self.part = part
        self.config = config
        self.decisions = decisions_for("mcu")
        assert part.source is not None
        self.loop = ClosedLoop(part.source.link, self.decide, outbox=sink)

    def decide(self, window: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        samples = window.get("samples", [])
        classifier = self.part.classifier
        if classifier is not None:
            served = classifier.classify(samples)
            if served is None:
                return None
        else:
            served = Served(None, "rule", False, 0.0, True)
        peak = max((abs(v) for v in samples), default=0)
        inference = Inference("mcu", classifier.task if classifier else "peak", "", served, "",
                              extra={"window": window.get("n"), "peak": peak})
        config = self.config()
        for decide in self.decisions:
            for action in decide(inference, config):
                if isinstance(action, Command):
                    return action.name, action.args
        return None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.loop.run(0.2)

    @property
    def link(self) -> Any:
        assert self.part.source is not None
        return self.part.source.link

    @property
    def sim(self) -> Any:
        return self.part.source.sim if self.part.source is not None else None
