"""The camera's part of the pipeline: source → one conversion → router → ladder → decisions →
sinks.

``CameraPart`` holds what one configuration needs (the models, a ladder per model slot, the
router over them, the source, the drift monitor) and is built whole before it replaces the
running one, so a configuration that cannot be built (a model that does not load, a folder
without images) is refused with the old part still serving. ``serve`` answers one frame (a
camera's or a request's); ``run`` is the camera stage's loop.

The router's task is the camera model's name: ``camera.canary`` answers ``canary_share`` of the
frames, ``camera.shadow`` sees ``shadow_share`` of them off the hot path, and a rollout adds
its candidate's slot beside the running one and switches the route to it (``add_slot``,
``switch``, ``remove_slot``; see ``rollout_deploy.py``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from edgeloop.runtime.drift import DriftMonitor
from edgeloop.runtime.prepared import PreparedFrame
from edgeloop.runtime.router import Request, Route, Router
from edgeloop.runtime.watchdog import CacheRung, DefaultRung, Ladder, LadderConfig, ModelRung

from .config import AgentConfig
from .seams import CameraSource, Frame, Inference, Record
from .sources import open_camera

log = logging.getLogger("edgeloop.agent")

HANG_S = 1.0  # a model call longer than this is a hang: its worker is abandoned


def bundled_samples() -> Path:
    """The demo's camera folder: the digit samples shipped with the models."""
    from edgeloop.models import store

    return Path(store.__file__).resolve().parent / "samples"


def rung_name(model: Any) -> str:
    """The model's first rung is named for where it runs: its delegate, else ``cpu``."""
    return model.delegate.kind if getattr(model, "delegate", None) is not None else "cpu"


def build_ladder(slot: str, model: Any, engine: Any, cam: Any, on_event: Callable[[Record], None]) -> Ladder:
    """A camera slot's ladder: its model, the configured smaller fallback, the cache, a default."""
    # top_k 1: a frame's record and decisions take the best class only.
    rungs = [ModelRung(rung_name(model), model, hang_s=HANG_S, top_k=1)]
    if cam.fallback:
        rungs.append(ModelRung("small", engine.load(cam.fallback), hang_s=HANG_S, degraded=True, top_k=1))
    # A step down is an event for the outbox; it is queued, never written inside the request.
    return Ladder(slot, [*rungs, CacheRung(), DefaultRung(None)], LadderConfig(deadline_s=cam.deadline_ms / 1000.0),
                  on_event=lambda event: on_event(Record("events", {"kind": "ladder", **event})))


class CameraPart:
    def __init__(self, config: AgentConfig, engine: Any, on_event: Callable[[Record], None]) -> None:
        cam = config.camera
        self.task = cam.model
        self.models: dict[str, Any] = {}
        self.ladders: dict[str, Ladder] = {}
        self.source: CameraSource | None = None
        self.drift: DriftMonitor | None = None
        self.router: Router | None = None
        try:
            for slot in (cam.model, cam.canary, cam.shadow):
                if slot:
                    self.ladders[slot] = self._ladder(slot, cam, engine, on_event)
            route = Route(cam.model, canary=(cam.canary, cam.canary_share) if cam.canary else None,
                          shadow=(cam.shadow, cam.shadow_share) if cam.shadow else None)
            self.router = Router(dict(self.ladders), {self.task: route})
            self.primary = self.models[cam.model]
            if self.primary.entry.baseline:
                def drifted(event: dict[str, Any]) -> None:
                    log.warning("drift: %s PSI %.3f over %.2f", event["feature"], event["psi"], event["threshold"])
                    on_event(Record("events", {**event, "model": cam.model}))

                self.drift = DriftMonitor(self.primary.entry.baseline, on_drift=drifted)
            self.source = open_camera(cam.device, cam.folder, bundled_samples())
        except BaseException:
            self.close()
            raise

    def _ladder(self, slot: str, cam: Any, engine: Any, on_event: Callable[[Record], None]) -> Ladder:
        model = self.models[slot] = engine.load(slot)
        return build_ladder(slot, model, engine, cam, on_event)

    @property
    def primary_slot(self) -> str:
        assert self.router is not None
        return self.router.routes()[self.task].primary

    @property
    def ladder(self) -> Ladder:
        """The ladder of the slot the task's route answers from."""
        return self.ladders[self.primary_slot]

    # -- a rollout's slots (blue-green through the router) -----------------------------

    def add_slot(self, name: str, model: Any, ladder: Ladder, routed: Any = None) -> None:
        """A version beside the running ones; nothing goes to it until ``switch``. ``routed``:
        what the router calls instead of the ladder (a probation's tap around it)."""
        assert self.router is not None
        self.models = {**self.models, name: model}
        self.ladders = {**self.ladders, name: ladder}
        self.router.add_slot(name, routed if routed is not None else ladder)

    def switch(self, name: str) -> None:
        """Every frame from now on goes to ``name``, atomically (``Router.switch``)."""
        assert self.router is not None
        self.router.switch(self.task, name)
        self.primary = self.models[name]

    def remove_slot(self, name: str) -> tuple[Any, Ladder]:
        """Take a slot no route names out; its model and ladder are the caller's to close."""
        assert self.router is not None
        self.router.remove_slot(name)
        model, ladder = self.models[name], self.ladders[name]
        self.models = {k: v for k, v in self.models.items() if k != name}
        self.ladders = {k: v for k, v in self.ladders.items() if k != name}
        return model, ladder

    def serve(self, frame: Frame, source: str, n: int = 0, inline: bool = False, **extra: Any) -> Inference:
        """One frame through the router. The frame is converted once, here, into the primary
        model's input tensor; the rungs, the cache key and the drift features reuse that work.
        ``inline``: the models run on this thread (the camera stage; see ``CameraStage``)."""
        # Read before the router: a slot leaves these only after no route names it.
        models, ladders = self.models, self.ladders
        prepared = PreparedFrame(frame.pixels, frame.fmt)
        prepared.tensor_for(self.primary)
        trace = os.urandom(8).hex()
        assert self.router is not None
        slot, served = self.router.serve(Request(self.task, prepared, key=trace, inline=inline))
        if slot not in models:  # added after the snapshot, with its route
            models, ladders = self.models, self.ladders
        primary = served.rung == ladders[slot].rungs[0].name
        return Inference(source, self.task, slot, served, trace, models[slot].entry.version, prepared, frame,
                         primary, {"n": n, **extra})

    def close(self) -> None:
        if self.router is not None:
            self.router.close()
        for ladder in self.ladders.values():
            ladder.close()
        if self.source is not None:
            self.source.close()
        self.ladders, self.source = {}, None


class CameraStage:
    """The camera stage's loop over the current part (``part`` is replaced by the agent).

    The models run on this thread (``Request.inline``): no hand-off to a worker thread per
    frame. A model call that hangs is reported by its rung (the ladder steps down) and leaves
    this thread without heartbeats; the supervisor then starts the stage again on a new thread
    (``STUCK_S``), which serves from the rung below. The frame in the hung call is lost."""

    STUCK_S = 2 * HANG_S

    def __init__(self, part: CameraPart, config: Callable[[], AgentConfig], answered: Callable[[Inference], None]) -> None:
        self.part = part
        self.config = config
        self.answered = answered
        self.frames = 0

    def run(self, stop: Any) -> None:
        next_at = time.monotonic()
        part = self.part
        while not stop.is_set():
            stop.beat()
            assert part.source is not None
            frame = part.source.read()
            if frame is None:  # nothing now (a camera being opened again, a folder of bad files)
                stop.wait(min(self._period(), 0.1))
                next_at = time.monotonic()
                continue
            self.frames += 1
            started = next_at
            self.answered(part.serve(frame, frame.name, self.frames, inline=True))
            # The rate is read again while waiting (it changes live): in slices, beating.
            while not stop.is_set() and (left := started + self._period() - time.monotonic()) > 0:
                stop.wait(min(left, 0.5))
                stop.beat()
            next_at = started + self._period()
            if next_at < time.monotonic() - 1.0:  # far behind (a slow model, a pause): start again
                next_at = time.monotonic()

    def _period(self) -> float:
        return 1.0 / self.config().camera.fps
