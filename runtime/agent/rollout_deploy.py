"""How a rollout reaches the camera's pipeline: a fetched bundle is staged (its model loaded
beside the running one and its golden set run on this device's backend and delegate), switched
to through the router (blue-green, no gap in serving), then committed or rolled back.

The store learns what serves: after a switch the camera model's name resolves to the bundle's
entry (``ModelStore.install``), so a camera rebuilt by a new desired config, or the next start,
loads the version the rollout put in force; a rollback installs the previous one again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeloop.models.manifest import ModelEntry, load_manifest
from edgeloop.models.store import verify_artifact
from edgeloop.runtime.errors import EdgeloopError
from edgeloop.runtime.golden import GoldenReport, GoldenSet, check
from edgeloop.sync.bundle import BundleSpec, GoldenBounds, ProbationSpec

from .camera import CameraPart, build_ladder
from .probation import ProbationTap

log = logging.getLogger("edgeloop.rollout")

RETIRE_AFTER_S = 2.5  # a slot switched away from is closed this much later: requests in it finish first
SHADOW_SHARE = 0.5  # of the frames the old version sees in shadow when the bundle asks for agreement


class StageError(EdgeloopError):
    """A bundle's model cannot be staged on this device; ``code`` for the reported document."""

    def __init__(self, problem: str, fix: str | None, code: str) -> None:
        super().__init__(problem, fix)
        self.code = code


@dataclass
class Staged:
    spec: BundleSpec
    entry: ModelEntry
    model: Any  # LoadedModel
    golden: GoldenReport


@dataclass
class Switched:
    staged: Staged
    part: CameraPart
    slot: str  # the candidate's slot
    old_slot: str | None  # None once the camera was rebuilt on the candidate (``follow``)
    previous: ModelEntry | None  # what the store had installed before (None: the bundled model)
    tap: ProbationTap
    saved_shadow: Any


def bundle_entry(folder: Path, spec: BundleSpec) -> ModelEntry:
    """The bundle's model entry, its files verified against their sha256."""
    try:
        entry = load_manifest(folder / spec.manifest).get(spec.model)
    except EdgeloopError as exc:
        raise StageError(f"rollout: the bundle's manifest cannot be read: {exc.problem}", exc.fix, "manifest") from None
    if entry is None or entry.version != spec.version:
        raise StageError(f"rollout: the bundle's manifest has no {spec.model} {spec.version}",
                         "release the bundle again", "manifest")
    for artifact in entry.artifacts.values():
        try:
            verify_artifact(artifact, entry)
        except EdgeloopError as exc:
            raise StageError(exc.problem, exc.fix, "integrity") from None
    return entry


class CameraDeployer:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    @property
    def store(self) -> Any:
        return self.agent.engine.store

    def install_serving(self, folder: Path | None, spec: BundleSpec | None) -> str | None:
        """At start, before the camera is built: the slot a committed rollout serves from. A slot
        whose files no longer verify is not used: the bundled model serves, said loudly (the
        reason is returned)."""
        if folder is None or spec is None:
            return None
        try:
            self.store.install(bundle_entry(folder, spec))
        except StageError as exc:
            log.error("rollout: the serving slot %s cannot be used (%s); the bundled model serves", folder, exc)
            return f"{exc.code}: {exc.problem}"
        return None

    def stage(self, folder: Path, spec: BundleSpec) -> Staged:
        entry = bundle_entry(folder, spec)
        self.store.add_candidate(entry)
        artifact = entry.cpu or next(iter(entry.artifacts.values()))
        try:
            model = self.agent.engine.load(artifact.file)
        except EdgeloopError as exc:
            self.store.drop_candidate(entry)
            raise StageError(f"rollout: {spec.model} {spec.version} does not load here: {exc.problem}", exc.fix,
                             "load") from None
        try:
            golden = check(model, GoldenSet.load(folder / spec.golden.file), spec.golden.min_top1,
                           spec.golden.max_abs)
        except EdgeloopError as exc:
            self.discard(Staged(spec, entry, model, GoldenReport(False, 0.0, float("inf"), exc.problem)))
            raise StageError(f"rollout: the golden set cannot be run: {exc.problem}", exc.fix, "golden") from None
        return Staged(spec, entry, model, golden)

    def stage_bundled(self, name: str) -> Staged:
        """The image's own model (a rollback to the version the device shipped with): trusted as
        the image is, loaded from the manifest; its probation only asks that it answers."""
        entry = self.store.manifest_entry(name)
        if entry is None:
            raise StageError(f"rollout: no bundled model '{name}'", "check the image's manifest", "load")
        artifact = entry.cpu or next(iter(entry.artifacts.values()))
        try:
            model = self.agent.engine.load(artifact.file)
        except EdgeloopError as exc:
            raise StageError(f"rollout: the bundled {name} does not load: {exc.problem}", exc.fix, "load") from None
        spec = BundleSpec(name, entry.version, "", (), GoldenBounds(""),
                          ProbationSpec(window_s=0.0, min_requests=1, max_error_rate=1.0, max_stepdowns=1_000_000))
        return Staged(spec, entry, model, GoldenReport(True, 1.0, 0.0, None))

    def discard(self, staged: Staged) -> None:
        staged.model.close()
        self.store.drop_candidate(staged.entry)

    def switch(self, staged: Staged) -> Switched:
        """The candidate answers every frame from now on (one route assignment)."""
        agent = self.agent
        with agent._swap:
            part: CameraPart = agent.camera
            if part is None or part.router is None:
                raise StageError("rollout: the camera is not running", "try again once it runs", "camera")
            spec = staged.spec
            slot = f"{spec.model}@{spec.version}"
            ladder = build_ladder(slot, staged.model, agent.engine, agent.config.camera, agent.records.put)
            for rung in ladder.rungs:  # the camera's thread takes ready interpreters at its first frame
                if hasattr(rung, "model"):
                    rung.model.prewarm()
            tap = ProbationTap(ladder)
            part.add_slot(slot, staged.model, ladder, routed=tap)
            old_slot = part.primary_slot
            route = part.router.routes()[part.task]
            shadow = (old_slot, SHADOW_SHARE) if spec.probation.min_agreement > 0 else route.shadow
            previous = self.store.installed(spec.model)
            if staged.entry is self.store.manifest_entry(spec.model):
                self.store.uninstall(spec.model)  # back to the image's own: nothing installed over it
            else:
                self.store.install(staged.entry)  # a camera rebuilt from now on loads the candidate
            part.router.set_route(part.task, replace(route, primary=slot, shadow=shadow))
            part.primary = staged.model
            self.store.drop_candidate(staged.entry)
            log.info("rollout: %s %s serves (was slot %s); probation begins", spec.model, spec.version, old_slot)
            return Switched(staged, part, slot, old_slot, previous, tap, route.shadow)

    def follow(self, switched: Switched, probation: Any) -> None:
        """A desired config rebuilt the camera during the probation: the new part loaded the
        candidate (the store has it installed), so the probation goes on on its ladder, with the
        answers seen so far. The old version is not in the new part: a rollback rebuilds it."""
        part = self.agent.camera
        if part is None or part is switched.part or part.router is None:
            return
        with self.agent._swap:
            slot = part.primary_slot
            tap = ProbationTap(part.ladders[slot])
            tap.answers = switched.tap.answers
            part.router.add_slot(slot, tap)
            # The new part has no old version to go back to through the router (its slot of the
            # model's name is the candidate now): a rollback rebuilds the camera.
            switched.part, switched.slot, switched.tap, switched.old_slot = part, slot, tap, None
            probation.follow(tap, part.models[slot])
        log.info("rollout: the camera was rebuilt during the probation; it goes on on the new part")

    def shadow_figures(self, switched: Switched) -> Any:
        part = switched.part
        return lambda: (part.router.shadow_stats.get(switched.old_slot, {}) if part.router else {})

    def commit(self, switched: Switched) -> None:
        agent = self.agent
        with agent._swap:
            part = agent.camera
            if part is switched.part and part.router is not None and switched.slot in part.ladders:
                route = part.router.routes()[part.task]
                part.router.set_route(part.task, replace(route, shadow=switched.saved_shadow))
                part.router.add_slot(switched.slot, part.ladders[switched.slot])  # the tap is done
                if switched.old_slot in part.ladders:
                    self._retire(part, switched.old_slot)
        log.info("rollout: %s %s committed", switched.staged.spec.model, switched.staged.spec.version)

    def rollback(self, switched: Switched) -> None:
        """The previous version answers again: through the router when the candidate's part still
        runs, else by building the camera again on the previous version."""
        agent = self.agent
        spec = switched.staged.spec
        with agent._swap:
            if switched.previous is None:
                self.store.uninstall(spec.model)
            else:
                self.store.install(switched.previous)
            part = agent.camera
            if part is switched.part and part.router is not None and switched.old_slot in part.ladders:
                route = part.router.routes()[part.task]
                part.router.set_route(part.task, replace(route, primary=switched.old_slot,
                                                         shadow=switched.saved_shadow))
                part.primary = part.models[switched.old_slot]
                self._retire(part, switched.slot)
                rebuilt = False
            else:
                rebuilt = True
        if rebuilt:  # a new desired config built the camera on the candidate meanwhile
            agent.rebuild_camera()
        log.warning("rollout: %s %s rolled back; slot %s serves again", spec.model, spec.version, switched.old_slot)

    @staticmethod
    def _retire(part: CameraPart, slot: str) -> None:
        """Out of the router now; closed once requests already inside it have finished. A slot
        still routed to otherwise (the configured canary or shadow) stays."""
        try:
            model, ladder = part.remove_slot(slot)
        except EdgeloopError:
            return

        def close() -> None:
            ladder.close()
            for m in {id(model): model, **{id(r.model): r.model for r in ladder.rungs if hasattr(r, "model")}}.values():
                m.close()

        timer = threading.Timer(RETIRE_AFTER_S, close)
        timer.daemon = True
        timer.start()
