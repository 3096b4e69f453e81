"""The engine: picks the backend and the model variant, verifies, loads, warms up.

A model that needs a delegate which is missing falls back to the CPU variant
the manifest pairs with it; that is logged once, counted in ``stats()`` and
recorded on the model (``LoadedModel.fallback``). Never silently.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeloop.models.manifest import CPU, Artifact, ModelEntry
from edgeloop.models.store import ModelStore, verify_artifact

from .backends import InterpreterBackend, get_backend
from .delegates import DelegateSpec, load_delegate
from .errors import (ConfigError, DelegateRequired, DelegateUnavailable, EdgeloopError,
                     ManifestError, ModelIntegrityError, ModelLoadError)
from .model import LoadedModel
from .vetting import raise_for_report, vet_model

log = logging.getLogger("edgeloop.engine")


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _env_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: '{value}' is not a boolean", "use 1/0, true/false, yes/no or on/off")


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "auto"
    num_threads: int = field(default_factory=default_threads)
    xnnpack: bool = True
    delegate: DelegateSpec | None = None
    allow_unverified: bool = False
    vet_timeout_s: float = 60.0
    warmup_runs: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.num_threads, int) or self.num_threads < 1:
            raise ConfigError(f"num_threads: {self.num_threads!r} is not a positive integer",
                              "set num_threads to 1 or more (the number of cores is a good start)")
        if self.warmup_runs < 0:
            raise ConfigError(f"warmup_runs: {self.warmup_runs} is negative", "use 0 or more")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "EngineConfig":
        """Defaults, then ``EDGELOOP_*`` variables, then explicit ``overrides`` (e.g. CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "EDGELOOP_BACKEND" in env:
            values["backend"] = env["EDGELOOP_BACKEND"]
        if "EDGELOOP_NUM_THREADS" in env:
            raw = env["EDGELOOP_NUM_THREADS"]
            try:
                values["num_threads"] = int(raw)
            except ValueError:
                raise ConfigError(f"EDGELOOP_NUM_THREADS: '{raw}' is not an integer", "set it to 1 or more") from None
        if "EDGELOOP_XNNPACK" in env:
            values["xnnpack"] = _env_bool("EDGELOOP_XNNPACK", env["EDGELOOP_XNNPACK"])
        if env.get("EDGELOOP_DELEGATE"):
            values["delegate"] = DelegateSpec(env["EDGELOOP_DELEGATE"], device=env.get("EDGELOOP_EDGETPU_DEVICE"),
                                              library=env.get("EDGELOOP_DELEGATE_LIBRARY"))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class FallbackEvent:
    model: str
    wanted: str
    used: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "wanted": self.wanted, "used": self.used, "reason": self.reason}


def _target_named(entry: ModelEntry, ref: str | Path) -> str:
    """The variant ``ref`` points at: the file's own for a path, else CPU when there is one."""
    if not (isinstance(ref, str) and ref == entry.name):
        real = Path(ref).resolve()
        for target, artifact in entry.artifacts.items():
            if artifact.file == real:
                return target
    return CPU if entry.cpu is not None else next(iter(entry.artifacts))


class Engine:
    """Loads models from a store onto one backend. Call ``close()`` when done."""

    def __init__(self, config: EngineConfig | None = None, store: ModelStore | None = None) -> None:
        self.config = config or EngineConfig()
        self.store = store if store is not None else ModelStore.from_env()
        self._backend: InterpreterBackend | None = None
        self._models: list[LoadedModel] = []
        self._fallbacks: list[FallbackEvent] = []
        self._lock = threading.Lock()

    @property
    def backend(self) -> InterpreterBackend:
        if self._backend is None:
            self._backend = get_backend(self.config.backend)
        return self._backend

    # -- choosing the variant ----------------------------------------------------------

    def load(self, ref: str | Path, *, delegate: DelegateSpec | None = None) -> LoadedModel:
        """Load a registered model by name, or a model file by path.

        ``delegate`` (default: the config's) asks for an accelerator; if it cannot
        be had the paired CPU variant runs and the fallback is logged and counted.
        """
        entry = self.store.resolve(ref)
        wanted = delegate or self.config.delegate
        if wanted is None:
            # A path naming a delegate's variant (foo_edgetpu.tflite), or a delegate-only
            # model, asks for that delegate; without it, the fallback below is loud.
            target = _target_named(entry, ref)
            if target != CPU:
                wanted = DelegateSpec(target)
        if wanted is None:
            return self._load_artifact(entry, entry.cpu, None)
        artifact = entry.artifacts.get(wanted.kind) or (entry.cpu if wanted.kind != "edgetpu" else None)
        if artifact is None:
            return self._fall_back(entry, wanted, f"model '{entry.name}' has no {wanted.kind} variant")
        try:
            return self._load_artifact(entry, artifact, wanted)
        except (DelegateUnavailable, DelegateRequired) as exc:
            return self._fall_back(entry, wanted, exc.problem, exc.fix, cause=exc)

    def _fall_back(self, entry: ModelEntry, wanted: DelegateSpec, reason: str, fix: str | None = None,
                   cause: Exception | None = None) -> LoadedModel:
        if entry.cpu is None:
            raise DelegateRequired(
                f"model '{entry.name}' is compiled for the {wanted.kind} delegate and has no CPU variant; {reason}",
                (fix + "; or " if fix else "") + "register a CPU variant (file/sha256 in the manifest, "
                "or foo.tflite next to foo_edgetpu.tflite)") from cause
        event = FallbackEvent(entry.name, wanted.describe(), CPU, reason + (f" ({fix})" if fix else ""))
        with self._lock:
            self._fallbacks.append(event)
        log.warning("fallback: model '%s' wanted %s but runs on the CPU variant %s: %s", entry.name,
                    wanted.describe(), entry.cpu.file.name, event.reason)
        return self._load_artifact(entry, entry.cpu, None, fallback=event.reason)

    # -- verifying and creating --------------------------------------------------------

    def _check_file(self, entry: ModelEntry, artifact: Artifact, delegate: DelegateSpec | None) -> None:
        """sha256 for registered files; the isolated child check for everything else."""
        if entry.registered:
            try:
                verify_artifact(artifact, entry)
                return
            except ModelIntegrityError:
                if not self.config.allow_unverified:
                    raise
                log.warning("model '%s': %s fails sha256 verification; checking it in a child process "
                            "(--allow-unverified)", entry.name, artifact.file.name)
        else:
            verify_artifact(artifact, entry)  # existence only: unregistered files have no hash
        report = vet_model(artifact.file, backend=self.backend.name, num_threads=1,
                           xnnpack=self.config.xnnpack, delegate=delegate,
                           timeout_s=self.config.vet_timeout_s)
        needs = report.get("needs_delegate")
        if needs and (delegate is None or delegate.kind != needs):
            raise DelegateRequired(f"{artifact.file.name} contains {needs} custom ops and needs the {needs} delegate",
                                   f"run it with --delegate {needs}")
        raise_for_report(report)

    def _load_artifact(self, entry: ModelEntry, artifact: Artifact, delegate: DelegateSpec | None,
                       fallback: str | None = None) -> LoadedModel:
        backend = self.backend
        # Load the delegate first: a missing library must not cost a child process.
        # The first interpreter takes this instance; each later thread loads its own.
        preloaded = [load_delegate(backend, delegate)] if delegate is not None else []
        self._check_file(entry, artifact, delegate)
        config = self.config

        def make() -> Any:
            if preloaded:
                delegates = [preloaded.pop()]
            else:
                delegates = [load_delegate(backend, delegate)] if delegate is not None else []
            try:
                return backend.create(str(artifact.file), num_threads=config.num_threads,
                                      xnnpack=config.xnnpack, delegates=delegates)
            except ModelLoadError as exc:
                if delegate is not None:
                    raise DelegateUnavailable(f"the {delegate.kind} delegate could not take the model: "
                                              f"{exc.problem}", exc.fix) from exc
                raise

        first = make()
        model = LoadedModel(entry, artifact, backend.name, make, first,
                            delegate.describe() if delegate else None, fallback)
        try:
            self._check_input_spec(model)
            zeros = [np.zeros(t.shape, t.dtype) for t in model.inputs]
            for _ in range(config.warmup_runs):
                model.run(*zeros)
        except EdgeloopError:
            model.close()
            raise
        with self._lock:
            self._models.append(model)
        return model

    @staticmethod
    def _check_input_spec(model: LoadedModel) -> None:
        """The manifest's input expectations must match the file, else its preprocessing is wrong."""
        spec, actual = model.entry.input, model.inputs[0]
        q = actual.quantization
        problems = []
        if spec.dtype is not None and spec.dtype != actual.dtype.name:
            problems.append(f"dtype {spec.dtype} (the model's is {actual.dtype.name})")
        if spec.scale is not None and (q is None or abs(q.scale - spec.scale) > 1e-6 * max(1.0, spec.scale)):
            problems.append(f"scale {spec.scale} (the model's is {q.scale if q else None})")
        if spec.zero_point is not None and (q is None or q.zero_point != spec.zero_point):
            problems.append(f"zero_point {spec.zero_point} (the model's is {q.zero_point if q else None})")
        if problems:
            raise ManifestError(f"model '{model.name}': the manifest's input says " + ", ".join(problems),
                                f"fix [models.{model.name}.input] in {model.entry.source}")

    # -- bookkeeping -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "backend": self._backend.name if self._backend else None,
                "models": {m.name: {**m.stats.to_dict(), "delegate": m.delegate, "fallback": m.fallback}
                           for m in self._models},
                "fallbacks": len(self._fallbacks),
                "fallback_events": [e.to_dict() for e in self._fallbacks],
            }

    def close(self) -> None:
        with self._lock:
            models, self._models = self._models, []
        for model in models:
            model.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Engine", "EngineConfig", "FallbackEvent"]
