"""The device's side of a fleet rollout: the group's retained rollout document in, a retained
reported document out, and the persisted state machine between them.

    edgeloop/v1/{fleet}/group/{group}/rollout      desired (sync/rollout_doc.py)
    edgeloop/v1/{fleet}/{device}/state/rollout     reported: active, standby, pending, state,
                                                    reason, attempts, bytes, progress, probation,
                                                    TUF targets version, bundle sha256, since

One step at a time on the ``rollout`` stage's thread: is this device in the cohort and does it
want another version; refresh TUF (metadata refused, the repository unreachable or the clock
not yet sane: wait and try again, serving goes on); the bundle's files into the standby slot
(``slots/a`` or ``slots/b``), resumably; its model loaded beside the running one and its golden
set run here; the switch through the router; the probation; commit, or roll back with a reason
code and mark the bundle bad. A failed download (404, a budget spent, a wrong hash) is not tried
again for the same rollout and bundle. Every transition is durable before the next step
(``sync/rollout_state.py``): after a kill -9 a download resumes and a candidate that was
serving is rolled back before the camera starts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import apsw

from edgeloop.runtime.errors import EdgeloopError
from edgeloop.runtime.logs import Throttled
from edgeloop.sync.bundle import BundleSpec, parse_bundle
from edgeloop.sync.bundle_trust import CLOCK_FLOOR, BundleTrust, TrustError
from edgeloop.sync.fetch import Fetcher, FetchCancelled, FetchError, FetchPolicy, Progress
from edgeloop.sync.rollout_doc import RolloutDoc, cohort_point, in_cohort, parse_rollout
from edgeloop.sync.rollout_state import RolloutState, RolloutStore
from edgeloop.sync.topics import topic

from .probation import Probation, Verdict
from .rollout_deploy import CameraDeployer, StageError, Staged, Switched

log = logging.getLogger("edgeloop.rollout")

CLOCK_NOTE_S = 3600.0  # the clock's high-water mark is written when it moved this far
JUDGE_EVERY_S = 0.25


@dataclass(frozen=True)
class RolloutSettings:
    device: str
    fleet: str
    group: str
    model: str  # the camera's model: the one rollouts replace
    folder: Path  # {data_dir}/rollout: state.db, tuf/, slots/a, slots/b
    repo_url: str
    root: Path  # the fleet's root.json, shipped in the device image
    retry_s: float = 60.0  # metadata refused or unreachable: asked again this much later
    report_every_s: float = 2.0  # progress while downloading
    heartbeat_s: float = 60.0  # the reported document again at rest: a fleet view tells a silent device
    policy: FetchPolicy = field(default_factory=FetchPolicy)


def desired_topic(fleet: str, group: str) -> str:
    return topic(fleet, "group", f"{group}/rollout")


def reported_topic(fleet: str, device: str) -> str:
    return topic(fleet, device, "state/rollout")


class RolloutDriver:
    def __init__(self, settings: RolloutSettings, deployer: CameraDeployer,
                 publish: Callable[[str, bytes], None], clock: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.deployer = deployer
        self.publish = publish
        self.clock = clock
        base = deployer.store.get(settings.model)
        self.initial_version = base.version if base is not None else None
        self.store = RolloutStore(settings.folder / "state.db", self.initial_version)
        self.trust = BundleTrust(settings.folder / "tuf", settings.repo_url, settings.root, clock,
                                 max(CLOCK_FLOOR, self.store.state.clock_floor))
        self.fetcher = Fetcher(settings.policy)
        self.doc: RolloutDoc | None = None
        self.doc_received = False  # nothing is decided before the retained document has come
        self.doc_error: str | None = None
        self.note = ""  # why nothing happens (not in the cohort, waiting for the clock, ...)
        self.progress: Progress | None = None
        self.targets_version = 0
        self.probation: Probation | None = None
        self.last_verdict: Verdict | None = None
        self.recovered: RolloutState | None = None
        self._staged: Staged | None = None
        self._switched: Switched | None = None
        self._retry_at = 0.0
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._warn = Throttled(log)
        self._last_report = b""

    # -- start -------------------------------------------------------------------------

    def open(self) -> None:
        """Before the camera is built: a candidate that was serving when the process died is
        rolled back, and the store is told which slot's version serves."""
        before = self.store.state
        state = self.store.recover()
        if state is not before and state.state != before.state:
            self.recovered = before
            log.warning("rollout: the process died during %s of %s %s; %s, %s serves", before.state,
                        self.s.model, before.target, state.state, state.serving_version)
        self._install_serving()

    def _slot(self, name: str) -> Path:
        return self.s.folder / "slots" / name

    def _spec_in(self, folder: Path) -> BundleSpec | None:
        try:
            return parse_bundle((folder / "bundle.toml").read_bytes())
        except (OSError, EdgeloopError):
            return None

    def _install_serving(self) -> None:
        s = self.store.state
        if s.serving_version in (None, self.initial_version):
            self.deployer.store.uninstall(self.s.model)
            return
        folder = self._slot(s.serving)
        spec = self._spec_in(folder)
        problem = "its bundle is missing" if spec is None or spec.version != s.serving_version else \
            self.deployer.install_serving(folder, spec)
        if problem:  # never silently: the bundled model serves, and the state says so
            log.error("rollout: slot %s should serve %s %s but %s; the bundled %s serves", s.serving, self.s.model,
                      s.serving_version, problem, self.initial_version)
            self.store.note(serving_version=self.initial_version, reason=f"slot {s.serving}: {problem}")

    # -- the desired document (from the MQTT thread) -------------------------------------

    kind = "rollout"  # the desired documents this handler takes (their signatures say so)

    def offer(self, payload: bytes) -> None:
        """A retained rollout document arrived (an empty one: the rollout was withdrawn)."""
        try:
            doc = parse_rollout(payload) if payload else None
        except EdgeloopError as exc:
            self.refuse(str(exc))
            return
        with self._lock:
            self.doc, self.doc_error = doc, None
            self.doc_received = True
            self._retry_at = 0.0
        s = self.store.state
        if s.state == "downloading" and self.wanted(doc) != s.target:
            self.fetcher.cancel()  # the download in progress is no longer wanted
        self._wake.set()

    def refuse(self, reason: str) -> None:
        """A document refused (malformed, unsigned, a replay): the last good one stays."""
        self.doc_error = reason
        self._warn.warning("rollout: document refused, the last good one stays: %s", reason)
        self._report(force=True)

    def wanted(self, doc: RolloutDoc | None) -> str | None:
        """The version this device should serve under ``doc`` (None: nothing to do); sets ``note``."""
        s = self.store.state
        if doc is None:
            self.note = "no rollout document"
            return None
        if doc.model != self.s.model:
            self.note = f"the rollout is for {doc.model}, this device's camera runs {self.s.model}"
            return None
        if not in_cohort(self.s.device, doc):
            self.note = f"not in the cohort ({cohort_point(self.s.device, doc.salt) / 100:.2f} >= {doc.pct:g} %)"
            return None
        if doc.cancelled:
            self.note = "cancelled"
            # A device that committed the cancelled version goes back to the previous one (and
            # keeps wanting it while it goes: its probation there must not undo the way back).
            going_back = s.rollout == doc.id and s.target == doc.previous
            return doc.previous if doc.previous and (s.serving_version == doc.version or going_back) else None
        self.note = ""
        return doc.version

    # -- the stage -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        reporter = threading.Thread(target=self._report_loop, args=(stop,), name="rollout-report", daemon=True)
        reporter.start()
        self._report(force=True)
        try:
            while not stop.is_set():
                try:
                    self.step()
                except (OSError, apsw.Error) as exc:  # a full or failing data disk: waited out, said
                    if self._switched is not None and self.store.state.state == "switching":
                        self.deployer.rollback(self._switched)  # what serves follows what is on disk
                        self._switched = self.probation = None
                    self._wait(f"disk: {type(exc).__name__}: {exc}", self.s.retry_s)
                waited, wait_s = 0.0, JUDGE_EVERY_S if self.probation is not None else 1.0
                while waited < wait_s and not stop.is_set() and not self._wake.wait(0.05):
                    waited += 0.05  # in slices: a stop is seen at once too
                self._wake.clear()
        finally:
            self.fetcher.cancel()
            reporter.join(5)

    def step(self) -> None:
        if not self.doc_received:  # after a start, a download under way waits for its document
            return
        s = self.store.state
        if s.state in ("switching", "rolling_back") or (s.state == "probation" and self._switched is None):
            s = self.store.recover()  # a step cut short (the disk): settled as after a restart
        doc = self.doc
        want = self.wanted(doc)
        if s.state == "probation" and self._switched is not None:
            if want != s.target:
                self._roll_back("cancelled" if doc is not None and doc.cancelled else "superseded",
                                f"the rollout document no longer asks for {s.target}", bad=False)
            else:
                self._judge()
            return
        if s.state in ("downloading", "verified", "staged") and want != s.target:
            self._drop_staged()
            self.store.move("idle", reason="cancelled" if doc is not None and doc.cancelled else "superseded")
            self._report(force=True)
            return
        if want is None or want == s.serving_version:
            self._report()
            return
        if doc is not None and doc.deadline is not None and self.clock() > doc.deadline:
            if s.busy:
                self._drop_staged()
                self.store.move("failed", reason="deadline: the rollout's deadline passed before it was done")
            self.note = "the rollout's deadline has passed"
            self._report(force=True)
            return
        assert doc is not None
        if doc.paused and not doc.cancelled and s.state not in ("downloading", "verified"):  # a cancel goes back even so
            self.note = "paused" + (": staged, waiting to switch" if s.state == "staged" else "")
            self._report()
            return
        if time.monotonic() < self._retry_at:
            return
        self._advance(doc, want)

    def _advance(self, doc: RolloutDoc, version: str) -> None:
        if version == self.initial_version:
            self._to_bundled(doc, version)
            return
        prefix = f"{self.s.group}/{self.s.model}/{version}"
        try:
            self.trust.refresh()
            head = self.trust.target(f"{prefix}/bundle.toml")
            self.targets_version = self.trust.targets_version(self.s.group)
        except TrustError as exc:  # metadata: the operator can mend it without a new document
            self._wait(f"{exc.kind}: {exc.problem}", 10.0 if exc.kind == "clock" else self.s.retry_s)
            return
        self._note_clock()
        sha = head.hashes.get("sha256", "")
        s = self.store.state
        bad = self.store.is_bad(version, sha)
        if bad or (s.state in ("failed", "rolled_back") and (s.rollout, s.target, s.target_sha256) == (doc.id, version, sha)):
            # Given up on for this bundle (or this rollout): not fetched in a loop; the metadata is
            # asked again now and then, for a bundle released again with other files.
            self.note = f"{version} is marked bad on this device ({bad})" if bad else f"{s.state} for this rollout"
            self._retry_at = time.monotonic() + self.s.retry_s
            self._report()
            return
        if s.state == "staged" and self._staged is not None and s.target_sha256 == sha:
            self._switch(doc)
            return
        standby = s.standby
        changes: dict[str, Any] = {"target_sha256": sha, "reason": None}
        if s.rollout != doc.id or s.target != version:
            changes.update(rollout=doc.id, target=version, attempts=0, bytes=0)
        if s.standby_version != version:
            changes["standby_version"] = None  # the download overwrites what the slot held
        s = self.store.move("downloading", **changes)
        s = self.store.note(attempts=s.attempts + 1)
        self._report(force=True)
        progress = self.progress = Progress(0)
        try:
            bundle = self.trust.fetch_bundle(self.s.group, self.s.model, version, self._slot(standby), self.fetcher,
                                             progress)
        except FetchCancelled:
            self.fetcher = Fetcher(self.s.policy)  # a cancelled fetcher stays cancelled
            return  # the next step sees what the document now asks
        except TrustError as exc:
            self._fail(f"{exc.kind}: {exc.problem}", bad=exc.kind == "wrong hash")
            return
        except FetchError as exc:
            self._fail(f"fetch {exc.reason}: {exc.problem}", bad=False)
            return
        except OSError as exc:  # the data disk full (or read-only): the part stays, tried again later
            self._wait(f"disk: {exc.strerror or exc}", self.s.retry_s)
            return
        finally:
            self.progress = None
            self.store.note(bytes=s.bytes + progress.fetched)
        s = self.store.move("verified", standby_version=version, target_sha256=bundle.sha256)
        self._report(force=True)
        try:
            staged = self.deployer.stage(bundle.folder, bundle.spec)
        except StageError as exc:
            self._reject(f"{exc.code}: {exc.problem}")
            return
        if not staged.golden.passed:
            self.deployer.discard(staged)
            self._reject(f"golden: {staged.golden.reason}")
            return
        self._staged = staged
        self.store.move("staged")
        self._report(force=True)
        self._switch(doc)

    def _to_bundled(self, doc: RolloutDoc, version: str) -> None:
        """Back to the version the image shipped with: nothing to fetch, it is trusted as the
        image is; staged from the manifest and switched to like any other."""
        s = self.store.state
        entry = self.deployer.store.manifest_entry(self.s.model)
        sha = (entry.cpu.sha256 if entry is not None and entry.cpu is not None else None) or "bundled"
        if s.state in ("failed", "rolled_back") and (s.rollout, s.target) == (doc.id, version):
            self.note = f"{s.state} for this rollout"
            self._report()
            return
        if s.state == "staged" and self._staged is not None and s.target == version:
            self._switch(doc)  # staged while paused
            return
        self._drop_staged()
        self.store.move("downloading", rollout=doc.id, target=version, target_sha256=sha, attempts=1, bytes=0,
                        reason=None)
        self.store.move("verified")
        try:
            staged = self.deployer.stage_bundled(self.s.model)
        except StageError as exc:
            self._fail(f"{exc.code}: {exc.problem}", bad=False)
            return
        self._staged = staged
        self.store.move("staged")
        self._report(force=True)
        self._switch(doc)

    def _switch(self, doc: RolloutDoc) -> None:
        if doc.paused and not doc.cancelled:
            self.note = "paused: staged, waiting to switch"
            self._report(force=True)
            return
        staged, self._staged = self._staged, None
        assert staged is not None
        s = self.store.move("switching")
        try:
            switched = self.deployer.switch(staged)
        except StageError as exc:
            self.deployer.discard(staged)
            self.store.move("rolling_back", reason=f"{exc.code}: {exc.problem}")
            self.store.move("rolled_back")
            self._report(force=True)
            return
        self._switched = switched
        self.store.move("probation", serving=s.standby, serving_version=s.target, standby_version=s.serving_version)
        self.probation = Probation(staged.spec.probation, switched.tap, staged.model,
                                   self.deployer.shadow_figures(switched) if staged.spec.probation.min_agreement > 0
                                   else None)
        self._report(force=True)

    def _judge(self) -> None:
        assert self.probation is not None and self._switched is not None
        self.deployer.follow(self._switched, self.probation)
        verdict = self.probation.judge()
        if verdict is None:
            return
        self.last_verdict = verdict
        if verdict.passed:
            self.deployer.commit(self._switched)
            self._switched, self.probation = None, None
            self.store.move("committed", reason=None)
            log.info("rollout: %s %s committed: %s", self.s.model, self.store.state.serving_version, verdict.text)
            self._report(force=True)
        else:
            self._roll_back(verdict.code, verdict.text, bad=True)

    def _roll_back(self, code: str, text: str, bad: bool) -> None:
        switched = self._switched
        s = self.store.move("rolling_back", reason=f"{code}: {text}")
        if bad and s.target and s.target_sha256:
            self.store.mark_bad(s.target, s.target_sha256, f"{code}: {text}")
        if switched is not None:
            self.deployer.rollback(switched)
        self._switched, self.probation = None, None
        self.store.move("rolled_back", serving=s.standby, serving_version=s.standby_version,
                        standby_version=s.serving_version)
        log.warning("rollout: %s %s rolled back (%s: %s)", self.s.model, s.target, code, text)
        self._report(force=True)

    def _reject(self, reason: str) -> None:
        """A verified bundle that cannot serve here: marked bad, the running version stays."""
        s = self.store.state
        if s.target and s.target_sha256:
            self.store.mark_bad(s.target, s.target_sha256, reason)
        self.store.move("rolling_back", reason=reason)
        self.store.move("rolled_back")
        log.warning("rollout: %s %s rejected before switching: %s", self.s.model, s.target, reason)
        self._report(force=True)

    def _fail(self, reason: str, bad: bool) -> None:
        s = self.store.state
        if bad and s.target and s.target_sha256:
            self.store.mark_bad(s.target, s.target_sha256, reason)
        self.store.move("failed", reason=reason)
        log.warning("rollout: %s %s failed: %s", self.s.model, s.target, reason)
        self._report(force=True)

    def _wait(self, reason: str, retry_s: float) -> None:
        self.note = f"waiting: {reason}"
        self._retry_at = time.monotonic() + retry_s
        self._warn.warning("rollout: %s (asked again in %.0f s; serving goes on)", reason, retry_s)
        self._report(force=True)

    def _drop_staged(self) -> None:
        if self._staged is not None:
            self.deployer.discard(self._staged)
            self._staged = None

    def _note_clock(self) -> None:
        if self.trust.clock_floor > self.store.state.clock_floor + CLOCK_NOTE_S:
            self.store.note(clock_floor=self.trust.clock_floor)

    # -- reporting ----------------------------------------------------------------------

    def reported(self) -> dict[str, Any]:
        s = self.store.state
        doc = self.doc
        out: dict[str, Any] = {
            "device": self.s.device, "group": self.s.group, "model": self.s.model, "rollout": doc.id if doc else None,
            "active": s.serving_version, "standby": s.standby_version, "slot": s.serving,
            "pending": s.target if s.busy else None, "state": s.state, "target": s.target, "reason": s.reason,
            "note": self.note or None, "attempts": s.attempts, "bytes": s.bytes, "since": s.since,
            "bundle_sha256": s.target_sha256, "targets_version": self.targets_version,
            "bad": self.store.bad_versions(), "document_error": self.doc_error, "at": self.clock(),
        }
        progress, probation = self.progress, self.probation
        if progress is not None:
            out["progress"] = progress.as_dict()
        if probation is not None:
            out["probation"] = probation.figures()
        if self.last_verdict is not None:
            out["verdict"] = {"passed": self.last_verdict.passed, "code": self.last_verdict.code,
                              "text": self.last_verdict.text}
        return out

    def _report(self, force: bool = False) -> None:
        body = self.reported()
        key = json.dumps({k: v for k, v in body.items() if k not in ("at", "since")}, sort_keys=True,
                         default=str).encode()
        if not force and key == self._last_report:
            return
        self._last_report = key
        try:
            self.publish(reported_topic(self.s.fleet, self.s.device), json.dumps(body, default=str).encode())
        except Exception as exc:  # the broker away: the next report says it all again
            self._warn.warning("rollout: the reported document was not published: %s", exc)

    def _report_loop(self, stop: threading.Event) -> None:
        last = time.monotonic()
        while not stop.wait(self.s.report_every_s):
            if self.progress is not None or self.probation is not None or time.monotonic() - last >= self.s.heartbeat_s:
                self._report(force=True)
                last = time.monotonic()

    def close(self) -> None:
        self.fetcher.cancel()
        self.store.close()
