"""Make a bundle folder from a model's manifest entry: the model file (and delegate variants),
its labels, the entry rewritten for the bundle's flat folder, the golden set computed here on
the release machine, and ``bundle.toml``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from edgeloop.models.manifest import load_manifest
from edgeloop.models.store import ModelStore
from edgeloop.runtime import golden
from edgeloop.runtime.engine import Engine, EngineConfig
from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.bundle import BundleError, BundleSpec, GoldenBounds, ProbationSpec, parse_bundle


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"release: cannot write {value!r} to TOML", "report this")


def _toml_table(name: str, table: dict[str, Any]) -> str:
    """One table and its sub-tables (the manifest's shape: scalars, lists, nested tables)."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = f"[{name}]\n" + "".join(line + "\n" for line in scalars)
    for key, value in table.items():
        if isinstance(value, dict):
            out += "\n" + _toml_table(f"{name}.{key}", value)
    return out


def make_bundle(manifest: Path, model: str, out: Path, probation: ProbationSpec, min_top1: float = 1.0,
                max_abs: float | None = 0.05, check: bool = True) -> BundleSpec:
    """The bundle of ``model`` (as ``manifest`` registers it) in ``out``. ``check``: refuse a
    model that fails its own golden set here (off only to release a deliberately bad one)."""
    entries = load_manifest(manifest)
    entry = entries.get(model)
    if entry is None:
        raise ConfigError(f"release: {manifest} has no model '{model}'", f"it has: {', '.join(entries) or 'none'}")
    if not entry.golden:
        raise ConfigError(f"release: '{model}' in {manifest} has no golden entries",
                          "add [[models.NAME.golden]] inputs with their true top1; a bundle carries its golden set")
    if any(g.top1 is None for g in entry.golden):
        raise ConfigError(f"release: a golden entry of '{model}' has no top1", "give each golden input its true top1")
    out.mkdir(parents=True, exist_ok=True)
    raw = tomllib.loads(manifest.read_text())["models"][model]
    files: list[str] = []

    def take(path: Path) -> str:
        if path.name in files:
            raise ConfigError(f"release: two files of the bundle are named {path.name}", "rename one")
        shutil.copyfile(path, out / path.name)
        files.append(path.name)
        return path.name

    table = {k: v for k, v in raw.items() if k not in ("golden", "card", "baseline")}
    if entry.cpu is not None:
        table["file"] = take(entry.cpu.file)
    for target, artifact in entry.artifacts.items():
        if target != "cpu":
            table.setdefault("variants", {})[target] = {**raw["variants"][target], "file": take(artifact.file)}
    if entry.output.labels is not None:
        table["output"] = {**raw["output"], "labels": take(entry.output.labels)}
    (out / "manifest.toml").write_text("# The manifest entry of this bundle's model.\nschema = 1\n\n"
                                       + _toml_table(f"models.{model}", table))
    files.append("manifest.toml")
    with Engine(EngineConfig(num_threads=1), ModelStore([manifest], bundled=False)) as engine:
        loaded = engine.load(model)
        inputs = np.stack([loaded.prepare(g.input) for g in entry.golden])
        expected = np.stack([golden.scores(loaded, t) for t in inputs])
        labels = np.asarray([g.top1 for g in entry.golden], np.int64)
        gset = golden.GoldenSet(inputs, labels, expected)
        report = golden.check(loaded, gset, min_top1, max_abs)
    if check and not report.passed:
        raise ConfigError(f"release: '{model}' fails its own golden set here: {report.reason}",
                          "fix the model, or release it with --no-golden-check (a test of the device's probation)")
    gset.save(out / "golden.npz")
    files.append("golden.npz")
    spec = BundleSpec(model, entry.version, "manifest.toml", tuple(files), GoldenBounds("golden.npz", min_top1, max_abs),
                      probation)
    text = spec.to_toml().encode()
    try:  # the devices' own check, here: nothing is signed that every device would refuse
        parse_bundle(text)
    except BundleError as exc:
        raise ConfigError(f"release: {exc.problem}", "fix the flag or the manifest entry it comes from") from None
    (out / "bundle.toml").write_bytes(text)
    return spec


def reversioned(manifest: Path, model: str, version: str, out: Path) -> Path:
    """A manifest at ``out`` registering ``model`` of ``manifest`` under another ``version``,
    its paths made absolute: the same files released again (a benchmark's, or a re-release)."""
    raw = tomllib.loads(manifest.read_text())["models"][model]
    here = manifest.resolve().parent

    def absolute(path: str) -> str:
        return str((here / path).resolve())

    table = {k: v for k, v in raw.items() if k not in ("golden", "card", "baseline")}
    table["version"] = version
    table["file"] = absolute(raw["file"])
    for target, variant in raw.get("variants", {}).items():
        table.setdefault("variants", {})[target] = {**variant, "file": absolute(variant["file"])}
    if "labels" in raw.get("output", {}):
        table["output"] = {**raw["output"], "labels": absolute(raw["output"]["labels"])}
    golden_text = "".join(f"\n[[models.{model}.golden]]\ninput = {_toml_value(absolute(g['input']))}\n"
                          f"top1 = {_toml_value(g['top1'])}\n" for g in raw.get("golden", []))
    out.write_text("schema = 1\n\n" + _toml_table(f"models.{model}", table) + golden_text)
    return out
