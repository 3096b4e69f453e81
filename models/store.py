"""The model store: registered models from manifests, and models given by path.

The bundled manifest (``models/manifest.toml``) is always read; more come from
``EDGELOOP_MANIFEST`` (a path list) and ``--manifest``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

from edgeloop.runtime.errors import ManifestError, ModelIntegrityError, ModelNotFound

from .manifest import CPU, Artifact, ModelEntry, load_manifest

BUNDLED_MANIFEST = Path(__file__).resolve().parent / "manifest.toml"
EDGETPU_SUFFIX = "_edgetpu"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_artifact(artifact: Artifact, entry: ModelEntry) -> None:
    """Raise ``ModelIntegrityError`` unless the file exists and matches its sha256."""
    if not artifact.file.is_file():
        raise ModelNotFound(f"model '{entry.name}' ({artifact.target}): file {artifact.file} is missing",
                            f"restore it, or fix the entry in {entry.source}")
    if artifact.sha256 is None:
        return
    actual = sha256_of(artifact.file)
    if actual != artifact.sha256:
        raise ModelIntegrityError(
            f"model '{entry.name}' ({artifact.target}): {artifact.file} has sha256 {actual}, "
            f"the manifest {entry.source} says {artifact.sha256}",
            "the file is corrupt or was replaced: restore it, or if the change is intended put the new "
            "sha256 in the manifest (an unverified model can be run with --allow-unverified; it is "
            "checked in a child process first)")


def unregistered_entry(path: Path) -> ModelEntry:
    """An entry for a model file given by path, paired with its sibling variant by name.

    ``foo_edgetpu.tflite`` pairs with ``foo.tflite`` in the same folder, as Coral names them.
    """
    path = path.resolve()
    artifacts: dict[str, Artifact] = {}
    if path.stem.endswith(EDGETPU_SUFFIX):
        artifacts["edgetpu"] = Artifact(path, None, "edgetpu")
        cpu = path.with_name(path.stem[: -len(EDGETPU_SUFFIX)] + path.suffix)
        if cpu.is_file():
            artifacts[CPU] = Artifact(cpu, None, CPU)
    else:
        artifacts[CPU] = Artifact(path, None, CPU)
        tpu = path.with_name(path.stem + EDGETPU_SUFFIX + path.suffix)
        if tpu.is_file():
            artifacts["edgetpu"] = Artifact(tpu, None, "edgetpu")
    return ModelEntry(name=path.stem, version="unregistered", artifacts=artifacts, registered=False)


class ModelStore:
    """All registered models, by name, from one or more manifests.

    A rollout's bundles layer over them: ``install(entry)`` makes a name resolve to an
    installed bundle's entry (the version a device committed to) and ``uninstall(name)`` takes
    that back; ``add_candidate(entry)`` makes a staged bundle's files resolvable by path, as a
    registered (sha256-verified) model, without taking its name."""

    def __init__(self, manifests: Sequence[Path | str] = (), *, bundled: bool = True) -> None:
        paths = ([BUNDLED_MANIFEST] if bundled and BUNDLED_MANIFEST.exists() else [])
        paths += [Path(p) for p in manifests]
        self.manifests = [p.resolve() for p in paths]
        self._entries: dict[str, ModelEntry] = {}
        for manifest in self.manifests:
            for name, entry in load_manifest(manifest).items():
                if name in self._entries:
                    raise ManifestError(
                        f"model '{name}' is registered twice ({self._entries[name].source} and {manifest})",
                        "rename one of them")
                self._entries[name] = entry
        self._installed: dict[str, ModelEntry] = {}
        self._candidates: dict[str, ModelEntry] = {}  # by version

    def install(self, entry: ModelEntry) -> None:
        self._installed = {**self._installed, entry.name: entry}  # one assignment: readers see old or new

    def uninstall(self, name: str) -> None:
        self._installed = {k: v for k, v in self._installed.items() if k != name}

    def installed(self, name: str) -> ModelEntry | None:
        return self._installed.get(name)

    def manifest_entry(self, name: str) -> ModelEntry | None:
        """The entry the manifests register under ``name``, whatever a rollout installed."""
        return self._entries.get(name)

    def add_candidate(self, entry: ModelEntry) -> None:
        self._candidates = {**self._candidates, f"{entry.name}@{entry.version}": entry}

    def drop_candidate(self, entry: ModelEntry) -> None:
        key = f"{entry.name}@{entry.version}"
        self._candidates = {k: v for k, v in self._candidates.items() if k != key}

    @classmethod
    def from_env(cls, extra: Iterable[Path | str] = (), environ: dict[str, str] | None = None) -> "ModelStore":
        env = os.environ if environ is None else environ
        listed = [p for p in env.get("EDGELOOP_MANIFEST", "").split(os.pathsep) if p]
        return cls([*listed, *extra])

    def _names(self) -> dict[str, ModelEntry]:
        return {**self._entries, **self._installed}

    def entries(self) -> list[ModelEntry]:
        return list(self._names().values())

    def get(self, name: str) -> ModelEntry | None:
        return self._installed.get(name) or self._entries.get(name)

    def resolve(self, ref: str | Path) -> ModelEntry:
        """A registered (or installed) name, a registered file's path, or an unregistered file path."""
        names = self._names()
        if isinstance(ref, str) and ref in names:
            return names[ref]
        path = Path(ref)
        if path.is_file():
            real = path.resolve()
            for entry in [*self._installed.values(), *self._entries.values(), *self._candidates.values()]:
                if any(a.file == real for a in entry.artifacts.values()):
                    return entry
            return unregistered_entry(real)
        known = ", ".join(sorted(names)) or "none"
        raise ModelNotFound(f"no model named '{ref}' (registered: {known}) and no such file",
                            "run 'edgeloop models list', or give the path of a .tflite file")
